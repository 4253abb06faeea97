import pathlib
import re
import warnings

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.optim import Adam
from tapegrad.testing import parametrize_operations


@parametrize_operations(plugin="rnn")
def test_contract(operation, check):
    check(operation)


def test_ops_are_registered_through_the_entry_point():
    rows = {r.name: r for r in tg.default_registry().operations() if r.plugin == "rnn"}
    assert set(rows) == {"RNNCell", "LSTMCell", "LSTM"}
    assert rows["LSTM"].distribution == "tapegrad-rnn"


def test_rnn_cell_matches_its_formula():
    rng = np.random.default_rng(0)
    g = tg.Graph(seed=0)
    cell = g.get_operation("RNNCell", [3, 4])
    x, h = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
    out = cell(tg.Variable(x), tg.Variable(h))
    assert np.allclose(out.value, np.tanh(x @ cell.W.value + h @ cell.U.value + cell.b.value))


def test_lstm_equals_lstm_cell_unrolled_through_the_graph():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 2))
    seeds = rng.standard_normal((3, 5, 4))

    g1 = tg.Graph(seed=0)
    lstm = g1.get_operation("LSTM", [2, 4])
    xv1 = tg.Variable(x)
    out = lstm(xv1)
    g1.backward(grads={out: seeds})

    g2 = tg.Graph(seed=0)
    cell = g2.get_operation("LSTMCell", [2, 4])
    for name in ("W", "U", "b"):
        getattr(cell, name).value[...] = getattr(lstm, name).value
    xv2 = tg.Variable(x)
    h = tg.Variable(np.zeros((3, 4)))
    c = tg.Variable(np.zeros((3, 4)))
    select = g2.get_operation(TimeStep)
    hs = []
    for t in range(5):
        h, c = cell(select(xv2, t), h, c)
        hs.append(h)
    g2.backward(grads={h_t: seeds[:, t] for t, h_t in enumerate(hs)})

    assert np.allclose(out.value, np.stack([h.value for h in hs], axis=1))
    assert np.allclose(xv1.grad, xv2.grad)
    for name in ("W", "U", "b"):
        assert np.allclose(getattr(lstm, name).grad, getattr(cell, name).grad), name


class TimeStep(tg.Operation):
    """x[:, t] of a (N, T, D) sequence (a test helper op)."""

    def forward(self, ctx, x, t):
        ctx.save(x.shape, int(t))
        return x[:, int(t)].copy()

    def backward(self, ctx, grad):
        shape, t = ctx.saved
        full = np.zeros(shape, dtype=grad.dtype)
        full[:, t] = grad
        return full, None


def test_bad_shapes_name_the_op():
    g = tg.Graph()
    cell = g.get_operation("LSTMCell", [3, 2])
    with pytest.raises(tg.ShapeError, match=r"LSTMCell.*h_prev of shape \(4, 2\)"):
        cell(np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(tg.ShapeError, match=r"LSTM \(lstm_0\).*\(N, N, 3\)"):
        g.get_operation("LSTM", [3, 2])(np.ones((4, 3)))


def test_lstm_cell_learns_to_count_ones_in_a_bit_sequence():
    """Toy task generated here: the number of ones in 6 random bits (7 classes), with the
    cell applied step by step through the graph."""
    rng = np.random.default_rng(0)
    steps, hidden, classes = 6, 16, 7

    def batch(n):
        bits = rng.integers(0, 2, (n, steps))
        return bits.astype(np.float64)[:, :, None], bits.sum(axis=1)

    g = tg.Graph("counter", seed=0)
    cell = g.get_operation("LSTMCell", [1, hidden])
    head = g.get_operation("Affine", [hidden, classes])
    loss = g.get_operation("SoftmaxLoss")
    optimizer = Adam(g.parameter, lr=0.02)

    def run(x):
        h = np.zeros((len(x), hidden))
        c = np.zeros((len(x), hidden))
        for t in range(steps):
            h, c = cell(x[:, t], h, c)
        return loss.forward(head(h))

    for _ in range(400):
        x, y = batch(32)
        run(x)
        loss.loss(y)
        g.backward()
        optimizer.step()
        optimizer.zero_grad()
    g.eval()
    x, y = batch(500)
    accuracy = np.mean(run(x).value.argmax(axis=1) == y)
    assert accuracy >= 0.95, accuracy


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "LSTM"])
@pytest.mark.parametrize(
    "args, error, match",
    [
        ([3, 0], tg.ArgumentError, "hidden_size must be at least 1, got 0"),
        ([-1, 3], tg.ArgumentError, "input_size must be at least 1, got -1"),
        ([None, 3], tg.InputTypeError, "input_size must be a whole number, got NoneType"),
        ([3, "4"], tg.InputTypeError, "hidden_size must be a whole number, got str"),
        ([2.5, 3], tg.InputTypeError, "input_size must be a whole number, got float"),
        ([True, 3], tg.InputTypeError, "input_size must be a whole number, got bool"),
    ],
)
def test_sizes_are_checked_when_the_op_is_made(name, args, error, match):
    """LSTM(3, 0) used to build, and fail only in backward."""
    g = tg.Graph()
    with pytest.raises(error, match=rf"^{name} \(\w+\): {match}"):
        g.get_operation(name, args)


def _inputs(name, x):
    n = x.shape[0]
    return {"RNNCell": [x, np.zeros((n, 3))], "LSTMCell": [x, np.zeros((n, 3)), np.zeros((n, 3))], "LSTM": [x[:, None, :]]}[name]


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "LSTM"])
def test_a_product_beyond_the_float_range_raises_naming_the_op(name):
    g = tg.Graph()
    op = g.get_operation(name, [2, 3])
    op.W.value[:] = 1.0
    with pytest.raises(tg.NonFiniteError, match=rf"^{name} \(\w+\): forward went beyond the float range"):
        op(*[tg.Variable(a) for a in _inputs(name, np.full((1, 2), 1e308))])


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "LSTM"])
@pytest.mark.parametrize("value", [np.nan, np.inf, 1e-310])
def test_nan_infinity_and_tiny_inputs_stay_in_their_row_and_nan_stays_nan(name, value):
    g = tg.Graph(seed=0)
    op = g.get_operation(name, [2, 3])
    inputs = [tg.Variable(a) for a in _inputs(name, np.array([[value, 1.0], [0.5, 1.0]]))]
    with warnings.catch_warnings():
        # an infinite input is outside the finite-input promise: numpy may warn about inf * 0 in
        # its row (under a warnings filter that is an error naming the op); the rows stay apart
        warnings.simplefilter("ignore" if np.isinf(value) else "error", RuntimeWarning)
        outs = op(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    h = outs[0].value.reshape(2, -1)
    if np.isnan(value):
        assert np.isnan(h[0]).all()
    elif value < 1:
        assert np.isfinite(h[0]).all()  # 1e-310 is just small
    assert np.isfinite(h[1]).all()  # batch rows are independent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if np.isinf(value) else "error", RuntimeWarning)
        g.backward(grads={o: np.ones_like(o.value) for o in outs})
    assert np.isfinite(inputs[0].grad.reshape(2, -1)[1]).all()


def test_readme_example_runs_as_written():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md example", "exec"), namespace)
    assert namespace["h"].shape == (32, 16) and namespace["c"].shape == (32, 16)
