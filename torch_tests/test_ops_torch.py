"""Issue 20's ops, losses and LSTM against PyTorch: forward values and every gradient, float64.

Not collected by the normal suite (``pytest torch_tests`` with PyTorch installed)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tapegrad as tg

RTOL, ATOL = 1e-12, 1e-14


def close(a, b, rtol=RTOL, atol=ATOL):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else b
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)


def leaf(array):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


# -- Index, Stack, Unstack -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "index",
    [
        2, -1, (slice(None), 2), (slice(1, None, 2), slice(None, 2)), (Ellipsis, 0), (None, 1), (1, 2, 3),
        (0, None, slice(1, 3), Ellipsis),
    ],
    ids=repr,
)
def test_index_equals_torch_indexing(index):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5))
    g = tg.Graph()
    v = tg.Variable(x)
    out = g.get_operation("Index", [index])(v)
    seed = rng.standard_normal(out.shape)
    g.backward(grads={out: seed})
    t = leaf(x)
    expected = t[index]
    (expected * torch.tensor(seed)).sum().backward()
    assert close(out.value, expected) and close(v.grad, t.grad)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_stack_equals_torch_stack(axis):
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((2, 3)) for _ in range(4)]
    g = tg.Graph()
    variables = [tg.Variable(p) for p in parts]
    out = g.get_operation("Stack", axis=axis)(*variables)
    seed = rng.standard_normal(out.shape)
    g.backward(grads={out: seed})
    tensors = [leaf(p) for p in parts]
    expected = torch.stack(tensors, dim=axis)
    (expected * torch.tensor(seed)).sum().backward()
    assert close(out.value, expected)
    assert all(close(v.grad, t.grad) for v, t in zip(variables, tensors))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_unstack_equals_torch_unbind_unused_outputs_included(axis):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 2))
    g = tg.Graph()
    v = tg.Variable(x)
    outs = g.get_operation("Unstack", axis=axis)(v)
    seeds = {o: rng.standard_normal(o.shape) for o in outs[::2]}  # every other output unused
    g.backward(grads=seeds)
    t = leaf(x)
    expected = torch.unbind(t, dim=axis)
    sum((e * torch.tensor(seeds[o])).sum() for e, o in zip(expected[::2], outs[::2])).backward()
    assert len(outs) == len(expected) and all(close(o.value, e) for o, e in zip(outs, expected))
    assert close(v.grad, t.grad)


# -- SoftmaxLoss ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, ignore_index",
    [((8, 5), None), ((8, 5), -100), ((8, 5), 2), ((3, 6, 5), None), ((3, 6, 5), -1), ((2, 3, 4, 5), 0), ((5,), None)],
)
def test_softmax_loss_equals_cross_entropy_with_the_classes_moved_last(shape, ignore_index):
    rng = np.random.default_rng(3)
    z = rng.standard_normal(shape) * 3
    labels = rng.integers(0, shape[-1], shape[:-1])
    if ignore_index is not None and labels.ndim:
        labels[rng.random(labels.shape) < 0.3] = ignore_index
        labels.flat[0] = 1
    g = tg.Graph()
    op = g.get_operation("SoftmaxLoss", ignore_index=ignore_index)
    v = tg.Variable(z)
    op(v)
    value = op.loss(labels)
    g.backward()
    t = leaf(z)
    moved = t if t.ndim <= 2 else t.movedim(-1, 1)  # torch wants (N, C, ...)
    kwargs = {} if ignore_index is None else {"ignore_index": ignore_index}
    expected = F.cross_entropy(moved, torch.tensor(labels), **kwargs)
    expected.backward()
    assert value == pytest.approx(expected.item(), rel=RTOL)
    assert close(v.grad, t.grad)


def test_every_position_ignored_gives_zero_where_torch_gives_nan():
    z, labels = np.random.default_rng(4).standard_normal((2, 3, 4)), np.full((2, 3), -1)
    g = tg.Graph()
    op = g.get_operation("SoftmaxLoss", ignore_index=-1)
    v = tg.Variable(z)
    op(v)
    assert op.loss(labels) == 0.0
    g.backward()
    t = leaf(z)
    expected = F.cross_entropy(t.movedim(-1, 1), torch.tensor(labels), ignore_index=-1)
    expected.backward()
    assert torch.isnan(expected) and not v.grad.any() and not t.grad.any()


# -- CTCLoss -------------------------------------------------------------------------------------
def torch_ctc(logits, targets, input_lengths, blank, reduction, zero_infinity):
    t = leaf(logits)
    log_probs = F.log_softmax(t, dim=2).transpose(0, 1)  # (T, N, C)
    target_lengths = (targets >= 0).sum(axis=1)
    # (torch reads only the first target_lengths)
    padded = np.where(targets >= 0, targets, (blank + 1) % logits.shape[2])
    value = F.ctc_loss(
        log_probs, torch.tensor(padded), torch.tensor(input_lengths), torch.tensor(target_lengths),
        blank=blank, reduction=reduction, zero_infinity=zero_infinity,
    )
    value.backward()
    return value.item(), t.grad.numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "targets, input_lengths, blank, zero_infinity",
    [
        ([[1, 2, 3], [2, 2, -1], [4, -1, -1]], None, 0, False),
        ([[1, 2, 3], [2, 2, -1], [4, -1, -1]], [12, 7, 3], 0, False),
        ([[1, 2, 3], [-1, -1, -1], [3, 3, 3]], [9, 0, 5], 0, False),
        ([[0, 1, 2], [3, 3, -1], [1, -1, -1]], [12, 10, 1], 4, False),
        ([[1, 2, 3], [2, 2, 2], [4, -1, -1]], [12, 4, 6], 0, True),  # 2, 2, 2 needs 5 steps: infinite
    ],
)
def test_ctc_loss_equals_torch_ctc_loss(targets, input_lengths, blank, zero_infinity, reduction):
    rng = np.random.default_rng(5)
    targets = np.array(targets)
    logits = rng.standard_normal((3, 12, 5))
    lengths = np.full(3, 12) if input_lengths is None else np.array(input_lengths)
    g = tg.Graph()
    op = g.get_operation("CTCLoss", blank=blank, reduction=reduction, zero_infinity=zero_infinity)
    v = tg.Variable(logits)
    op(v) if input_lengths is None else op(v, lengths)
    value = op.loss(targets)
    g.backward()
    expected, grad = torch_ctc(logits, targets, lengths, blank, reduction, zero_infinity)
    assert value == pytest.approx(expected, rel=1e-10)
    assert np.allclose(v.grad, grad, rtol=1e-9, atol=1e-12)


def test_greedy_decode_equals_collapsing_torchs_argmax():
    from tapegrad_ctc import greedy_decode

    rng = np.random.default_rng(6)
    scores, lengths = rng.standard_normal((4, 10, 3)), np.array([10, 6, 0, 3])
    best = torch.tensor(scores).argmax(dim=2)
    expected = []
    for path, length in zip(best.tolist(), lengths):
        collapsed = [c for i, c in enumerate(path[:length]) if i == 0 or c != path[i - 1]]
        expected.append([c for c in collapsed if c != 0])
    assert greedy_decode(scores, lengths) == expected


# -- LSTM and LSTMCell ---------------------------------------------------------------------------
def load_torch_weights(op, weight_ih, weight_hh, bias_ih, bias_hh):
    """As the tapegrad-rnn README says: transposed, the two biases summed."""
    op.W_ih.value[...] = weight_ih.detach().numpy().T
    op.W_hh.value[...] = weight_hh.detach().numpy().T
    op.b.value[...] = (bias_ih + bias_hh).detach().numpy()


@pytest.mark.parametrize("with_state", [False, True])
def test_lstm_equals_torch_lstm_outputs_states_and_every_gradient(with_state):
    rng = np.random.default_rng(7)
    n, steps, d, hidden = 3, 6, 4, 5
    torch.manual_seed(0)
    torch_lstm = torch.nn.LSTM(d, hidden, batch_first=True).double()
    x, h0, c0 = rng.standard_normal((n, steps, d)), rng.standard_normal((n, hidden)), rng.standard_normal((n, hidden))
    seed_out, seed_h, seed_c = (
        rng.standard_normal((n, steps, hidden)), rng.standard_normal((n, hidden)), rng.standard_normal((n, hidden))
    )

    g = tg.Graph(seed=0)
    lstm = g.get_operation("LSTM", [d, hidden], return_state=True)
    load_torch_weights(
        lstm, torch_lstm.weight_ih_l0, torch_lstm.weight_hh_l0, torch_lstm.bias_ih_l0, torch_lstm.bias_hh_l0
    )
    xv, hv, cv = tg.Variable(x), tg.Variable(h0), tg.Variable(c0)
    out, h_T, c_T = lstm(xv, hv, cv) if with_state else lstm(xv)
    g.backward(grads={out: seed_out, h_T: seed_h, c_T: seed_c})

    xt, ht, ct = leaf(x), leaf(h0), leaf(c0)
    out_t, (h_t, c_t) = torch_lstm(xt, (ht[None], ct[None])) if with_state else torch_lstm(xt)
    (
        (out_t * torch.tensor(seed_out)).sum()
        + (h_t[0] * torch.tensor(seed_h)).sum()
        + (c_t[0] * torch.tensor(seed_c)).sum()
    ).backward()

    assert close(out.value, out_t) and close(h_T.value, h_t[0]) and close(c_T.value, c_t[0])
    assert close(xv.grad, xt.grad)
    if with_state:
        assert close(hv.grad, ht.grad) and close(cv.grad, ct.grad)
    assert (
        close(lstm.W_ih.grad, torch_lstm.weight_ih_l0.grad.T) and close(lstm.W_hh.grad, torch_lstm.weight_hh_l0.grad.T)
    )
    assert close(lstm.b.grad, torch_lstm.bias_ih_l0.grad) and close(lstm.b.grad, torch_lstm.bias_hh_l0.grad)


def test_lstm_cell_equals_torch_lstm_cell():
    rng = np.random.default_rng(8)
    torch.manual_seed(1)
    torch_cell = torch.nn.LSTMCell(3, 4).double()
    x, h, c = rng.standard_normal((5, 3)), rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    seed_h, seed_c = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    g = tg.Graph()
    cell = g.get_operation("LSTMCell", [3, 4])
    load_torch_weights(cell, torch_cell.weight_ih, torch_cell.weight_hh, torch_cell.bias_ih, torch_cell.bias_hh)
    xv, hv, cv = tg.Variable(x), tg.Variable(h), tg.Variable(c)
    h_new, c_new = cell(xv, hv, cv)
    g.backward(grads={h_new: seed_h, c_new: seed_c})
    xt, ht, ct = leaf(x), leaf(h), leaf(c)
    h_t, c_t = torch_cell(xt, (ht, ct))
    ((h_t * torch.tensor(seed_h)).sum() + (c_t * torch.tensor(seed_c)).sum()).backward()
    assert close(h_new.value, h_t) and close(c_new.value, c_t)
    assert close(xv.grad, xt.grad) and close(hv.grad, ht.grad) and close(cv.grad, ct.grad)
    assert close(cell.W_ih.grad, torch_cell.weight_ih.grad.T) and close(cell.W_hh.grad, torch_cell.weight_hh.grad.T)
    assert close(cell.b.grad, torch_cell.bias_ih.grad)
