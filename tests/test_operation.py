"""The op author's contract: ctx, the forward wrapper, losses, errors naming the op."""

import numpy as np
import pytest

# the README's examples, as the installed third-party fixture ships them
from acme_ops.plugin import Scale, Softplus

import tapegrad as tg


class SplitHalves(tg.Operation):
    """Two outputs: the first and second half of the last axis."""

    def forward(self, ctx, x):
        k = x.shape[-1] // 2
        return x[..., :k].copy(), x[..., k:].copy()

    def backward(self, ctx, grads):
        first, second = grads
        return np.concatenate([first, second], axis=-1)


def test_get_operation_accepts_a_class_and_returns_the_authors_instance(graph):
    op = graph.get_operation(Softplus)
    assert type(op) is Softplus and op.graph is graph and op.name == "softplus_0"
    y = op(tg.Variable(np.zeros((2, 2))))
    assert isinstance(y, tg.Variable) and np.allclose(y.value, np.log(2))


def test_parameters_are_created_in_the_graph_store_and_accumulate(graph):
    op = graph.get_operation(Scale, [3])
    assert graph.parameter.variable_dict["scale_0.w"] is op.w
    assert op.parameters() == {"w": op.w}
    x = tg.Variable(np.ones((2, 3)))
    for _ in range(2):
        out = op(x)
        graph.backward(grads={out: np.ones((2, 3))})
    assert np.allclose(op.w.grad, 4.0)


def test_multi_output_op_returns_a_tuple_and_backpropagates(graph):
    op = graph.get_operation(SplitHalves)
    x = tg.Variable(np.arange(4.0).reshape(1, 4))
    a, b = op(x)
    assert a.shape == (1, 2) and b.shape == (1, 2)
    graph.backward(grads={b: np.ones((1, 2))})  # only one output used: the other gets zeros
    assert np.array_equal(x.grad, [[0, 0, 1, 1]])


def test_wrong_number_of_inputs_names_the_op(graph):
    op = graph.get_operation(Softplus)
    with pytest.raises(tg.InputTypeError, match=r"Softplus \(softplus_0\): expected 1 input\(s\), got 2"):
        op(np.ones(2), np.ones(2))


def test_non_numeric_input_names_the_op(graph):
    op = graph.get_operation(Softplus)
    with pytest.raises(tg.InputTypeError, match="Softplus.*numeric"):
        op(np.array(["x"]))


def test_numpy_errors_inside_an_op_become_framework_errors_naming_the_op(graph):
    mul = graph.get_operation("Multiply")
    with pytest.raises(tg.ShapeError, match=r"Multiply \(multiply_0\).*\(2, 3\).*\(4,\)"):
        mul(np.ones((2, 3)), np.ones(4))

    class Broken(tg.Operation):
        def forward(self, ctx, x):
            return x @ np.ones((5, 5))

        def backward(self, ctx, grad):
            return grad

    with pytest.raises(tg.OperationError, match=r"Broken.*forward failed on inputs of shapes \(2, 3\)"):
        graph.get_operation(Broken)(np.ones((2, 3)))


def test_op_outside_a_graph_has_a_clear_error():
    with pytest.raises(tg.GraphError, match="graph.get_operation"):
        Softplus()(np.ones(2))


def test_subclass_can_call_super_forward(graph):
    class Softplus2(Softplus):
        def forward(self, ctx, x):
            return 2 * super().forward(ctx, x)

        def backward(self, ctx, grad):
            return 2 * super().backward(ctx, grad)

    op = graph.get_operation(Softplus2)
    x = tg.Variable(np.zeros(3))
    out = op(x)
    assert np.allclose(out.value, 2 * np.log(2))
    graph.backward(grads={out: np.ones(3)})
    assert np.allclose(x.grad, 1.0)


class Mul(tg.Operation):
    """A plain two-input op, written without framework helpers."""

    def forward(self, ctx, a, b):
        ctx.saved = (a, b)
        return a * b

    def backward(self, ctx, grad):
        a, b = ctx.saved
        return grad * b, grad * a


def test_two_input_applications_take_variables_constants_and_lists(graph):
    op = graph.get_operation(Mul)
    a = tg.Variable(np.array([1.0, 2.0]))
    for other in (np.array([3.0, 4.0]), [3.0, 4.0], (3, 4)):
        out = op(a, other)
        assert np.allclose(out.value, [3.0, 8.0])
        graph.backward(grads={out: np.ones(2)})
        assert np.allclose(a.grad, [3.0, 4.0])
        a.clear_grad()
    b = tg.Variable(np.array([3.0, 4.0]))
    out = op([1.0, 2.0], b)
    graph.backward(grads={out: np.ones(2)})
    assert np.allclose(b.grad, [1.0, 2.0])


def test_two_input_applications_report_bad_inputs_naming_the_op(graph):
    op = graph.get_operation(Mul)
    with pytest.raises(tg.InputTypeError, match=r"Mul \(mul_0\): expected 2 input\(s\), got 1"):
        op(np.ones(2))
    with pytest.raises(tg.InputTypeError, match=r"Mul \(mul_0\): expected 2 input\(s\), got 3"):
        op(np.ones(2), np.ones(2), np.ones(2))
    with pytest.raises(tg.InputTypeError, match="Mul.*input 1"):
        op(np.ones(2), np.array(["x", "y"]))
    with pytest.raises(tg.OperationError, match=r"Mul.*forward failed on inputs of shapes \(2, 3\), \(4,\)"):
        op(np.ones((2, 3)), np.ones(4))
    assert graph.forward_ops == []  # failed applications are not recorded


def test_subclasses_of_two_input_and_n_input_ops_can_call_super_forward(graph):
    class Mul3(Mul):
        def forward(self, ctx, a, b):
            return 3 * super().forward(ctx, a, b)

        def backward(self, ctx, grad):
            return tuple(3 * g for g in super().backward(ctx, grad))

    class SumAll(tg.Operation):
        def forward(self, ctx, *xs):
            ctx.saved = (len(xs),)
            return sum(xs)

        def backward(self, ctx, grad):
            return (grad,) * ctx.saved[0]

    class SumAllTwice(SumAll):
        def forward(self, ctx, *xs):
            return 2 * super().forward(ctx, *xs)  # one array: super().forward(ctx, x)

        def backward(self, ctx, grad):
            return tuple(2 * g for g in super().backward(ctx, grad))

    op = graph.get_operation(Mul3)
    a, b = tg.Variable(np.array([1.0, 2.0])), tg.Variable(np.array([3.0, 4.0]))
    out = op(a, b)
    assert np.allclose(out.value, [9.0, 24.0])
    graph.backward(grads={out: np.ones(2)})
    assert np.allclose(a.grad, [9.0, 12.0]) and np.allclose(b.grad, [3.0, 6.0])

    twice = graph.get_operation(SumAllTwice)
    for inputs in ([a], [a, b], [a, b, a]):
        a.clear_grad()
        out = twice(*inputs)
        assert np.allclose(out.value, 2 * sum(v.value for v in inputs))
        graph.backward(grads={out: np.ones(2)})
        assert np.allclose(a.grad, 2.0 * sum(v is a for v in inputs))


def test_backward_with_wrong_gradient_shape_is_reported(graph):
    class BadShape(tg.Operation):
        def forward(self, ctx, x):
            return x.sum(axis=1)

        def backward(self, ctx, grad):
            return grad

    op = graph.get_operation(BadShape)
    x = tg.Variable(np.ones((2, 3)))
    out = op(x)
    with pytest.raises(tg.BackwardError, match=r"BadShape.*shape \(2,\).*\(2, 3\)"):
        graph.backward(grads={out: np.ones(2)})


def test_loss_applies_to_the_most_recent_forward(graph):
    loss = graph.get_operation("SquareLoss")
    loss.forward(tg.Variable(np.ones((1, 2))))
    loss.forward(tg.Variable(np.full((1, 2), 3.0)))
    assert loss.loss(np.zeros((1, 2))) == pytest.approx(9.0)


def test_loss_before_forward_and_nan_reaching_a_loss(graph):
    loss = graph.get_operation("SoftmaxLoss")
    with pytest.raises(tg.GraphError, match="forward"):
        loss.loss(np.array([0]))
    loss.forward(tg.Variable(np.array([[np.nan, 1.0]])))
    with pytest.raises(tg.NonFiniteError, match="SoftmaxLoss.*nan"):
        loss.loss(np.array([0]))


def test_ctx_keeps_per_call_state_so_reuse_is_correct(graph):
    op = graph.get_operation(Softplus)
    x1, x2 = tg.Variable(np.array([0.0])), tg.Variable(np.array([2.0]))
    y1, y2 = op(x1), op(x2)
    graph.backward(grads={y1: np.ones(1), y2: np.ones(1)})
    assert np.allclose(x1.grad, 0.5)
    assert np.allclose(x2.grad, 1 / (1 + np.exp(-2.0)))


# -- subclasses of numpy's array are computed on as plain arrays --------------------------------------------
@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # (numpy's, for np.matrix itself)
def test_a_matrix_input_is_multiplied_elementwise_as_an_array_is(graph):
    multiply = graph.get_operation("Multiply")
    m = np.matrix([[1.0, 2.0], [3.0, 4.0]])
    out = multiply(m, m)
    assert type(out.value) is np.ndarray and np.array_equal(out.value, np.array([[1.0, 4.0], [9.0, 16.0]]))
    v = tg.Variable(m)
    assert np.array_equal(multiply(v, v).value, [[1.0, 4.0], [9.0, 16.0]])


def test_a_masked_array_with_masked_entries_is_refused_naming_the_op(graph):
    total = graph.get_operation("Sum")
    masked = np.ma.masked_array([1.0, 2.0, 3.0], mask=[False, True, False])
    with pytest.raises(tg.InputTypeError, match=r"Sum \(sum_0\) input 0: a masked array with 1 masked entries"):
        total(masked)
    with pytest.raises(tg.InputTypeError, match=r"SquareLoss \(square_loss_0\) target: a masked array"):
        loss = graph.get_operation("SquareLoss")
        loss(np.ones(3))
        loss.loss(masked)
    unmasked = np.ma.masked_array([1.0, 2.0, 3.0], mask=False)
    assert float(total(unmasked).value) == 6.0  # nothing masked: its data


def test_integer_lists_become_the_graphs_floats_and_array_likes_keep_their_dtype(graph):
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.array([1, 2, 3], dtype=np.float32)

    assert tg.Variable([1, 2, 3]).dtype == np.float64  # Python data
    assert tg.Variable(ArrayLike()).dtype == np.float32  # an array-like's own dtype
