"""Math ops: forward values against numpy, broadcasting gradients, bad inputs, properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapegrad as tg


def run(name, *inputs, args=None, **kwargs):
    g = tg.Graph(seed=0)
    op = g.get_operation(name, args, **kwargs)
    variables = [tg.Variable(np.asarray(x, dtype=float)) for x in inputs]
    return g, op, variables, op(*variables)


@pytest.mark.parametrize(
    "name, ref",
    [
        ("Add", lambda a, b: a + b),
        ("Subtract", lambda a, b: a - b),
        ("Multiply", lambda a, b: a * b),
        ("Divide", lambda a, b: a / b),
    ],
)
def test_binary_forward_matches_numpy_with_broadcasting(name, ref, rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal(3) + 3.0
    _, _, _, out = run(name, a, b)
    assert np.allclose(out.value, ref(a, b))


def test_binary_gradients_are_summed_over_broadcast_axes(rng):
    g, _, (a, b), out = run("Multiply", rng.standard_normal((2, 1, 3)), rng.standard_normal((4, 1)))
    seed = rng.standard_normal((2, 4, 3))
    g.backward(grads={out: seed})
    assert a.grad.shape == (2, 1, 3) and b.grad.shape == (4, 1)
    assert np.allclose(a.grad, (seed * b.value).sum(axis=1, keepdims=True))
    assert np.allclose(b.grad, (seed * a.value).sum(axis=(0, 2))[:, None])


def test_add_takes_any_number_of_inputs(rng):
    xs = [rng.standard_normal((2, 2)) for _ in range(4)]
    g, _, variables, out = run("Add", *xs)
    assert np.allclose(out.value, sum(xs))
    g.backward(grads={out: np.ones((2, 2))})
    assert all(np.array_equal(v.grad, np.ones((2, 2))) for v in variables)


def test_matmul_reductions_and_shape_ops_match_numpy(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    assert np.allclose(run("Matmul", a, b)[3].value, a @ b)
    x = rng.standard_normal((2, 3, 4))
    assert np.allclose(run("Sum", x, axis=1)[3].value, x.sum(axis=1))
    assert np.allclose(run("Sum", x, axis=(0, 2), keepdims=True)[3].value, x.sum(axis=(0, 2), keepdims=True))
    assert np.allclose(run("Mean", x)[3].value, x.mean())
    assert np.allclose(run("Mean", x, axis=-1, keepdims=True)[3].value, x.mean(axis=-1, keepdims=True))
    assert run("Reshape", x, args=[(4, -1)])[3].shape == (4, 6)
    assert np.array_equal(run("Transpose", x, args=[(2, 0, 1)])[3].value, x.transpose(2, 0, 1))
    assert np.array_equal(run("Transpose", x)[3].value, x.T)
    parts = [rng.standard_normal((2, k)) for k in (1, 3)]
    assert np.array_equal(run("Concat", *parts, axis=1)[3].value, np.hstack(parts))
    assert np.allclose(run("Exp", a)[3].value, np.exp(a))
    assert np.allclose(run("Log", np.abs(a) + 1)[3].value, np.log(np.abs(a) + 1))


def test_concat_splits_the_gradient_back(rng):
    parts = [rng.standard_normal((k, 2)) for k in (1, 2)]
    g, _, (a, b), out = run("Concat", *parts)
    seed = np.arange(6.0).reshape(3, 2)
    g.backward(grads={out: seed})
    assert np.array_equal(a.grad, seed[:1]) and np.array_equal(b.grad, seed[1:])


@pytest.mark.parametrize(
    "name, inputs, kwargs, error, match",
    [
        ("Add", [np.ones((2, 3)), np.ones((4,))], {}, tg.ShapeError, r"Add.*\(2, 3\), \(4,\)"),
        ("Multiply", [np.ones((2, 3)), np.ones((3, 2))], {}, tg.ShapeError, "do not broadcast"),
        ("Matmul", [np.ones((2, 3)), np.ones((2, 3))], {}, tg.ShapeError, r"Matmul.*inner dimensions"),
        ("Matmul", [np.ones(3), np.ones((3, 2))], {}, tg.ShapeError, "at least 2 dimensions"),
        ("Sum", [np.ones((2, 3))], {"axis": 2}, tg.ShapeError, "axis 2 is out of range"),
        ("Mean", [np.ones((2, 3))], {"axis": -3}, tg.ShapeError, "out of range"),
        ("Reshape", [np.ones((2, 3))], {"shape": (4, 2)}, tg.ShapeError, r"cannot reshape.*\(2, 3\)"),
        ("Transpose", [np.ones((2, 3))], {"axes": (0,)}, tg.ShapeError, "not a permutation"),
        ("Transpose", [np.ones((2, 3))], {"axes": (0, 5)}, tg.ShapeError, "out of range"),
        ("Sum", [np.ones((2, 3))], {"axis": (0, -2)}, tg.ShapeError, "names one axis twice"),
        ("Concat", [np.ones((2, 3)), np.ones((3, 2))], {"axis": 0}, tg.ShapeError, "must match"),
        ("Concat", [np.ones((2, 3))], {"axis": 5}, tg.ShapeError, "out of range"),
        ("Log", [np.array([1.0, 0.0])], {}, tg.OperationError, r"Log.*positive"),
        ("Divide", [np.ones(2), np.array([1.0, 0.0])], {}, tg.OperationError, "division by zero"),
        ("Exp", [np.array([800.0])], {}, tg.OperationError, "overflows"),
    ],
)
def test_bad_inputs_raise_framework_errors_naming_the_op(name, inputs, kwargs, error, match):
    g = tg.Graph()
    op = g.get_operation(name, **kwargs)
    with pytest.raises(error, match=match):
        op(*[tg.Variable(x) for x in inputs])


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
finite = st.floats(-10, 10, allow_nan=False, width=64)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(["Add", "Subtract", "Multiply", "Divide"]))
def test_property_broadcasting_ops_match_numpy_and_gradients_have_input_shapes(data, name):
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    a = data.draw(hnp.arrays(np.float64, shape_a, elements=finite))
    b = data.draw(hnp.arrays(np.float64, shape_b, elements=st.floats(0.5, 10, width=64)))
    g = tg.Graph()
    va, vb = tg.Variable(a), tg.Variable(b)
    out = g.get_operation(name)(va, vb)
    ref = {"Add": np.add, "Subtract": np.subtract, "Multiply": np.multiply, "Divide": np.divide}[name](a, b)
    assert np.allclose(out.value, ref)
    g.backward(grads={out: np.ones_like(out.value)})
    assert va.grad.shape == a.shape and vb.grad.shape == b.shape
    if name == "Add":
        assert np.allclose(va.grad, np.broadcast_to(1.0, ref.shape).sum() / a.size)


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(np.float64, shapes, elements=finite),
    name=st.sampled_from(["Exp", "Sigmoid", "Tanh", "Relu", "LeakyRelu"]),
)
def test_property_elementwise_ops_keep_shape_and_pass_gradcheck(x, name):
    if name in ("Relu", "LeakyRelu"):
        x = np.where(np.abs(x) < 0.05, 0.5, x)  # stay away from the kink
    g = tg.Graph()
    op = g.get_operation(name)
    out = op(tg.Variable(x))
    assert out.shape == x.shape and np.isfinite(out.value).all()
    assert tg.gradcheck(op, [x])


# -- Index, Stack, Unstack ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "index",
    [2, -1, (slice(None), 2), (slice(1, None, 2), slice(None, 2)), (Ellipsis, 0), (None, 1), (1, 2, 3),
     slice(None, None, -1), (np.int64(1), slice(np.int32(0), 2)), ()],
    ids=repr,
)
def test_index_is_numpy_basic_indexing_and_its_gradient_matches_central_differences(index, rng):
    x = rng.standard_normal((3, 4, 5))
    g, op, (v,), out = run("Index", x, args=[index])
    assert np.array_equal(out.value, x[index]) and out.shape == x[index].shape
    seed = rng.standard_normal(out.shape)
    g.backward(grads={out: seed})
    expected = np.zeros_like(x)
    expected[index] = seed
    assert np.array_equal(v.grad, expected)
    assert tg.gradcheck(op, [x])


def test_index_by_keyword_as_the_issue_writes_it(rng):
    x = rng.standard_normal((4, 3))
    out = tg.Graph().get_operation("Index", index=(slice(None), 2))(tg.Variable(x))
    assert np.array_equal(out.value, x[:, 2])


def test_index_and_unstack_keep_integer_ids_integers_and_stack_computes_in_the_graph_dtype():
    ids = np.array([[3, 1, 4], [1, 5, 9]])
    g = tg.Graph()
    step = g.get_operation("Index", [(slice(None), 1)])(ids)
    assert step.dtype == ids.dtype and np.array_equal(step.value, [1, 5])
    columns = g.get_operation("Unstack", axis=1)(ids)
    assert [c.dtype for c in columns] == [ids.dtype] * 3 and np.array_equal(columns[2].value, [4, 9])
    stacked = g.get_operation("Stack")(ids[0], ids[1])
    assert stacked.dtype == np.float64 and np.array_equal(stacked.value, ids)
    # an id sliced by Index feeds Embedding, which needs integers
    emb = g.get_operation("Embedding", [10, 2])
    assert np.array_equal(emb(step).value, emb.W.value[[1, 5]])


@pytest.mark.parametrize(
    "index, error, match",
    [
        (np.array([0, 1]), tg.InputTypeError,
         r"index must be an int, a slice, None or Ellipsis, got ndarray .*advanced indexing"),
        ([0, 1], tg.InputTypeError, r"index must be .*, got list \[0, 1\] \(arrays, lists and booleans are advanced"),
        ((slice(None), [0, 2]), tg.InputTypeError, r"index\[1\] must be .*, got list"),
        (1.0, tg.InputTypeError, "index must be an int, a slice, None or Ellipsis, got float 1.0"),
        (True, tg.InputTypeError, "index must be .*, got bool True .*advanced indexing"),
        ("a", tg.InputTypeError, "index must be .*, got str 'a'$"),
        (slice(0.5, 2), tg.InputTypeError, r"index.start must be an int or None, got float 0.5"),
        ((0, slice(None, None, 0)), tg.ArgumentError, r"index\[1\] has a step of 0"),
        ((Ellipsis, 0, Ellipsis), tg.ArgumentError, r"index \[\.\.\., 0, \.\.\.\] holds more than one Ellipsis"),
    ],
)
def test_index_refuses_what_is_not_basic_indexing_when_made(index, error, match):
    with pytest.raises(error, match=rf"^Index \(index_0\): {match}"):
        tg.Graph().get_operation("Index", [index])


@pytest.mark.parametrize(
    "index, shape, match",
    [
        ((slice(None), 3), (4, 3),
         r"index \[:, 3\] does not fit an input of shape \(4, 3\): index 3 is out of bounds for axis 1"),
        ((0, 0, 0), (4, 3), r"index \[0, 0, 0\] does not fit an input of shape \(4, 3\): too many indices"),
        (-5, (4, 3), r"index \[-5\] does not fit an input of shape \(4, 3\)"),
        ((Ellipsis, None, slice(1, None, 2)), (), r"index \[\.\.\., None, 1::2\] does not fit an input of shape \(\)"),
    ],
)
def test_an_index_that_does_not_fit_the_input_is_a_shape_error_naming_index_and_shape(index, shape, match):
    op = tg.Graph().get_operation("Index", [index])
    with pytest.raises(tg.ShapeError, match=rf"^Index \(index_0\): {match}"):
        op(tg.Variable(np.zeros(shape)))


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_stack_and_unstack_match_numpy_and_undo_each_other(axis, rng):
    parts = [rng.standard_normal((2, 3)) for _ in range(4)]
    g, _, variables, out = run("Stack", *parts, axis=axis)
    assert np.array_equal(out.value, np.stack(parts, axis=axis))
    pieces = g.get_operation("Unstack", axis=axis)(out)
    assert len(pieces) == 4 and all(np.array_equal(p.value, q) for p, q in zip(pieces, parts))
    seeds = [rng.standard_normal((2, 3)) for _ in range(4)]
    g.backward(grads=dict(zip(pieces, seeds)))
    assert all(np.array_equal(v.grad, s) for v, s in zip(variables, seeds))


def test_unstack_gives_unused_outputs_zero_gradient(rng):
    x = rng.standard_normal((2, 5, 3))
    g, op, (v,), steps = run("Unstack", x, axis=1)
    assert len(steps) == 5 and steps[0].shape == (2, 3)
    g.backward(grads={steps[4]: np.ones((2, 3))})
    assert np.array_equal(v.grad[:, 4], np.ones((2, 3))) and not v.grad[:, :4].any()
    assert tg.gradcheck(op, [x])


@pytest.mark.parametrize(
    "name, inputs, kwargs, match",
    [
        ("Stack", [np.ones((2, 3)), np.ones((3, 2))], {},
         r"inputs must all have the same shape, got \(2, 3\), \(3, 2\)"),
        ("Stack", [np.ones((2, 3)), np.ones((2, 3))], {"axis": 3},
         r"axis 3 is out of range for stacking inputs of rank 2 .*-3\.\.2"),
        ("Stack", [np.ones((2, 3))], {"axis": -4}, "axis -4 is out of range"),
        ("Unstack", [np.ones((2, 0, 3))], {"axis": 1},
         r"axis 1 of the input \(shape \(2, 0, 3\)\) has length 0: nothing to unstack"),
        ("Unstack", [np.ones((2, 3))], {"axis": 2}, "axis 2 is out of range for an input of rank 2"),
        ("Unstack", [np.array(1.0)], {}, r"expected the input to have at least 1 dimensions, got shape \(\)"),
    ],
)
def test_stack_and_unstack_shape_errors_name_the_op(name, inputs, kwargs, match):
    op = tg.Graph().get_operation(name, **kwargs)
    with pytest.raises(tg.ShapeError, match=rf"^{name} \({op.name}\): {match}"):
        op(*[tg.Variable(x) for x in inputs])


@pytest.mark.parametrize("name", ["Stack", "Unstack"])
@pytest.mark.parametrize(
    "axis, error",
    [("1", tg.InputTypeError), (1.0, tg.InputTypeError), (None, tg.InputTypeError), (True, tg.InputTypeError)],
)
def test_stack_and_unstack_check_their_axis_when_made(name, axis, error):
    with pytest.raises(error, match=rf"^{name} \(\w+\): axis must be an int"):
        tg.Graph().get_operation(name, axis=axis)


def test_an_unrolled_step_captured_with_ops_made_up_front_equals_eager_bit_for_bit(rng):
    """A recurrence over time steps: one Unstack made before the step splits the sequence, a Stack
    joins the states; the captured step replays what eager computes, bit for bit."""
    from tapegrad.optim import SGD

    def model():
        g = tg.Graph("unrolled", seed=0)
        ops = {
            "split": g.get_operation("Unstack", axis=1),
            "proj": g.get_operation("Affine", [3, 4]),
            "add": g.get_operation("Add"),
            "tanh": g.get_operation("Tanh"),
            "join": g.get_operation("Stack", axis=1),
            "last": g.get_operation("Index", [(slice(None), -1)]),
            "head": g.get_operation("Affine", [4, 2]),
            "loss": g.get_operation("SoftmaxLoss"),
        }
        optimizer = SGD(g.parameter, lr=0.1)

        def step(x, h0, y):
            h, states = h0, []
            for x_t in ops["split"](x):
                h = ops["tanh"](ops["add"](ops["proj"](x_t), h))
                states.append(h)
            ops["loss"](ops["head"](ops["last"](ops["join"](*states))))
            value = ops["loss"].loss(y)
            g.backward()
            optimizer.step()
            optimizer.zero_grad()
            return value

        return g, step

    (graph, step), (_, eager) = model(), model()
    captured = graph.capture(step)
    for _ in range(4):
        x, h0, y = rng.standard_normal((5, 6, 3)), rng.standard_normal((5, 4)), rng.integers(0, 2, 5)
        assert captured(x, h0, y) == eager(x, h0, y)
    assert len(captured.records) == 1


def test_ids_unstacked_in_a_captured_step_stay_integers_and_replay_bit_for_bit(rng):
    """Token ids (N, T) split by one Unstack made before the step feed an Embedding per step."""
    from tapegrad.optim import SGD

    def model():
        g = tg.Graph("ids", seed=0)
        split, emb = g.get_operation("Unstack", axis=1), g.get_operation("Embedding", [7, 3])
        add, tanh = g.get_operation("Add"), g.get_operation("Tanh")
        head, loss = g.get_operation("Affine", [3, 7]), g.get_operation("SoftmaxLoss")
        optimizer = SGD(g.parameter, lr=0.5)

        def step(ids, y, h):  # (the initial state is an argument: the step makes no array itself)
            for ids_t in split(ids):
                h = tanh(add(emb(ids_t), h))
            loss(head(h))
            value = loss.loss(y)
            g.backward()
            optimizer.step()
            optimizer.zero_grad()
            return value

        return g, step, emb

    (graph, step, emb), (_, eager, emb_eager) = model(), model()
    captured = graph.capture(step)
    for _ in range(4):
        ids, y = rng.integers(0, 7, (4, 5)), rng.integers(0, 7, 4)
        h0 = np.zeros((4, 3))
        assert captured(ids, y, h0) == eager(ids, y, h0)
    assert np.array_equal(emb.W.value, emb_eager.W.value) and len(captured.records) == 1
