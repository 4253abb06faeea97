"""Recurrent cells and a whole-sequence LSTM. Gates are ordered (input, forget, output, cell)
in the 4H columns of W (D, 4H), U (H, 4H) and b (4H,)."""

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
    """Gate activations, new cell and hidden state from the pre-activations z (N, 4H)."""
    i = _sigmoid(z[:, :hidden])
    f = _sigmoid(z[:, hidden : 2 * hidden])
    o = _sigmoid(z[:, 2 * hidden : 3 * hidden])
    g = np.tanh(z[:, 3 * hidden :])
    c = f * c_prev + i * g
    tc = np.tanh(c)
    return i, f, o, g, c, tc, o * tc


def _lstm_step_backward(
    dh: np.ndarray, dc: np.ndarray, c_prev: np.ndarray, gates: tuple[np.ndarray, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(d pre-activations (N, 4H), d c_prev) from the gradients of h and c."""
    i, f, o, g, _c, tc = gates
    dc = dc + dh * o * (1.0 - tc * tc)
    dz = np.concatenate(
        [dc * g * i * (1.0 - i), dc * c_prev * f * (1.0 - f), dh * tc * o * (1.0 - o), dc * i * (1.0 - g * g)], axis=1
    )
    return dz, dc * f


class LSTMCell(tg.Operation):
    """One LSTM step: (x (N, D), h_prev (N, H), c_prev (N, H)) -> (h, c), both (N, H).
    Saves the inputs and the gate activations."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        self.input_size, self.hidden_size = _sizes(self, input_size, hidden_size)
        self.W = self.parameter("W", (self.input_size, 4 * self.hidden_size))
        self.U = self.parameter("U", (self.hidden_size, 4 * self.hidden_size))
        self.b = self.parameter("b", (4 * self.hidden_size,), init=_forget_bias)

    def forward(self, ctx: tg.Context, x: np.ndarray, h_prev: np.ndarray, c_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _check(self, "x", x, (None, self.input_size))
        _check(self, "h_prev", h_prev, (x.shape[0], self.hidden_size))
        _check(self, "c_prev", c_prev, (x.shape[0], self.hidden_size))
        z = x @ self.W.value + h_prev @ self.U.value + self.b.value
        *gates, h = _lstm_step(z, c_prev, self.hidden_size)
        ctx.save(x, h_prev, c_prev, tuple(gates))
        return h, gates[4]

    def backward(self, ctx: tg.Context, grads: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
        x, h_prev, c_prev, gates = ctx.saved
        dh, dc = grads
        dz, dc_prev = _lstm_step_backward(dh, dc, c_prev, gates)
        # every product before any accumulation: an overflow leaves the gradients as they were
        dW, dU, dx, dh_prev = x.T @ dz, h_prev.T @ dz, dz @ self.W.value.T, dz @ self.U.value.T
        self.W.add_grad(dW)
        self.U.add_grad(dU)
        self.b.add_grad(dz.sum(axis=0))
        return dx, dh_prev, dc_prev

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        for n, name in ((1, "batch1"), (4, "batch4")):
            yield tg.Sample(
                args=[3, 2], inputs=[rng.standard_normal((n, 3)), rng.standard_normal((n, 2)), rng.standard_normal((n, 2))], name=name
            )


class LSTM(tg.Operation):
    """A whole sequence in one op: x (N, T, D) -> hidden states (N, T, H), starting from zero
    state; backpropagation through time in backward. Saves every step's gates."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        self.input_size, self.hidden_size = _sizes(self, input_size, hidden_size)
        self.W = self.parameter("W", (self.input_size, 4 * self.hidden_size))
        self.U = self.parameter("U", (self.hidden_size, 4 * self.hidden_size))
        self.b = self.parameter("b", (4 * self.hidden_size,), init=_forget_bias)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        _check(self, "x", x, (None, None, self.input_size))
        n, steps, _ = x.shape
        hidden = self.hidden_size
        U = self.U.value
        # the input projection of every step at once; the recurrence stays sequential
        zx = (x.reshape(-1, self.input_size) @ self.W.value + self.b.value).reshape(n, steps, 4 * hidden)
        h = np.zeros((n, hidden), dtype=zx.dtype)
        c = np.zeros((n, hidden), dtype=zx.dtype)
        out = np.empty((n, steps, hidden), dtype=zx.dtype)
        history = []
        for t in range(steps):
            c_prev, h_prev = c, h
            *gates, h = _lstm_step(zx[:, t] + h_prev @ U, c_prev, hidden)
            c = gates[4]
            history.append((h_prev, c_prev, tuple(gates)))
            out[:, t] = h
        ctx.save(x, history)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        x, history = ctx.saved
        n, steps, _ = x.shape
        hidden = self.hidden_size
        U = self.U.value
        dzs = np.empty((n, steps, 4 * hidden), dtype=grad.dtype)
        dU = np.zeros_like(U)
        dh_next = np.zeros((n, hidden), dtype=grad.dtype)
        dc_next = np.zeros((n, hidden), dtype=grad.dtype)
        for t in reversed(range(steps)):
            h_prev, c_prev, gates = history[t]
            dz, dc_next = _lstm_step_backward(grad[:, t] + dh_next, dc_next, c_prev, gates)
            dzs[:, t] = dz
            dU += h_prev.T @ dz
            dh_next = dz @ U.T
        flat = dzs.reshape(-1, 4 * hidden)
        dW, dx = x.reshape(-1, self.input_size).T @ flat, (flat @ self.W.value.T).reshape(x.shape)
        self.W.add_grad(dW)
        self.U.add_grad(dU)
        self.b.add_grad(flat.sum(axis=0))
        return dx

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[3, 2], inputs=[rng.standard_normal((1, 4, 3))], name="batch1")
        yield tg.Sample(args=[2, 3], inputs=[rng.standard_normal((3, 5, 2))], name="batch3")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [RNNCell, LSTMCell, LSTM]
