import pathlib
import re
import warnings

import numpy as np
import pytest
from tapegrad_rnn import convert_lstm_parameters

import tapegrad as tg
from tapegrad.optim import Adam
from tapegrad.parameter import Parameter
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


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_lstm_cell_gates_are_in_pytorchs_order_i_f_g_o():
    rng = np.random.default_rng(0)
    g = tg.Graph(seed=0)
    cell = g.get_operation("LSTMCell", [3, 2])
    x, h, c = rng.standard_normal((4, 3)), rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    z = x @ cell.W_ih.value + h @ cell.W_hh.value + cell.b.value
    i, f, gate, o = sigmoid(z[:, :2]), sigmoid(z[:, 2:4]), np.tanh(z[:, 4:6]), sigmoid(z[:, 6:])
    h_new, c_new = cell(x, h, c)
    assert np.allclose(c_new.value, f * c + i * gate, rtol=1e-14)
    assert np.allclose(h_new.value, o * np.tanh(f * c + i * gate), rtol=1e-14)
    assert np.array_equal(cell.b.value, [0, 0, 1, 1, 0, 0, 0, 0])  # the forget gate's bias starts at 1
    assert set(cell.parameters()) == {"W_ih", "W_hh", "b"}


def unrolled(cell, x, h, c):
    """LSTMCell applied step by step, one Unstack splitting the sequence."""
    hs = []
    for x_t in cell.graph.get_operation("Unstack", axis=1)(x):
        h, c = cell(x_t, h, c)
        hs.append(h)
    return hs, h, c


@pytest.mark.parametrize("initial", ["zeros", "given"])
def test_lstm_equals_lstm_cell_unrolled_through_the_graph_states_and_gradients_included(initial):
    rng = np.random.default_rng(1)
    x, h0, c0 = rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    if initial == "zeros":
        h0, c0 = np.zeros((3, 4)), np.zeros((3, 4))
    seeds, seed_h, seed_c = rng.standard_normal((3, 5, 4)), rng.standard_normal((3, 4)), rng.standard_normal((3, 4))

    g1 = tg.Graph(seed=0)
    lstm = g1.get_operation("LSTM", [2, 4], return_state=True)
    xv1, hv1, cv1 = tg.Variable(x), tg.Variable(h0), tg.Variable(c0)
    out, h_T, c_T = lstm(xv1) if initial == "zeros" else lstm(xv1, hv1, cv1)
    g1.backward(grads={out: seeds, h_T: seed_h, c_T: seed_c})

    g2 = tg.Graph(seed=0)
    cell = g2.get_operation("LSTMCell", [2, 4])
    for name in ("W_ih", "W_hh", "b"):
        getattr(cell, name).value[...] = getattr(lstm, name).value
    xv2, hv2, cv2 = tg.Variable(x), tg.Variable(h0), tg.Variable(c0)
    hs, h_last, c_last = unrolled(cell, xv2, hv2, cv2)
    g2.backward(
        grads={**{h_t: seeds[:, t] for t, h_t in enumerate(hs[:-1])}, h_last: seeds[:, -1] + seed_h, c_last: seed_c}
    )

    assert np.allclose(out.value, np.stack([h.value for h in hs], axis=1), rtol=1e-13)
    assert np.array_equal(h_T.value, out.value[:, -1]) and np.allclose(c_T.value, c_last.value, rtol=1e-13)
    assert np.allclose(xv1.grad, xv2.grad, rtol=1e-12)
    if initial == "given":
        assert np.allclose(hv1.grad, hv2.grad, rtol=1e-12) and np.allclose(cv1.grad, cv2.grad, rtol=1e-12)
    for name in ("W_ih", "W_hh", "b"):
        assert np.allclose(getattr(lstm, name).grad, getattr(cell, name).grad, rtol=1e-12), name


@pytest.mark.parametrize("return_state", [False, True])
@pytest.mark.parametrize("inputs", [1, 2, 3])
def test_lstm_gradients_match_central_differences_with_and_without_states(return_state, inputs):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 2)), rng.standard_normal((2, 2))][:inputs]
    op = tg.Graph(seed=0).get_operation("LSTM", [3, 2], return_state=return_state)
    report = tg.gradcheck(op, arrays)
    assert report, str(report)
    assert len([e for e in report.entries if e.kind == "input"]) == inputs


def test_parameters_get_their_gradient_when_the_input_is_plain_data():
    """needs_input_grad False for x (an array) only spares dx, never the parameters' gradients."""
    rng = np.random.default_rng(3)
    x, seeds = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 4))
    grads = []
    for wrap in (tg.Variable, np.asarray):
        g = tg.Graph(seed=0)
        lstm = g.get_operation("LSTM", [2, 4])
        out = lstm(wrap(x))
        g.backward(grads={out: seeds})
        grads.append({name: p.grad.copy() for name, p in lstm.parameters().items()})
    for name in ("W_ih", "W_hh", "b"):
        assert grads[1][name].any() and np.array_equal(grads[0][name], grads[1][name]), name


def test_truncated_backpropagation_through_time_passes_the_last_states_arrays_on():
    """Two chunks, the second starting from the first's final state as arrays: the same hidden
    states as one pass over the whole sequence, and no gradient flows back into the first chunk;
    a captured step takes the states as arguments and replays them."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 3))
    g = tg.Graph(seed=0)
    lstm = g.get_operation("LSTM", [3, 4], return_state=True)
    whole = lstm(x)[0].value
    g.clear()

    def chunk(x_chunk, h, c, seed):
        out, h_T, c_T = lstm(x_chunk, h, c)
        g.backward(grads={out: seed})
        return out, h_T, c_T

    step = g.capture(chunk)
    h, c = np.zeros((2, 4)), np.zeros((2, 4))
    outs = []
    for begin in range(0, 6, 2):
        out, h_T, c_T = step(x[:, begin : begin + 2], h, c, np.ones((2, 2, 4)))
        outs.append(out.value)
        h, c = h_T.value, c_T.value  # arrays: constants of the next chunk
    assert np.allclose(np.concatenate(outs, axis=1), whole, rtol=1e-13)
    assert len(step.records) == 1


def test_lstm_from_zero_steps_returns_its_initial_state():
    g = tg.Graph(seed=0)
    lstm = g.get_operation("LSTM", [3, 2], return_state=True)
    h0, c0 = tg.Variable(np.ones((2, 2))), tg.Variable(np.full((2, 2), 2.0))
    out, h_T, c_T = lstm(np.zeros((2, 0, 3)), h0, c0)
    assert out.shape == (2, 0, 2) and np.array_equal(h_T.value, h0.value) and np.array_equal(c_T.value, c0.value)
    g.backward(grads={h_T: np.full((2, 2), 3.0), c_T: np.full((2, 2), 4.0)})
    assert np.array_equal(h0.grad, np.full((2, 2), 3.0)) and np.array_equal(c0.grad, np.full((2, 2), 4.0))


def old_layout(op):
    """``op``'s parameters as tapegrad-rnn 0.2 saved them: W, U, b with the gates (i, f, o, g)."""
    hidden = op.hidden_size

    def old(a):
        i, f, g, o = (a[..., k * hidden : (k + 1) * hidden] for k in range(4))
        return np.concatenate([i, f, o, g], axis=-1)

    return {f"{op.name}.W": old(op.W_ih.value), f"{op.name}.U": old(op.W_hh.value), f"{op.name}.b": old(op.b.value)}


def model(seed):
    g = tg.Graph("seq", seed=seed)
    return (
        g,
        g.get_operation("RNNCell", [3, 5]),
        g.get_operation("LSTMCell", [3, 4]),
        g.get_operation("LSTM", [3, 6]),
        g.get_operation("Affine", [6, 2]),
    )


def test_a_file_of_the_old_gate_layout_is_refused_then_converted(tmp_path):
    g, rnn, cell, lstm, head = model(seed=0)
    old = Parameter()
    for name, value in g.parameter.state_dict().items():
        if not name.startswith(("lstm_cell_0.", "lstm_0.")):
            old.variable_dict[name] = tg.Variable(value, name=name)
    for op in (cell, lstm):
        for name, value in old_layout(op).items():
            old.variable_dict[name] = tg.Variable(value, name=name)
    old_file = old.save(tmp_path / "old.npz")

    fresh, *_ = model(seed=1)
    before = fresh.parameter.state_dict()
    with pytest.raises(
        tg.ParameterLoadError,
        match=(
            r"missing: lstm_0\.W_hh, lstm_0\.W_ih, lstm_cell_0\.W_hh, lstm_cell_0\.W_ih; "
            r"unexpected: lstm_0\.U, lstm_0\.W, lstm_cell_0\.U, lstm_cell_0\.W"
        ),
    ):
        fresh.parameter.load(old_file)
    assert all(np.array_equal(v, before[k]) for k, v in fresh.parameter.state_dict().items())  # nothing was loaded

    # not the RNNCell
    assert sorted(convert_lstm_parameters(old_file, tmp_path / "new.npz")) == ["lstm_0", "lstm_cell_0"]
    fresh.parameter.load(tmp_path / "new.npz")
    for name, value in g.parameter.state_dict().items():
        assert np.array_equal(fresh.parameter[name].value, value), name
    with pytest.raises(tg.ParameterLoadError, match="holds no LSTM or LSTMCell parameters in the old layout"):
        convert_lstm_parameters(tmp_path / "new.npz", tmp_path / "again.npz")


def test_bad_shapes_name_the_op():
    g = tg.Graph()
    cell = g.get_operation("LSTMCell", [3, 2])
    with pytest.raises(tg.ShapeError, match=r"LSTMCell.*h_prev of shape \(4, 2\)"):
        cell(np.ones((4, 3)), np.ones((4, 3)), np.ones((4, 2)))
    with pytest.raises(tg.ShapeError, match=r"LSTM \(lstm_0\).*\(N, N, 3\)"):
        g.get_operation("LSTM", [3, 2])(np.ones((4, 3)))


@pytest.mark.parametrize(
    "inputs, match",
    [
        ([np.ones((4, 5, 3)), np.ones((4, 3))], r"expected h0 of shape \(4, 2\), got \(4, 3\)"),
        ([np.ones((4, 5, 3)), np.ones((4, 2)), np.ones((2, 2))], r"expected c0 of shape \(4, 2\), got \(2, 2\)"),
        ([np.ones((4, 5, 3)), np.ones(2)], r"expected h0 of shape \(4, 2\), got \(2,\)"),
    ],
)
def test_initial_states_of_the_wrong_shape_name_the_op_and_the_state(inputs, match):
    lstm = tg.Graph().get_operation("LSTM", [3, 2])
    with pytest.raises(tg.ShapeError, match=rf"^LSTM \(lstm_0\): {match}"):
        lstm(*inputs)
    with pytest.raises(tg.InputTypeError, match=r"^LSTM \(lstm_0\): expected 1 to 3 input\(s\), got 4"):
        lstm(np.ones((4, 5, 3)), *[np.ones((4, 2))] * 3)


@pytest.mark.parametrize("value", [1, "yes", None])
def test_return_state_must_be_a_bool(value):
    with pytest.raises(tg.InputTypeError, match=r"^LSTM \(lstm_0\): return_state must be True or False"):
        tg.Graph().get_operation("LSTM", [3, 2], return_state=value)


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
    return {
        "RNNCell": [x, np.zeros((n, 3))],
        "LSTMCell": [x, np.zeros((n, 3)), np.zeros((n, 3))],
        "LSTM": [x[:, None, :]],
    }[name]


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "LSTM"])
def test_a_product_beyond_the_float_range_raises_naming_the_op(name):
    g = tg.Graph()
    op = g.get_operation(name, [2, 3])
    (op.W if name == "RNNCell" else op.W_ih).value[:] = 1.0
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
    # (the first: the ops; test_*task*.py run the models')
    block = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, "README.md example", "exec"), namespace)
    assert namespace["h"].shape == (32, 16) and namespace["c"].shape == (32, 16)
    outputs, more = namespace["outputs"], namespace["more"]
    assert outputs.shape == (32, 6, 16) and more.shape == (32, 6, 16) and namespace["c_T"].shape == (32, 16)
    assert not np.allclose(more.value[:, 0], outputs.value[:, 0])  # the second call started from the first's state
