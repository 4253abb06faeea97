"""First-party ops at the edges of floating point: NaN and infinity in, huge and tiny finite
values, results beyond the float range, 0-d inputs, and constructor arguments.

The rule under test: right numbers, or tapegrad's own error naming the op; NaN never becomes a
plausible finite value; no numpy RuntimeWarning (the suite turns them into errors)."""

import math

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.testing import check_operation, collect_cases

FIRST_PARTY = ["math", "activations", "layers", "losses"]


def apply(name, *inputs, args=(), target=None, grad=None, graph=None, **kwargs):
    """Forward (and loss), then backward; returns (op, output, input Variables)."""
    g = graph or tg.Graph(seed=0)
    op = g.get_operation(name, list(args), **kwargs)
    variables = [tg.Variable(x) if x.dtype.kind == "f" else x for x in map(np.asarray, inputs)]
    out = op(*variables)
    if op.is_loss:
        out = op.loss(target)
        g.backward()
    else:
        outs = out if isinstance(out, tuple) else (out,)
        g.backward(grads={o: np.ones_like(o.value) if grad is None else grad for o in outs})
    return op, out, variables


# Every first-party op with inputs of a fitting shape (and a target for the losses).
CASES = {
    "Add": dict(n=2),
    "Subtract": dict(n=2),
    "Multiply": dict(n=2),
    "Divide": dict(n=2),
    "Matmul": dict(n=2, transpose_second=True),
    "Sum": dict(),
    "Mean": dict(),
    "Reshape": dict(args=[(4, 1)]),
    "Transpose": dict(),
    "Concat": dict(n=2),
    "Index": dict(args=[(0, slice(None))]),
    "Stack": dict(n=2),
    "Unstack": dict(),
    "Exp": dict(),
    "Log": dict(),
    "Sigmoid": dict(),
    "Tanh": dict(),
    "Relu": dict(),
    "LeakyRelu": dict(),
    "Softmax": dict(),
    "LogSoftmax": dict(),
    "Affine": dict(args=[4, 3]),
    "Dropout": dict(args=[0.5]),
    "LayerNorm": dict(args=[4]),
    "SoftmaxLoss": dict(target=np.array([1])),
    "SquareLoss": dict(target=np.zeros((1, 4))),
    "SigmoidCrossEntropyLoss": dict(target=np.array([[0.0, 1.0, 0.5, 1.0]])),
}


def outputs(out):
    return out if isinstance(out, tuple) else (out,)


def run_case(name, row):
    spec = CASES[name]
    x = np.array([row], dtype=float)
    inputs = [x] * spec.get("n", 1)
    if spec.get("transpose_second"):
        inputs = [x, x.T]
    return apply(name, *inputs, args=spec.get("args", ()), target=spec.get("target"))


def test_cases_cover_every_first_party_op():
    names = {r.name for r in tg.default_registry().operations() if r.plugin in FIRST_PARTY}
    assert names - {"Embedding"} == set(CASES)


# -- huge and tiny finite inputs --------------------------------------------------------------
@pytest.mark.parametrize(
    "row",
    [
        [1e308, -1e308, 0.0, 1.0], [1.7e308, 1.7e308, -1.7e308, 1.7e308], [1e200, -1e200, 3.0, 1.0],
        [1e-310, -1e-310, 1e-320, 2.0],
    ],
    ids=["1e308", "1.7e308", "1e200", "1e-310"],
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_finite_inputs_give_finite_results_or_an_error_naming_the_op(name, row):
    try:
        op, out, variables = run_case(name, row)
    except (tg.OperationError, tg.BackwardError) as exc:
        assert str(exc).startswith(name), str(exc)
        assert "NaN" not in str(exc)  # a finite input is never blamed for NaN
        return
    values = [out] if isinstance(out, float) else [o.value for o in outputs(out)]
    values += [v.grad for v in variables] + [p.grad for p in op.parameters().values()]
    assert all(np.isfinite(v).all() for v in values)


def test_layernorm_scales_rows_too_large_to_square():
    x = np.array([[1e160, -1e160, 0.0, 1.0], [3e307, -1e308, 1e308, 0.0], [1e308] * 4, [1e-310, -1e-310, 0.0, 2e-310]])
    op, out, (v,) = apply("LayerNorm", x, args=[4])
    scaled = x[:3] / np.abs(x[:3]).max(axis=1, keepdims=True)  # LayerNorm is scale invariant (eps aside)
    with np.errstate(invalid="ignore"):
        expected = (scaled - scaled.mean(1, keepdims=True)) / np.sqrt(scaled.var(1, keepdims=True))
    assert np.allclose(out.value[:2], expected[:2], rtol=1e-12)
    assert np.array_equal(out.value[2], np.zeros(4))  # a constant row normalises to 0
    tiny = x[3] - x[3].mean()
    assert np.allclose(out.value[3], tiny / np.sqrt(1e-5), rtol=1e-6, atol=0)
    assert np.isfinite(v.grad).all() and np.isfinite(op.gamma.grad).all()
    # the constant row's gradient is 1/sqrt(eps) times the centred upstream gradient
    _, _, (w,) = apply("LayerNorm", x[2:3], args=[4], grad=np.array([[0.0, 1.0, 2.0, 3.0]]))
    assert np.allclose(w.grad, (np.arange(4.0) - 1.5) / np.sqrt(1e-5))


def test_layernorm_gradients_match_central_differences_on_huge_rows():
    g = tg.Graph()
    op = g.get_operation("LayerNorm", [4])
    report = tg.gradcheck(op, [np.array([[1e160, -1e160, 0.0, 1.0], [3e307, -1e308, 1e308, 0.0]])])
    assert report, str(report)


def test_layernorm_keeps_a_nan_row_nan_next_to_a_huge_row():
    _, out, _ = apply("LayerNorm", np.array([[np.nan, 1.0, 2.0, 3.0], [1e200, 0.0, 0.0, 0.0]]), args=[4])
    assert np.isnan(out.value[0]).all()
    assert np.allclose(out.value[1], [math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)])


def test_sigmoid_cross_entropy_with_1e308_logits_is_its_finite_value():
    logits = np.array([[1e308, 1e308, -1e308, 1.7e308]])
    target = np.array([[0.0, 0.5, 1.0, 0.0]])
    _, value, (x,) = apply("SigmoidCrossEntropyLoss", logits, target=target)
    assert value == pytest.approx(1e308 / 4 + 0.5e308 / 4 + 1e308 / 4 + 1.7e308 / 4, rel=1e-12)
    assert np.allclose(x.grad, [[0.25, 0.125, -0.25, 0.25]])


def test_mean_of_values_whose_sum_overflows():
    x = np.array([[1e308, 1.5e308], [1e-300, 3e-300]])
    assert np.allclose(apply("Mean", x, axis=1)[1].value, [1.25e308, 2e-300], rtol=1e-15)
    assert apply("Mean", x)[1].value == pytest.approx(6.25e307, rel=1e-15)
    assert apply("Mean", x, axis=1, keepdims=True)[1].shape == (2, 1)


def test_losses_average_before_summing():
    # each row's loss fits the float range; their sum does not
    _, value, _ = apply("SoftmaxLoss", np.array([[1e308, 0.0], [1e308, 0.0]]), target=np.array([1, 1]))
    assert value == pytest.approx(1e308, rel=1e-15)
    _, value, _ = apply("SquareLoss", np.full((100, 1), 1.5e154), target=np.zeros((100, 1)))
    assert value == pytest.approx(1.125e308, rel=1e-14)  # 0.5 * (1.5e154)^2, its squares summed past the range


def test_softmax_of_logits_further_apart_than_the_float_range():
    _, out, (x,) = apply("Softmax", np.array([[1e308, -1e308, 0.0]]))
    assert np.array_equal(out.value, [[1.0, 0.0, 0.0]])
    _, probs, _ = apply("SoftmaxLoss", np.array([[1e308, -1e308, 0.0]]), target=np.array([0]))
    assert probs == 0.0


@pytest.mark.parametrize(
    "name, inputs, kwargs",
    [
        ("Add", [np.array([1e308]), np.array([1e308])], {}),
        ("Subtract", [np.array([1e308]), np.array([-1e308])], {}),
        ("Multiply", [np.array([1e200]), np.array([1e200])], {}),
        ("Divide", [np.array([1e308]), np.array([1e-10])], {}),
        ("Matmul", [np.full((1, 2), 1e308), np.ones((2, 1))], {}),
        ("Sum", [np.array([1e308, 1e308])], {}),
        ("Dropout", [np.array([1e308])], {"p": 0.5}),
        ("LogSoftmax", [np.array([[1e308, -1e308]])], {}),
        ("Exp", [np.array([710.0])], {}),
    ],
)
def test_a_result_beyond_the_float_range_raises_naming_the_op(name, inputs, kwargs):
    g = tg.Graph(seed=1)
    op = g.get_operation(name, **kwargs)
    with pytest.raises(
        tg.NonFiniteError, match=rf"^{op.label.replace('(', '.').replace(')', '.')}:.*(range|overflows)"
    ):
        op(*[tg.Variable(x) for x in inputs])


def test_affine_output_beyond_the_float_range_raises():
    g = tg.Graph()
    aff = g.get_operation("Affine", [2, 1], bias=False)
    aff.W.value[:] = 1.0
    with pytest.raises(tg.NonFiniteError, match=r"Affine \(affine_0\): forward went beyond the float range"):
        aff(tg.Variable(np.array([[1e308, 1e308]])))


@pytest.mark.parametrize(
    "name, inputs",
    [
        ("Divide", [np.array([1e-310]), np.array([1e-310])]),  # d(a/b)/da = 1/b = 1e310
        ("Log", [np.array([1e-310])]),  # d log(x)/dx = 1e310
        ("Multiply", [np.array([1e-300]), np.array([1e300])]),  # fine forward, grad 1e300 * 1e10 beyond
    ],
)
def test_a_gradient_beyond_the_float_range_raises_backward_error(name, inputs):
    g = tg.Graph()
    op = g.get_operation(name)
    out = op(*[tg.Variable(x) for x in inputs])
    assert np.isfinite(out.value).all()
    with pytest.raises(tg.BackwardError, match=rf"^{name} \({op.name}\): backward went beyond the float range"):
        g.backward(grads={out: np.full(out.shape, 1e10)})


def test_loss_beyond_the_float_range_is_not_blamed_on_nan():
    for name, x, target in [
        ("SquareLoss", np.array([[1e200]]), np.array([[-1e200]])),
        ("SoftmaxLoss", np.array([[1e308, -1e308]]), np.array([1])),
    ]:
        g = tg.Graph()
        op = g.get_operation(name)
        op(tg.Variable(x))
        with pytest.raises(
            tg.NonFiniteError, match=rf"{name} .*: the loss exceeds the float64 range .*every input is finite"
        ):
            op.loss(target)


# -- NaN and infinity in ----------------------------------------------------------------------
ELEMENTWISE = ["Exp", "Log", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Sum", "Mean", "Transpose", "Reshape"]


@pytest.mark.parametrize("name", sorted(set(CASES) - {"SoftmaxLoss", "SquareLoss", "SigmoidCrossEntropyLoss"}))
def test_nan_in_gives_nan_out_never_a_finite_value(name):
    row = [np.nan, 1.0, 2.0, 0.5]
    op, out, variables = run_case(name, row)
    value = np.concatenate([o.value.ravel() for o in outputs(out)])
    if name in ("Softmax", "LogSoftmax", "LayerNorm", "Sum", "Mean", "Matmul"):
        assert np.isnan(value).all()  # the NaN's row
    elif name == "Affine":
        assert np.isnan(value).all() and np.isnan(op.W.grad[0]).all()
    elif name in ("Concat", "Stack"):
        assert np.array_equal(np.isnan(value), [True, False, False, False] * 2)
    else:
        assert np.isnan(value[0]) and np.isfinite(value[1:]).all()


@pytest.mark.parametrize("name", ["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Exp", "Softmax", "LayerNorm"])
def test_nan_input_gets_a_nan_gradient_not_a_plausible_one(name):
    _, _, (x,) = run_case(name, [np.nan, 1.0, -2.0, 0.5])
    assert np.isnan(x.grad[0, 0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_infinite_inputs_give_no_warning(name):
    try:
        run_case(name, [np.inf, 1.0, -np.inf, 0.5])
    except tg.TapegradError as exc:  # Exp and Log refuse inf/-inf; losses name the infinite array
        assert str(exc).startswith(name)


@pytest.mark.parametrize(
    "row, dtype, message",
    [
        ([np.nan, 800.0], np.float64, "exp overflows float64 for inputs above 709.783 .largest input 800"),
        ([800.0, np.nan], np.float64, "exp overflows .*largest input 800"),
        ([np.nan, 100.0], np.float32, "exp overflows float32 for inputs above 88.7"),
    ],
)
def test_exp_overflow_guard_sees_past_a_nan(row, dtype, message):
    g = tg.Graph(dtype=dtype)
    with pytest.raises(tg.OperationError, match=rf"Exp \(exp_0\): {message}"):
        g.get_operation("Exp")(tg.Variable(np.array(row, dtype=dtype)))


def test_exp_of_nan_alone_is_nan_and_its_real_limit_is_finite():
    _, out, _ = apply("Exp", np.array([np.nan, 0.0, 709.78]))
    assert np.isnan(out.value[0]) and out.value[1] == 1.0 and np.isfinite(out.value[2])


def test_log_of_nan_is_nan_and_a_zero_next_to_nan_is_still_refused():
    _, out, _ = apply("Log", np.array([np.nan, 1.0]))
    assert np.isnan(out.value[0]) and out.value[1] == 0.0
    with pytest.raises(tg.OperationError, match=r"Log \(log_0\): log needs positive inputs, got a minimum of -1.0"):
        apply("Log", np.array([np.nan, -1.0, 2.0]))


@pytest.mark.parametrize(
    "name, x, target, match",
    [
        ("SoftmaxLoss", [[np.nan, 0.0]], [0], "nan because of NaN in the logits"),
        ("SoftmaxLoss", [[np.inf, 0.0]], [0], "because of infinite values in the logits"),
        ("SquareLoss", [[np.nan, 0.0]], [[0.0, 0.0]], "because of NaN in the prediction"),
        ("SquareLoss", [[1.0, 0.0]], [[np.inf, 0.0]], "because of infinite values in the target"),
        ("SigmoidCrossEntropyLoss", [[np.nan, 0.0]], [[0.0, 1.0]], "because of NaN in the logits"),
        ("SigmoidCrossEntropyLoss", [[np.inf, 0.0]], [[1.0, 1.0]], "because of infinite values in the logits"),
        ("SigmoidCrossEntropyLoss", [[1.0, 0.0]], [[np.nan, 1.0]], "the targets hold NaN"),
    ],
)
def test_losses_raise_non_finite_error_naming_the_array(name, x, target, match):
    g = tg.Graph()
    op = g.get_operation(name)
    op(tg.Variable(np.array(x)))
    with pytest.raises(tg.NonFiniteError, match=rf"^{name} .*{match}"):
        op.loss(np.array(target))


# -- labels given as floats --------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, error, match",
    [
        ([1e20, 0.0], tg.OutOfRangeError, r"label 1e\+20 is out of range \[0, 3\)"),
        ([0.0, -1e20], tg.OutOfRangeError, r"label -1e\+20 is out of range"),
        ([2.0**63, 0.0], tg.OutOfRangeError, "is out of range"),
        ([np.inf, 0.0], tg.OutOfRangeError, "label inf is out of range"),
        ([3.0, 0.0], tg.OutOfRangeError, "label 3 is out of range"),
        ([np.nan, 0.0], tg.NonFiniteError, "the labels hold NaN"),
        ([0.5, 1e20], tg.InputTypeError, "non-integral value 0.5"),
    ],
)
def test_float_labels_beyond_the_range_are_out_of_range_without_a_cast_warning(labels, error, match):
    g = tg.Graph()
    op = g.get_operation("SoftmaxLoss")
    op(tg.Variable(np.zeros((2, 3))))
    with pytest.raises(error, match=rf"^SoftmaxLoss \(softmax_loss_0\): .*{match}"):
        op.loss(np.array(labels))


@pytest.mark.parametrize(
    "ids, error", [([1e20], tg.OutOfRangeError), ([np.nan], tg.NonFiniteError), ([-np.inf], tg.OutOfRangeError)]
)
def test_float_embedding_ids_are_checked_before_the_cast(ids, error):
    emb = tg.Graph().get_operation("Embedding", [5, 2])
    with pytest.raises(error, match=r"^Embedding \(embedding_0\): .*id"):
        emb(np.array(ids))


def test_integral_float_labels_still_work():
    _, value, _ = apply("SoftmaxLoss", np.zeros((2, 3)), target=np.array([2.0, 0.0]))
    assert value == pytest.approx(math.log(3))


# -- empty batches -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, x, target, match",
    [
        ("SquareLoss", np.zeros((0, 3)), np.zeros((0, 3)), r"the batch is empty \(prediction shape \(0, 3\)\)"),
        ("SoftmaxLoss", np.zeros((0, 3)), np.zeros(0, dtype=int), r"the batch is empty \(logits shape \(0, 3\)\)"),
        ("SigmoidCrossEntropyLoss", np.zeros((0, 3)), np.zeros((0, 3)), "the batch is empty"),
        ("SigmoidCrossEntropyLoss", np.zeros((3, 0)), np.zeros((3, 0)),
         r"the logits have no elements \(shape \(3, 0\)\)"),
    ],
)
def test_a_loss_on_an_empty_batch_says_so(name, x, target, match):
    g = tg.Graph()
    op = g.get_operation(name)
    op(tg.Variable(x))
    with pytest.raises(tg.ShapeError, match=match):
        op.loss(target)


def test_square_loss_of_examples_without_outputs_is_zero():
    _, value, _ = apply("SquareLoss", np.zeros((3, 0)), target=np.zeros((3, 0)))
    assert value == 0.0


def test_softmax_loss_needs_a_class():
    with pytest.raises(tg.ShapeError, match=r"SoftmaxLoss .*classes >= 1, got \(2, 0\)"):
        apply("SoftmaxLoss", np.zeros((2, 0)), target=np.zeros(2, dtype=int))


# -- 0-d samples -----------------------------------------------------------------------------
SCALAR_OPS = ["Add", "Subtract", "Multiply", "Divide", "Exp", "Log", "Sigmoid", "Tanh", "Relu", "LeakyRelu",
              "Dropout", "Sum", "Mean", "Reshape", "Transpose"]


@pytest.mark.parametrize("name", SCALAR_OPS)
def test_elementwise_ops_have_a_shape_0_sample_and_pass_the_contract_on_it(name):
    cases = [case for case, check in collect_cases(name) if check.__name__ == "check_fan_out"]
    scalar = [case for case in cases if case.sample.inputs and all(np.shape(x) == () for x in case.sample.inputs)]
    assert scalar, f"{name} has no sample whose inputs all have shape ()"
    report = check_operation(name, raise_on_failure=False)
    failed = [r.id for r in report.failures if r.sample == scalar[0].sample_name]
    assert not failed, str(report)


@pytest.mark.parametrize("name", ["Add", "Multiply", "Sigmoid", "Exp"])
def test_a_scalar_fed_to_three_applications_gets_every_contribution(name):
    g = tg.Graph()
    op = g.get_operation(name)
    x = tg.Variable(np.array(0.3))
    inputs = [x, x] if name in ("Add", "Multiply") else [x]
    outs = [op(*inputs) for _ in range(3)]
    g.backward(grads={o: np.array(1.0) for o in outs})
    assert tg.gradcheck(lambda v: op(*([v, v] if len(inputs) == 2 else [v])), [np.array(0.3)], graph=g)
    expected = {"Add": 2.0, "Multiply": 0.6, "Sigmoid": 1 / (1 + math.exp(-0.3)) * (1 - 1 / (1 + math.exp(-0.3))),
                "Exp": math.exp(0.3)}[name]
    assert x.grad.shape == () and x.grad == pytest.approx(3 * expected)


# -- constructor arguments ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, args, kwargs, error, match",
    [
        ("Affine", [-1, 5], {}, tg.ArgumentError, r"Affine \(affine_0\): input_size must be at least 1, got -1"),
        ("Affine", [None, 2], {}, tg.InputTypeError,
         r"Affine \(affine_0\): input_size must be a whole number, got NoneType"),
        ("Affine", [3, 0], {}, tg.ArgumentError, "output_size must be at least 1"),
        ("Affine", [3.5, 2], {}, tg.InputTypeError, "input_size must be a whole number, got float"),
        ("Affine", [3, 2], {"bias": "yes"}, tg.InputTypeError, "bias must be True or False"),
        ("Affine", [True, 2], {}, tg.InputTypeError, "input_size must be a whole number, got bool"),
        ("Embedding", [0, 3], {}, tg.ArgumentError, r"Embedding \(embedding_0\): vocab_size must be at least 1"),
        ("Embedding", [5, "3"], {}, tg.InputTypeError, "embed_size must be a whole number"),
        ("Dropout", ["0.5"], {}, tg.InputTypeError, r"Dropout \(dropout_0\): p must be a number"),
        ("Dropout", [float("inf")], {}, tg.ArgumentError, "p must be in"),
        ("LayerNorm", [0], {}, tg.ArgumentError, r"LayerNorm \(layer_norm_0\): size must be at least 1"),
        ("LayerNorm", [4], {"eps": 0.0}, tg.ArgumentError, "eps must be above 0"),
        ("LayerNorm", [4], {"eps": -1e-5}, tg.ArgumentError, "eps must be above 0"),
        ("LayerNorm", [4], {"eps": float("nan")}, tg.ArgumentError, "eps must be above 0"),
        ("LeakyRelu", ["a"], {}, tg.InputTypeError, r"LeakyRelu \(leaky_relu_0\): alpha must be a number"),
        ("LeakyRelu", [-0.1], {}, tg.ArgumentError, r"alpha must be in \[0, 1\]"),
        ("LeakyRelu", [2.0], {}, tg.ArgumentError, r"alpha must be in \[0, 1\]"),
        ("Softmax", ["a"], {}, tg.InputTypeError, r"Softmax \(softmax_0\): axis must be an int"),
        ("LogSoftmax", [None], {}, tg.InputTypeError, "axis must be an int"),
        ("Concat", [None], {}, tg.InputTypeError, r"Concat \(concat_0\): axis must be an int"),
        ("Concat", [1.0], {}, tg.InputTypeError, "axis must be an int"),
        ("Sum", ["0"], {}, tg.InputTypeError, r"Sum \(sum_0\): axis must be an int, a tuple of ints or None"),
        ("Sum", [(0, 0)], {}, tg.ArgumentError, "axis must not repeat an axis"),
        ("Mean", [(0, 1.5)], {}, tg.InputTypeError, r"Mean \(mean_0\): axis\[1\] must be a whole number"),
        ("Mean", [0], {"keepdims": 1}, tg.InputTypeError, "keepdims must be True or False"),
        ("Reshape", ["abc"], {}, tg.InputTypeError,
         r"Reshape \(reshape_0\): shape must be an int or a sequence of ints"),
        ("Reshape", [(2, "a")], {}, tg.InputTypeError, r"shape\[1\] must be a whole number"),
        ("Reshape", [(-1, -1)], {}, tg.ArgumentError, "infer one dimension"),
        ("Reshape", [(2, -3)], {}, tg.ArgumentError, r"shape\[1\] must be at least -1"),
        ("Reshape", [None], {}, tg.InputTypeError, "shape must be an int or a sequence"),
        ("Transpose", [(0, 0)], {}, tg.ArgumentError, r"Transpose \(transpose_0\): axes must not repeat an axis"),
        ("Transpose", [("a", 0)], {}, tg.InputTypeError, r"axes\[0\] must be a whole number"),
        ("Transpose", [1], {}, tg.InputTypeError, "axes must be a sequence of ints or None"),
    ],
)
def test_constructor_arguments_are_checked_naming_the_op_and_the_argument(name, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        tg.Graph().get_operation(name, args, **kwargs)


def test_valid_constructor_arguments_still_work():
    g = tg.Graph()
    assert g.get_operation("Affine", [np.int64(3), 2], bias=np.bool_(False)).b is None
    assert g.get_operation("Sum", axis=[0, 1]).axis == (0, 1)
    assert g.get_operation("Reshape", [np.array([2, -1])]).shape == (2, -1)
    assert g.get_operation("Reshape", [6]).shape == (6,)
    assert g.get_operation("Transpose", [np.array([1, 0])]).axes == (1, 0)
    assert g.get_operation("LeakyRelu", [1]).alpha == 1.0
    assert g.get_operation("LayerNorm", [4], eps=1e-300).eps == 1e-300


@pytest.mark.parametrize("name", ["Add", "Concat", "Stack"])
def test_ops_of_any_number_of_inputs_need_one(name):
    op = tg.Graph().get_operation(name)
    with pytest.raises(tg.InputTypeError, match=rf"{name} \(\w+\): expected at least 1 input"):
        op()


# -- a handled overflow signals nothing; NaN does not derail a scaled fallback -----------------
def quietly(func):
    """``func()`` with every warning recorded (none may be emitted) under the caller's default
    floating-point settings, then again where numpy is asked to raise: both results."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):  # numpy's defaults
            first = func()
    assert not caught, [str(w.message) for w in caught]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        second = func()
    return first, second


def softmax_loss(logits, labels, dtype=np.float64, **kwargs):
    g = tg.Graph(dtype=dtype)
    op = g.get_operation("SoftmaxLoss", **kwargs)
    x = tg.Variable(np.asarray(logits, dtype=dtype))
    op(x)
    value = op.loss(np.asarray(labels))
    g.backward()
    return value, x.grad


@pytest.mark.parametrize(
    "logits, labels, kwargs, expected",
    [
        # the case: rows whose losses are 0 and 2e308, a representable mean
        ([[-1e308, 1e308], [1e308, -1e308]], [1, 1], {}, 1e308),
        # siblings: positions of (..., C) logits; an ignored position; a far-apart row next to ordinary ones
        ([[[-1e308, 1e308]], [[1e308, -1e308]]], [[1], [1]], {}, 1e308),
        ([[-1e308, 1e308], [1e308, -1e308], [0.0, 0.0]], [1, 1, -1], {"ignore_index": -1}, 1e308),
        ([[1e308, -1e308], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [1, 0, 0, 0], {}, 0.5e308 + 3 * math.log(2) / 4),
        # each row's loss fits, their sum does not
        ([[1e308, 0.0], [1e308, 0.0]], [1, 1], {}, 1e308),
    ],
)
def test_softmax_loss_of_logits_further_apart_than_the_float_range_is_its_mean_without_a_signal(
    logits, labels, kwargs, expected
):
    (value, grad), (again, _) = quietly(lambda: softmax_loss(logits, labels, **kwargs))
    assert value == again == pytest.approx(expected, rel=1e-15)
    assert np.isfinite(grad).all()


def test_softmax_loss_far_apart_in_float32():
    (value, grad), _ = quietly(lambda: softmax_loss([[-3e38, 3e38], [3e38, -3e38]], [1, 1], dtype=np.float32))
    assert value == pytest.approx(3e38, rel=1e-6) and grad.dtype == np.float32


@pytest.mark.parametrize("logits, labels", [([[1e308, -1e308]], [1]), ([[1e308, -1e308], [1e308, -1e308]], [1, 1])])
def test_a_softmax_loss_mean_beyond_the_float_range_is_still_an_error_naming_it(logits, labels):
    """One row's loss of 2e308 (or two): the mean itself is beyond the range."""
    with pytest.raises(tg.NonFiniteError, match="the loss exceeds the float64 range"):
        quietly(lambda: softmax_loss(logits, labels))


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        ([1e308, 1e308, np.nan], {}, np.nan),  # the case
        ([np.nan, 1e308, 1e308], {}, np.nan),
        ([1e308, 1e308, np.inf], {}, np.inf),
        ([1e308, 1e308, -np.inf, np.inf], {}, np.nan),
        ([[1e308, 1e308, np.nan], [1e308, 1.5e308, 0.0]], {"axis": 1}, [np.nan, 2.5 / 3 * 1e308]),
        ([[1e308, np.nan], [1e308, 1e308]], {"axis": 0}, [1e308, np.nan]),
        ([[1e308, 1e308], [np.inf, 1.0]], {"axis": 1, "keepdims": True}, [[1e308], [np.inf]]),
    ],
)
def test_mean_with_nan_or_infinity_next_to_huge_values_is_nan_or_the_limit_without_a_signal(x, kwargs, expected):
    def mean():
        g = tg.Graph()
        v = tg.Variable(np.array(x))
        out = g.get_operation("Mean", **kwargs)(v)
        g.backward(grads={out: np.ones(out.shape)})
        return out.value, v.grad

    (value, grad), (again, _) = quietly(mean)
    assert np.array_equal(value, again, equal_nan=True)
    assert np.allclose(value, expected, rtol=1e-15, equal_nan=True) and value.shape == np.shape(expected)
    assert np.isfinite(grad).all()  # the gradient (1 / count) does not depend on the values


def test_mean_with_nan_next_to_huge_values_in_float32():
    g = tg.Graph(dtype=np.float32)
    x = np.array([[3e38, 3e38, np.nan], [3e38, 3e38, 1.0]], dtype=np.float32)
    (value, _), _ = quietly(lambda: (g.get_operation("Mean", axis=1)(tg.Variable(x)).value, None))
    assert np.isnan(value[0]) and value[1] == pytest.approx(2e38, rel=1e-6) and value.dtype == np.float32


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        ([1e308, 1e308, np.nan], {}, np.nan),
        ([1e308, 1e308, -1e308], {}, 1e308),  # a partial sum overflows, the sum fits
        ([1e308, 1e308, np.inf], {}, np.inf),
        ([[1e308, 1e308, -1e308], [1.0, 2.0, 3.0]], {"axis": 1}, [1e308, 6.0]),
        ([[1e308, 1e308], [np.nan, -1e308]], {"axis": 0, "keepdims": True}, [[np.nan, 0.0]]),
    ],
)
def test_sum_signals_overflow_only_for_a_sum_beyond_the_float_range(x, kwargs, expected):
    """Mean's sibling: Sum([1e308, 1e308, nan]) is NaN, not 'beyond the float range'."""
    (value, _), _ = quietly(lambda: (tg.Graph().get_operation("Sum", **kwargs)(tg.Variable(np.array(x))).value, None))
    assert np.allclose(value, expected, rtol=1e-15, equal_nan=True) and value.shape == np.shape(expected)


@pytest.mark.parametrize(
    "inputs, expected",
    [([1e308, 1e308, -1e308], 1e308), ([1e308, 1e308, np.nan], np.nan), ([1e308, 1e308, np.inf], np.inf)],
)
def test_add_of_three_inputs_signals_overflow_only_for_a_sum_beyond_the_float_range(inputs, expected):
    def add():
        g = tg.Graph()
        variables = [tg.Variable(np.array([v, 1.0])) for v in inputs]
        out = g.get_operation("Add")(*variables)
        g.backward(grads={out: np.ones(2)})
        return out.value, variables[0].grad

    (value, grad), _ = quietly(add)
    assert np.allclose(value, [expected, 3.0], rtol=1e-15, equal_nan=True)
    assert np.array_equal(grad, [1.0, 1.0])


@pytest.mark.parametrize("name, inputs", [("Sum", [np.array([1e308, 1e308])]), ("Add", [np.array(1e308)] * 3)])
def test_a_sum_truly_beyond_the_float_range_still_raises_where_numpy_is_asked_to(name, inputs):
    op = tg.Graph().get_operation(name)
    with (
        np.errstate(over="raise"),
        pytest.raises(tg.NonFiniteError, match=rf"^{name} \(\w+\): forward went beyond the float range"),
    ):
        op(*[tg.Variable(x) for x in inputs])
