"""The tape: recording, pairing losses, seeding, the backward walk and the accumulation rule."""

import copy
import pathlib
import pickle
import re

import numpy as np
import pytest

import tapegrad as tg

# (op, arity, derivative of the op at x for each input) for every elementwise first-party op
ELEMENTWISE = {
    "Add": (2, lambda a, b: (1.0, 1.0)),
    "Subtract": (2, lambda a, b: (1.0, -1.0)),
    "Multiply": (2, lambda a, b: (b, a)),
    "Divide": (2, lambda a, b: (1.0 / b, -a / b**2)),
    "Exp": (1, lambda a: (np.exp(a),)),
    "Log": (1, lambda a: (1.0 / a,)),
    "Sigmoid": (1, lambda a: (np.exp(-a) / (1 + np.exp(-a)) ** 2,)),
    "Tanh": (1, lambda a: (1 - np.tanh(a) ** 2,)),
    "Relu": (1, lambda a: (float(a > 0),)),
    "LeakyRelu": (1, lambda a: (1.0 if a > 0 else 0.01,)),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
@pytest.mark.parametrize("uses", [3, 5])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scalar_values_keep_shape_and_every_contribution(name, uses, dtype):
    arity, derivative = ELEMENTWISE[name]
    g = tg.Graph(dtype=dtype)
    op = g.get_operation(name)
    total = g.get_operation("Add")
    x = tg.Variable(np.array(0.7, dtype=dtype))
    other = tg.Variable(np.array(1.3, dtype=dtype))
    inputs = (x,) if arity == 1 else (x, other)
    outputs = [op(*inputs) for _ in range(uses)]
    for out in outputs:
        assert out.shape == () and out.dtype == dtype
    result = total(*outputs)
    g.backward(grads={result: np.array(1.0, dtype=dtype)})
    expected = derivative(*(v.value.astype(np.float64) for v in inputs))
    for variable, d in zip(inputs, expected):
        assert variable.grad.shape == () and variable.grad.dtype == dtype
        assert variable.grad == pytest.approx(uses * d, rel=1e-5)


def test_add_grad_keeps_every_contribution_to_a_scalar():
    v = tg.Variable(np.array(0.0))
    for _ in range(3):
        v.add_grad(np.array(1.0))
    assert v.grad == 3.0 and isinstance(v.grad, np.ndarray) and v.grad.shape == ()
    v.add_grad(np.float64(2.0))  # what numpy ufuncs return for shape ()
    v.add_grad(4.0)
    assert v.grad == 9.0 and v.grad.shape == ()


def test_x_times_x_plus_x_has_the_gradient_2x_plus_1():
    g = tg.Graph()
    mul, add = g.get_operation("Multiply"), g.get_operation("Add")
    x = tg.Variable(np.array(3.0))
    y = add(mul(x, x), x)
    g.backward(grads={y: np.array(1.0)})
    assert x.grad == 7.0


def value(v):
    return float(v.value)


class Scalars:
    """micrograd's Value arithmetic on shape-() Variables, through the first-party ops."""

    def __init__(self):
        self.graph = tg.Graph("scalars")
        self.ops = {n: self.graph.get_operation(n) for n in ("Add", "Subtract", "Multiply", "Divide", "Relu")}

    def __getattr__(self, name):
        return self.ops[name.capitalize()]

    def const(self, c):
        return np.array(float(c))


def test_micrograd_sanity_check():
    s = Scalars()
    x = tg.Variable(np.array(-4.0))
    z = s.add(s.add(s.multiply(s.const(2), x), s.const(2)), x)
    q = s.add(s.relu(z), s.multiply(z, x))
    h = s.relu(s.multiply(z, z))
    y = s.add(s.add(h, q), s.multiply(q, x))
    s.graph.backward(grads={y: np.array(1.0)})

    xv = -4.0
    zv = 3 * xv + 2  # negative here, so relu(z) = 0 and relu(z*z) = z*z
    assert zv < 0
    qv = zv * xv
    yv = zv * zv + qv * (1 + xv)
    dq_dx = 6 * xv + 2  # q = (3x + 2) x
    dy_dx = 2 * zv * 3 + dq_dx * (1 + xv) + qv
    assert value(y) == pytest.approx(yv) and value(y) == pytest.approx(-20.0)
    assert float(x.grad) == pytest.approx(dy_dx) and float(x.grad) == pytest.approx(46.0)


def test_micrograd_more_ops():
    s = Scalars()
    a, b = tg.Variable(np.array(-4.0)), tg.Variable(np.array(2.0))
    c = s.add(a, b)
    d = s.add(s.multiply(a, b), s.multiply(b, s.multiply(b, b)))
    c = s.add(c, s.add(c, s.const(1)))
    c = s.add(c, s.add(s.add(s.const(1), c), s.multiply(a, s.const(-1))))
    d = s.add(d, s.add(s.multiply(d, s.const(2)), s.relu(s.add(b, a))))
    d = s.add(d, s.add(s.multiply(s.const(3), d), s.relu(s.subtract(b, a))))
    e = s.subtract(c, d)
    f = s.multiply(e, e)
    g = s.divide(f, s.const(2))
    g = s.add(g, s.divide(s.const(10), f))
    s.graph.backward(grads={g: np.array(1.0)})

    av, bv = -4.0, 2.0
    up, down = float(av + bv > 0), float(bv - av > 0)  # the relu gates
    cv = 3 * av + 4 * bv + 3
    dv = 12 * av * bv + 12 * bv**3 + 4 * max(av + bv, 0) + max(bv - av, 0)
    ev = cv - dv
    gv = ev**2 / 2 + 10 / ev**2
    dg_de = ev - 20 / ev**3
    de_da = 3 - (12 * bv + 4 * up - down)
    de_db = 4 - (12 * av + 36 * bv**2 + 4 * up + down)
    assert value(g) == pytest.approx(gv) and value(g) == pytest.approx(24.70408163265306)
    assert float(a.grad) == pytest.approx(dg_de * de_da) and float(a.grad) == pytest.approx(138.83381924198252)
    assert float(b.grad) == pytest.approx(dg_de * de_db) and float(b.grad) == pytest.approx(645.5772594752186)


def test_an_op_returning_one_array_for_two_inputs_corrupts_neither():
    g = tg.Graph()
    add = g.get_operation("Add")
    a, b = tg.Variable(np.zeros(2)), tg.Variable(np.zeros(2))
    seed = np.array([1.0, 2.0])
    g.backward(grads={add(a, b): seed})
    assert a.peek_grad() is b.peek_grad()  # the same array, borrowed by both
    a.grad += 10  # a takes its own copy before writing
    assert np.array_equal(b.grad, [1.0, 2.0]) and np.array_equal(seed, [1.0, 2.0])
    # more contributions after a shared first one go into a fresh array
    b.add_grad(np.ones(2))
    b.add_grad(np.ones(2))
    assert np.array_equal(b.grad, [3.0, 4.0]) and np.array_equal(a.grad, [11.0, 12.0])
    assert np.array_equal(seed, [1.0, 2.0])


def test_fan_out_into_a_parameter_sums_every_application():
    g = tg.Graph(seed=0)
    affine = g.get_operation("Affine", [3, 2])
    total = g.get_operation("Add")
    xs = [np.full((1, 3), float(i)) for i in range(1, 4)]
    out = total(*[affine(x) for x in xs])
    g.backward(grads={out: np.ones((1, 2))})
    assert np.allclose(affine.W.grad, np.outer(sum(x[0] for x in xs), np.ones(2)))
    assert np.allclose(affine.b.grad, [3.0, 3.0])


def test_the_tape_is_one_entry_per_application_and_clears_after_backward(graph):
    sig = graph.get_operation("Sigmoid")
    x = tg.Variable(np.zeros(3))
    y = sig(sig(x))
    assert graph.forward_ops is graph.tape.entries and len(graph.forward_ops) == 2
    assert [ctx.op for ctx in graph.forward_ops] == [sig, sig]
    assert graph.forward_ops[-1].outputs is y
    graph.backward(grads={y: np.ones(3)})
    assert graph.forward_ops == [] and graph.tape.losses == []


def test_backward_argument_errors_keep_the_tape(graph):
    sig = graph.get_operation("Sigmoid")
    y = sig(tg.Variable(np.zeros(3)))
    with pytest.raises(tg.InputTypeError, match="dict"):
        graph.backward(grads=[(y, np.ones(3))])
    with pytest.raises(tg.ShapeError, match=r"\(2,\).*\(3,\)"):
        graph.backward(grads={y: np.ones(2)})
    with pytest.raises(tg.InputTypeError, match="complex"):
        graph.backward(grads={y: np.ones(3, dtype=complex)})
    assert len(graph.forward_ops) == 1
    graph.backward(grads={y: np.ones(3)})


def test_backward_seeding_an_output_that_was_not_recorded_raises(graph):
    sig = graph.get_operation("Sigmoid")
    graph.eval()
    y = sig(tg.Variable(np.zeros(3)))
    with pytest.raises(tg.BackwardError, match="eval mode"):
        graph.backward(grads={y: np.ones(3)})


def test_a_backward_returning_complex_gradients_names_the_op(graph):
    class Complex(tg.Operation):
        def forward(self, ctx, x):
            return x * 2.0

        def backward(self, ctx, grad):
            return grad * (2.0 + 0j)

    x = tg.Variable(np.ones(3))
    y = graph.get_operation(Complex)(x)
    with pytest.raises(tg.BackwardError, match=r"Complex.*input 0.*complex"):
        graph.backward(grads={y: np.ones(3)})
    assert x.peek_grad() is None


def test_an_op_returning_complex_values_names_the_op(graph):
    class ComplexOut(tg.Operation):
        def forward(self, ctx, x):
            return x + 1j

        def backward(self, ctx, grad):
            return grad

    with pytest.raises(tg.OperationError, match=r"ComplexOut.*complex"):
        graph.get_operation(ComplexOut)(np.ones(2))


@pytest.mark.parametrize("name", ["Softmax", "Exp", "Tanh", "Sigmoid", "Log", "Multiply"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int64, np.bool_])
def test_integer_and_bool_inputs_compute_in_the_graph_dtype(name, dtype):
    for graph_dtype in (np.float64, np.float32):
        g = tg.Graph(dtype=graph_dtype)
        op = g.get_operation(name)
        x = np.array([[1, 2, 3]], dtype=dtype)
        inputs = (x, x) if name == "Multiply" else (x,)
        out = op(*inputs)
        assert out.dtype == graph_dtype
        reference = g.get_operation(name)(*[i.astype(graph_dtype) for i in inputs])
        assert np.array_equal(out.value, reference.value)


def test_softmax_and_exp_on_uint8_no_longer_overflow(graph):
    assert np.allclose(graph.get_operation("Softmax")(np.array([[10, 20, 30]], dtype=np.uint8)).value.sum(), 1.0)
    assert np.allclose(graph.get_operation("Exp")(np.array([[12]], dtype=np.uint8)).value, np.exp(12.0))


def test_integer_inputs_meant_as_ids_stay_integers(graph):
    emb = graph.get_operation("Embedding", [5, 2])
    ids = tg.Variable(np.array([1, 4]))
    out = emb(ids)
    assert np.array_equal(out.value, emb.W.value[[1, 4]])
    assert emb(np.array([1, 4], dtype=np.uint8)).shape == (2, 2)


def test_an_integer_variable_fed_to_a_float_op_gets_no_gradient(graph):
    sig = graph.get_operation("Sigmoid")
    x = tg.Variable(np.array([1, 2]))
    y = sig(x)
    graph.backward(grads={y: np.ones(2)})
    assert x.grad is None


def test_loss_pairs_with_its_latest_application_without_state_on_the_op(graph):
    loss = graph.get_operation("SquareLoss")
    loss.forward(tg.Variable(np.ones((1, 2))))
    assert not any("ctx" in key for key in vars(loss))
    assert graph.tape.latest_application(loss) is graph.forward_ops[-1]


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))])
def test_a_model_copied_between_forward_and_backward_still_backpropagates(clone):
    g = tg.Graph(seed=0)
    affine = g.get_operation("Affine", [3, 2])
    loss = g.get_operation("SoftmaxLoss")
    loss.forward(affine(tg.Variable(np.ones((2, 3)))))
    value = loss.loss(np.array([0, 1]))
    twin = clone(g)
    twin.backward()
    g.backward()
    assert loss.loss  # the original is untouched by the copy's backward
    assert np.array_equal(twin.parameter["affine_0.W"].grad, affine.W.grad)
    assert value > 0


def test_a_copy_made_after_forward_can_compute_its_loss():
    g = tg.Graph(seed=0)
    loss = g.get_operation("SquareLoss")
    loss.forward(tg.Variable(np.ones((1, 2))))
    twin = copy.deepcopy(g)
    twin_loss = twin.operations[loss.name]
    assert twin_loss.loss(np.zeros((1, 2))) == pytest.approx(1.0)
    twin.backward()


def test_a_growing_tape_warns_once_naming_the_fix(graph, monkeypatch):
    monkeypatch.setattr(tg.Tape, "WARN_ENTRIES", 5)
    sig = graph.get_operation("Sigmoid")
    with pytest.warns(tg.TapeWarning, match=r"graph.eval\(\)") as caught:
        for _ in range(12):
            sig(np.zeros(2))
    assert len([w for w in caught if issubclass(w.category, tg.TapeWarning)]) == 1


def test_isolated_restores_a_pass_in_flight(graph):
    loss = graph.get_operation("SquareLoss")
    loss.forward(tg.Variable(np.ones((1, 2))))
    loss.loss(np.zeros((1, 2)))
    with graph.tape.isolated():
        assert graph.forward_ops == [] and graph.tape.losses == []
        graph.get_operation("Sigmoid")(np.zeros(2))
    assert len(graph.forward_ops) == 1 and len(graph.tape.losses) == 1
    graph.backward()


def test_every_exception_and_warning_class_lives_in_tapegrad_errors():
    import importlib
    import inspect
    import pkgutil

    import tapegrad.errors

    defined = []
    for info in pkgutil.iter_modules(tg.__path__, "tapegrad."):
        if info.name in ("tapegrad.sklearn", "tapegrad.pytest_plugin"):
            continue  # need the optional extras; checked below by source text
        module = importlib.import_module(info.name)
        defined += [
            (info.name, name)
            for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name
            and not name.startswith("_")  # (a module's private control flow never reaches users)
        ]
    assert defined and {module for module, _ in defined} == {"tapegrad.errors"}, defined
    assert {name for _, name in defined} <= set(tapegrad.errors.__all__)
    for optional in ("sklearn", "pytest_plugin"):
        source = (pathlib.Path(tg.__file__).parent / f"{optional}.py").read_text()
        assert not re.search(r"^class [A-Z]\w*\(\w*(Error|Exception|Warning)\)", source, re.M), optional
    assert tg.testing.ContractError is tapegrad.errors.ContractError
    assert issubclass(tapegrad.errors.ContractError, AssertionError)


def test_ops_applied_by_an_ops_own_code_are_part_of_its_application(composite_ops):
    softsign2, through_square_loss = composite_ops
    g = tg.Graph("g", seed=0)
    op = g.get_operation(softsign2, [3])
    loss = g.get_operation(through_square_loss)
    x = tg.Variable(np.random.default_rng(0).standard_normal((4, 3)))
    out = loss.forward(op(x))
    value = loss.loss(np.zeros((4, 3)))
    assert [ctx.op for ctx in g.forward_ops] == [op, loss] and g.tape.losses == [g.forward_ops[1]]
    s = 1.0 / (1.0 + np.exp(-x.value))
    assert np.allclose(out.value, 2.0 * s) and value == pytest.approx(0.5 * float(np.sum((2.0 * s) ** 2)) / 4)
    g.backward()
    assert g.forward_ops == [] and g.tape.inside == 0
    assert np.allclose(x.grad, (2.0 * s) / 4 * 2.0 * s * (1.0 - s))
    report = tg.gradcheck(op, [x.value], graph=g)
    assert report and g.forward_ops == []


def test_an_op_applied_by_an_op_that_fails_leaves_the_tape_usable(composite_ops):
    g = tg.Graph("g", seed=0)
    op = g.get_operation(composite_ops[0], [3])
    with pytest.raises(tg.OperationError, match="Softsign2"):
        op(tg.Variable(np.ones((2, 4))))  # the Sigmoid inside ran; w is (3,)
    assert g.tape.inside == 0
    op(tg.Variable(np.ones((2, 3))))
    assert len(g.forward_ops) == 1


@pytest.mark.parametrize(
    "graph_dtype, narrow", [(np.float64, np.float16), (np.float64, np.float32), (np.float32, np.float16)]
)
def test_floats_narrower_than_the_graph_compute_in_its_dtype(graph_dtype, narrow):
    g = tg.Graph(dtype=graph_dtype)
    softmax_loss, exp, tanh = g.get_operation("SoftmaxLoss"), g.get_operation("Exp"), g.get_operation("Tanh")
    logits = tg.Variable(np.array([[60.0, -60.0]], dtype=narrow))
    probs = softmax_loss(logits)
    assert probs.dtype == graph_dtype and softmax_loss.loss(np.array([1])) == pytest.approx(120.0, rel=1e-3)
    assert exp(tg.Variable(np.array(9.0, dtype=narrow))).dtype == graph_dtype
    x = tg.Variable(np.ones(3, dtype=narrow))
    y = tanh(x)
    assert y.dtype == graph_dtype
    g.backward(grads={y: np.ones(3)})
    assert x.grad.dtype == narrow and np.allclose(x.grad, 1 - np.tanh(1.0) ** 2, rtol=1e-3)


def test_a_float16_value_beyond_its_range_in_a_float64_graph_is_computed_right():
    g = tg.Graph()
    loss = g.get_operation("SoftmaxLoss")
    loss(tg.Variable(np.array([[60000, -60000]], dtype=np.float16)))
    assert loss.loss(np.array([1])) == 120000.0


def test_wider_floats_stay_as_they_are_in_a_narrower_graph():
    g = tg.Graph(dtype=np.float32)
    assert g.get_operation("Tanh")(tg.Variable(np.ones(2))).dtype == np.float64


def test_dropout_refuses_a_scale_beyond_the_dtype_instead_of_nan():
    g = tg.Graph(seed=0, dtype=np.float16)
    dropout = g.get_operation("Dropout", [0.99999])
    with pytest.raises(
        tg.NonFiniteError, match=r"Dropout \(dropout_0\): p=0.99999 scales .* beyond the range of float16"
    ):
        dropout(tg.Variable(np.ones((1, 6), dtype=np.float16)))
    assert np.all(np.isfinite(tg.Graph(seed=0).get_operation("Dropout", [0.99999])(np.ones((1, 6))).value))


def test_a_loss_paired_with_an_application_another_ops_code_made_is_refused():
    class Penalized(tg.Operation):
        """x * w; its forward also applies the graph's SquareLoss to w (not recorded: part of it)."""

        def __init__(self):
            self.w = self.parameter("w", (3,), init="ones")
            self.penalty = self.graph.get_operation("SquareLoss")

        def forward(self, ctx, x):
            self.penalty(self.w)
            ctx.save(x)
            return x * self.w.value

        def backward(self, ctx, grad):
            (x,) = ctx.saved
            self.w.add_grad((grad * x).sum(axis=0))
            return grad * self.w.value

    g = tg.Graph("g", seed=0)
    op = g.get_operation(Penalized)
    op(tg.Variable(np.ones((2, 3))))
    with pytest.raises(tg.GraphError, match=r"SquareLoss \(square_loss_0\): loss\(\) pairs with .* another op's code"):
        op.penalty.loss(np.zeros(3))
    g.eval()
    op(tg.Variable(np.ones((2, 3))))
    assert op.penalty.loss(np.zeros(3)) == 0.5  # in eval mode, a value to read (0.5 * 3 / 3 rows)


def test_a_tape_copied_while_an_ops_code_runs_records_in_the_copy():
    g = tg.Graph("g")
    g.tape.inside = 1  # (as while an op's forward runs)
    twin = copy.deepcopy(g)
    g.tape.inside = 0
    twin.get_operation("Tanh")(tg.Variable(np.ones(2)))
    assert len(twin.forward_ops) == 1
