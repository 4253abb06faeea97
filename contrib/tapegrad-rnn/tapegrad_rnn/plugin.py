"""Recurrent cells and a whole-sequence LSTM. The LSTM family's gates are in PyTorch's order
(input, forget, cell, output: i, f, g, o) in the 4H columns of W_ih (D, 4H), W_hh (H, 4H) and
one bias b (4H,). Until tapegrad-rnn 0.2 they were (i, f, o, g) in parameters named W, U and b:
``convert_lstm_parameters`` (``convert.py``) converts a file saved so."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad import ShapeError


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.tanh(z * 0.5)
    out *= 0.5
    out += 0.5
    return out


def _check(op: tg.Operation, name: str, array: np.ndarray, shape: tuple[Any, ...]) -> None:
    """``shape`` may hold None for a free dimension (the batch)."""
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        wanted = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ShapeError(f"{op.label}: expected {name} of shape {wanted}, got {array.shape}")


def _sizes(op: tg.Operation, input_size: Any, hidden_size: Any) -> tuple[int, int]:
    return (
        int(tg.check_number(op.label, "input_size", input_size, low=1, integer=True)),
        int(tg.check_number(op.label, "hidden_size", hidden_size, low=1, integer=True)),
    )


def _forget_bias(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Zeros, with the forget gate's bias at 1 (keeps memory early in training)."""
    b = np.zeros(shape)
    hidden = shape[0] // 4
    b[hidden : 2 * hidden] = 1.0
    return b


class RNNCell(tg.Operation):
    """One Elman step: (x (N, D), h_prev (N, H)) -> h = tanh(x W + h_prev U + b) (N, H).
    Saves x, h_prev and h."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        self.input_size, self.hidden_size = _sizes(self, input_size, hidden_size)
        self.W = self.parameter("W", (self.input_size, self.hidden_size))
        self.U = self.parameter("U", (self.hidden_size, self.hidden_size))
        self.b = self.parameter("b", (self.hidden_size,), init="zeros")

    def forward(self, ctx: tg.Context, x: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
        _check(self, "x", x, (None, self.input_size))
        _check(self, "h_prev", h_prev, (x.shape[0], self.hidden_size))
        h = np.tanh(x @ self.W.value + h_prev @ self.U.value + self.b.value)
        ctx.save(x, h_prev, h)
        return h

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, h_prev, h = ctx.saved
        dz = grad * (1.0 - h * h)
        # every product before any accumulation: an overflow leaves the gradients as they were
        dW, dU, dx, dh_prev = x.T @ dz, h_prev.T @ dz, dz @ self.W.value.T, dz @ self.U.value.T
        self.W.add_grad(dW)
        self.U.add_grad(dU)
        self.b.add_grad(dz.sum(axis=0))
        return dx, dh_prev

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[3, 4], inputs=[rng.standard_normal((1, 3)), rng.standard_normal((1, 4))], name="batch1")
        yield tg.Sample(args=[3, 4], inputs=[rng.standard_normal((5, 3)), rng.standard_normal((5, 4))], name="batch5")


def _lstm_step(z: np.ndarray, c_prev: np.ndarray, hidden: int) -> tuple[np.ndarray, ...]:
    """Gate activations (i, f, g, o), new cell and hidden state from the pre-activations z (N, 4H)."""
    i = _sigmoid(z[:, :hidden])
    f = _sigmoid(z[:, hidden : 2 * hidden])
    g = np.tanh(z[:, 2 * hidden : 3 * hidden])
    o = _sigmoid(z[:, 3 * hidden :])
    c = f * c_prev + i * g
    tc = np.tanh(c)
    return i, f, g, o, c, tc, o * tc


def _lstm_step_backward(
    dh: np.ndarray, dc: np.ndarray, c_prev: np.ndarray, gates: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(d pre-activations (N, 4H), d c_prev) from the gradients of h and c."""
    i, f, g, o, _c, tc = gates
    dc = dc + dh * o * (1.0 - tc * tc)
    dz = np.concatenate(
        [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dc * i * (1.0 - g * g), dh * tc * o * (1.0 - o)], axis=1
    )
    return dz, dc * f


def _lstm_parameters(
    op: tg.Operation, input_size: int, hidden_size: int
) -> tuple[tg.Variable, tg.Variable, tg.Variable]:
    """The LSTM family's parameters: W_ih (D, 4H), W_hh (H, 4H) and b (4H,), gates (i, f, g, o)."""
    return (
        op.parameter("W_ih", (input_size, 4 * hidden_size)),
        op.parameter("W_hh", (hidden_size, 4 * hidden_size)),
        op.parameter("b", (4 * hidden_size,), init=_forget_bias),
    )


class LSTMCell(tg.Operation):
    """One LSTM step, gates (i, f, g, o) as in ``torch.nn.LSTMCell``.
    (x (N, D), h_prev (N, H), c_prev (N, H)) -> (h, c), both (N, H), with z = x W_ih + h_prev W_hh
    + b split into the gates (torch.nn.LSTMCell's weights load as LSTM's do; see there). Saves the
    inputs and the gate activations."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        self.input_size, self.hidden_size = _sizes(self, input_size, hidden_size)
        self.W_ih, self.W_hh, self.b = _lstm_parameters(self, self.input_size, self.hidden_size)

    def forward(
        self, ctx: tg.Context, x: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        _check(self, "x", x, (None, self.input_size))
        _check(self, "h_prev", h_prev, (x.shape[0], self.hidden_size))
        _check(self, "c_prev", c_prev, (x.shape[0], self.hidden_size))
        z = x @ self.W_ih.value + h_prev @ self.W_hh.value + self.b.value
        *gates, h = _lstm_step(z, c_prev, self.hidden_size)
        ctx.save(x, h_prev, c_prev, tuple(gates))
        return h, gates[4]

    def backward(self, ctx: tg.Context, grads: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
        x, h_prev, c_prev, gates = ctx.saved
        dh, dc = grads
        dz, dc_prev = _lstm_step_backward(dh, dc, c_prev, gates)
        # every product before any accumulation: an overflow leaves the gradients as they were
        dW_ih, dW_hh, dx, dh_prev = x.T @ dz, h_prev.T @ dz, dz @ self.W_ih.value.T, dz @ self.W_hh.value.T
        self.W_ih.add_grad(dW_ih)
        self.W_hh.add_grad(dW_hh)
        self.b.add_grad(dz.sum(axis=0))
        return dx, dh_prev, dc_prev

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        for n, name in ((1, "batch1"), (4, "batch4")):
            yield tg.Sample(
                args=[3, 2],
                inputs=[rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.standard_normal((n, 2))],
                name=name,
            )


class LSTM(tg.Operation):
    """A whole sequence in one op, as one layer of ``torch.nn.LSTM`` with ``batch_first=True``.
    x (N, T, D), and optionally the initial states h0 and c0 (N, H) (zeros when
    absent) -> the hidden states (N, T, H); with ``return_state=True``, the tuple (hidden states,
    h_T, c_T), gradients flowing from all three into x, h0, c0 and the parameters (backpropagation
    through time). Gates (i, f, g, o) in the 4H columns of W_ih (D, 4H), W_hh (H, 4H) and b (4H,);
    the forget gate's bias starts at 1. Saves x, the initial states and every step's gates.

    Truncated backpropagation through time: pass the last state's arrays (``h_T.value``,
    ``c_T.value``) as h0 and c0 of the next chunk; arrays are constants, so no gradient flows back
    into the previous chunk (and a captured step takes them as arguments).

    ``torch.nn.LSTM`` weights load transposed, the two biases summed (PyTorch keeps its weights as
    (4H, D), tapegrad's W_ih is x's right-hand factor, (D, 4H); the gate order is the same)::

        lstm.W_ih.value[...] = torch_lstm.weight_ih_l0.detach().numpy().T
        lstm.W_hh.value[...] = torch_lstm.weight_hh_l0.detach().numpy().T
        lstm.b.value[...] = (torch_lstm.bias_ih_l0 + torch_lstm.bias_hh_l0).detach().numpy()

    and the outputs then equal ``torch_lstm(x, (h0[None], c0[None]))`` with ``batch_first=True``.
    """

    def __init__(self, input_size: int, hidden_size: int, return_state: bool = False) -> None:
        self.input_size, self.hidden_size = _sizes(self, input_size, hidden_size)
        self.return_state = tg.check_flag(self.label, "return_state", return_state)
        self.W_ih, self.W_hh, self.b = _lstm_parameters(self, self.input_size, self.hidden_size)

    def forward(
        self, ctx: tg.Context, x: np.ndarray, h0: np.ndarray | None = None, c0: np.ndarray | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
        _check(self, "x", x, (None, None, self.input_size))
        n, steps, _ = x.shape
        hidden = self.hidden_size
        W_hh = self.W_hh.value
        # the input projection of every step at once; the recurrence stays sequential
        zx = (x.reshape(-1, self.input_size) @ self.W_ih.value + self.b.value).reshape(n, steps, 4 * hidden)
        h = self._state(zx, "h0", h0, n)
        c = self._state(zx, "c0", c0, n)
        out = np.empty((n, steps, hidden), dtype=zx.dtype)
        history = []
        for t in range(steps):
            c_prev, h_prev = c, h
            *gates, h = _lstm_step(zx[:, t] + h_prev @ W_hh, c_prev, hidden)
            c = gates[4]
            history.append((h_prev, c_prev, tuple(gates)))
            out[:, t] = h
        ctx.save(x, history, 1 + (h0 is not None) + (c0 is not None))
        if not self.return_state:
            return out
        return (out, h, c) if steps else (out, h.copy(), c.copy())  # (no steps: the states are the inputs')

    def _state(self, zx: np.ndarray, name: str, given: np.ndarray | None, n: int) -> np.ndarray:
        if given is None:
            return np.zeros((n, self.hidden_size), dtype=zx.dtype)
        _check(self, name, given, (n, self.hidden_size))
        return given

    def backward(self, ctx: tg.Context, grads: Any) -> Any:  # (an array, or a tuple of three with return_state)
        x, history, inputs = ctx.saved
        n, steps, _ = x.shape
        hidden = self.hidden_size
        W_hh = self.W_hh.value
        if self.return_state:
            grad, dh_next, dc_next = grads  # (zeros for an output that received no gradient)
        else:
            grad = grads
            dh_next = np.zeros((n, hidden), dtype=grad.dtype)
            dc_next = np.zeros((n, hidden), dtype=grad.dtype)
        dzs = np.empty((n, steps, 4 * hidden), dtype=grad.dtype)
        dW_hh = np.zeros_like(W_hh)
        for t in reversed(range(steps)):
            h_prev, c_prev, gates = history[t]
            dz, dc_next = _lstm_step_backward(grad[:, t] + dh_next, dc_next, c_prev, gates)
            dzs[:, t] = dz
            dW_hh += h_prev.T @ dz
            dh_next = dz @ W_hh.T
        flat = dzs.reshape(-1, 4 * hidden)
        dW_ih = x.reshape(-1, self.input_size).T @ flat
        # a constant x (data) needs no gradient; the parameters' are computed whatever the inputs need
        dx = (flat @ self.W_ih.value.T).reshape(x.shape) if ctx.needs_input_grad[0] else None
        self.W_ih.add_grad(dW_ih)
        self.W_hh.add_grad(dW_hh)
        self.b.add_grad(flat.sum(axis=0))
        if inputs == 1:
            return dx
        return (dx, dh_next, dc_next)[:inputs]

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[3, 2], inputs=[rng.standard_normal((1, 4, 3))], name="batch1")
        yield tg.Sample(args=[2, 3], inputs=[rng.standard_normal((3, 5, 2))], name="batch3")
        yield tg.Sample(args=[2, 3], inputs=[rng.standard_normal((3, 4, 2)), rng.standard_normal((3, 3))], name="h0")
        yield tg.Sample(
            args=[2, 3], kwargs={"return_state": True},
            inputs=[rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))],
            name="state",
        )
        yield tg.Sample(
            args=[3, 2], kwargs={"return_state": True}, inputs=[rng.standard_normal((2, 3, 3))], name="state_from_zeros"
        )


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [RNNCell, LSTMCell, LSTM]
