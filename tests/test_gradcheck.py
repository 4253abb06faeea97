import numpy as np
import pytest

import tapegrad as tg


class Cube(tg.Operation):
    def forward(self, ctx, x):
        ctx.save(x)
        return x**3

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        return grad * 3 * x**2


class WrongSigns(tg.Operation):
    """Gradient wrong by +e on one element and -e on another: a signed sum would cancel."""

    def forward(self, ctx, x):
        return x * 1.0

    def backward(self, ctx, grad):
        g = grad.copy()
        g.flat[0] += 0.1
        g.flat[1] -= 0.1
        return g


def test_gradcheck_passes_a_correct_op_and_reports_per_input(graph, rng):
    op = graph.get_operation(Cube)
    report = tg.gradcheck(op, [rng.standard_normal((3, 2))])
    assert report and report.passed
    entry = report["input 0"]
    assert entry.mode == "full" and entry.max_abs_error < 1e-6 and entry.shape == (3, 2)
    assert "gradcheck passed" in str(report)


def test_opposite_sign_errors_do_not_cancel(graph, rng):
    report = tg.gradcheck(graph.get_operation(WrongSigns), [rng.standard_normal((2, 2))])
    assert not report
    entry = report.failures[0]
    assert entry.worst_index in [(0, 0), (0, 1)]
    assert entry.max_abs_error == pytest.approx(0.1, rel=1e-3)
    assert "NO" in str(report)


def test_fast_mode_catches_the_error_and_rechecks_in_full_mode(graph, rng):
    report = tg.gradcheck(graph.get_operation(WrongSigns), [rng.standard_normal((2, 2))], mode="fast")
    assert not report
    assert report.failures[0].mode == "fast->full" and report.failures[0].worst_index is not None
    ok = tg.gradcheck(graph.get_operation(Cube), [rng.standard_normal((40, 30))], mode="auto")
    assert ok and ok["input 0"].mode == "fast"


def test_perturbed_values_are_restored_exactly_and_grad_left_as_analytic(graph, rng):
    aff = graph.get_operation("Affine", [3, 2])
    before = aff.W.value.copy()
    x = tg.Variable(rng.standard_normal((4, 3)))
    x_before = x.value.copy()
    report = tg.gradcheck(aff, [x])
    assert report
    assert np.array_equal(aff.W.value, before) and np.array_equal(x.value, x_before)
    seed = np.random.default_rng(0).standard_normal((4, 2))
    assert np.allclose(aff.W.grad, x.value.T @ seed)
    assert graph.forward_ops == []


def test_gradcheck_float32_values_are_checked_in_float64_and_restored(rng):
    g = tg.Graph(dtype=np.float32, seed=0)
    aff = g.get_operation("Affine", [3, 2])
    w = aff.W.value
    report = tg.gradcheck(aff, [rng.standard_normal((2, 3)).astype(np.float32)])
    assert report
    assert aff.W.value is w and aff.W.value.dtype == np.float32 and aff.W.grad.dtype == np.float32


def test_gradcheck_of_a_loss_needs_a_target(graph, rng):
    loss = graph.get_operation("SoftmaxLoss")
    with pytest.raises(tg.InputTypeError, match="target"):
        tg.gradcheck(loss, [rng.standard_normal((2, 3))])
    assert tg.gradcheck(loss, [rng.standard_normal((2, 3))], target=np.array([0, 2]))


def test_gradcheck_of_a_callable(graph, rng):
    sig = graph.get_operation("Sigmoid")
    mul = graph.get_operation("Multiply")
    assert tg.gradcheck(lambda a, b: mul(sig(a), b), [rng.standard_normal(3), rng.standard_normal(3)], graph=graph)
    with pytest.raises(tg.InputTypeError, match="graph="):
        tg.gradcheck(lambda a: sig(a), [np.ones(2)])


class Model:
    def __init__(self, sizes=(64, 30, 10), seed=0):
        self.graph = tg.Graph("MLP", seed=seed)
        self.a = self.graph.get_operation("Affine", list(sizes[:2]))
        self.s = self.graph.get_operation("Sigmoid")
        self.o = self.graph.get_operation("Affine", list(sizes[1:]))
        self.l = self.graph.get_operation("SoftmaxLoss")

    def forward(self, x):
        return self.l.forward(self.o(self.s(self.a(x))))

    def loss(self, t):
        return self.l.loss(t)


class GraphModel(tg.Graph):
    """A Graph subclass with forward and loss."""

    def __init__(self):
        super().__init__("sub", seed=0)
        self.aff = self.get_operation("Affine", [3, 2])
        self.sq = self.get_operation("SquareLoss")

    def forward(self, x):
        return self.sq.forward(self.aff(x))

    def loss(self, t):
        return self.sq.loss(t)


def test_numerical_gradient_check_on_a_graph_subclass(rng, capsys):
    report = tg.numerical_gradient_check(
        GraphModel(), tg.Variable(rng.random((2, 3))), tg.Variable(np.zeros((2, 2))), verbose=False
    )
    assert report and len(report) == 2
    assert capsys.readouterr().out == ""


def test_numerical_gradient_check_catches_a_planted_sign_error_in_fast_mode(rng, capsys, monkeypatch):
    model = Model()
    x, t = tg.Variable(rng.random((1, 64))), tg.Variable(np.array([3]))
    from tapegrad.plugins.layers import Affine

    original = Affine.backward

    def planted(self, ctx, grad):
        out = original(self, ctx, grad)
        if self.name == "affine_1":
            self.b.grad *= -1.0  # the sign error
        return out

    monkeypatch.setattr(Affine, "backward", planted)
    report = tg.numerical_gradient_check(model, x, t, mode="fast")
    out = capsys.readouterr().out
    assert "affine_1.b NOT MATCH !" in out and "affine_0.W match" in out
    assert not report and [e.name for e in report.failures] == ["affine_1.b"]
    assert model.graph.forward_ops == []


class OneInfiniteGradient(tg.Operation):
    """The identity, whose backward puts an infinity in one element."""

    def forward(self, ctx, x):
        return x * 1.0

    def backward(self, ctx, grad):
        g = grad.copy()
        g.flat[2] = np.inf
        return g


class NonFiniteForward(tg.Operation):
    """x**3 except one element, which is NaN: central differences there are NaN."""

    def forward(self, ctx, x):
        ctx.save(x)
        out = x**3
        out.flat[1] = np.nan
        return out

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        return grad * 3 * x**2


@pytest.mark.parametrize("mode", ["full", "fast", "auto"])
def test_a_non_finite_analytic_gradient_fails_naming_the_element(graph, rng, mode):
    op = graph.get_operation(OneInfiniteGradient)
    report = tg.gradcheck(op, [rng.standard_normal((2, 3))], mode=mode)
    assert not report
    entry = report["input 0"]
    assert not entry.passed and entry.worst_index == (0, 2) and entry.analytic == np.inf
    assert "[0, 2]" in entry.describe() and "inf" in entry.describe()


def test_a_non_finite_numeric_gradient_fails_too(graph, rng):
    with np.errstate(invalid="ignore"):
        report = tg.gradcheck(graph.get_operation(NonFiniteForward), [rng.standard_normal((2, 3))], mode="full")
    entry = report["input 0"]  # (the NaN output reaches the projected scalar: every numeric value is NaN)
    assert not report and not entry.passed and np.isnan(entry.numeric) and "nan" in entry.describe()


class TwiceTooBigAtScale(tg.Operation):
    """x * 1e200 with a backward twice the truth: its gradients lie near the float range."""

    def forward(self, ctx, x):
        return x * 1e200

    def backward(self, ctx, grad):
        return grad * 2e200


@pytest.mark.parametrize("mode, shape", [("fast", (4, 4)), ("auto", (600,)), ("full", (3,))])
def test_a_wrong_gradient_near_the_float_range_fails_in_every_mode(graph, mode, shape):
    report = tg.gradcheck(graph.get_operation(TwiceTooBigAtScale), [np.ones(shape)], mode=mode)
    assert not report and not report["input 0"].passed
    assert tg.gradcheck(graph.get_operation("Exp"), [np.full(shape, 400.0)], mode=mode)  # right ones pass


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"h": 0}, tg.ArgumentError, "h must be above 0"),
        ({"h": "a"}, tg.InputTypeError, "h must be a number"),
        ({"atol": np.inf}, tg.ArgumentError, "atol must be at least 0"),
        ({"rtol": -1.0}, tg.ArgumentError, "rtol must be at least 0"),
        ({"seed": -1}, tg.ArgumentError, "seed must be at least 0"),
        ({"seed": 1.5}, tg.InputTypeError, "seed must be a whole number"),
    ],
)
def test_gradcheck_arguments_are_checked_naming_them(graph, kwargs, error, words):
    with pytest.raises(error, match=f"gradcheck: {words}"):
        tg.gradcheck(graph.get_operation("Tanh"), [np.ones(3)], **kwargs)
