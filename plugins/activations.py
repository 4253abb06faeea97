"""Activations: Sigmoid, Tanh, Relu, LeakyRelu, Softmax, LogSoftmax.
Each is stable for any finite input: no overflow warnings, finite outputs and gradients."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import tapegrad as tg

from ._util import axes


def _samples(rng: np.random.Generator, away_from_zero: bool = False) -> Iterator[tg.Sample]:
    def draw(shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal(shape)
        # Kinks at 0 are avoided by the samples, not by loose tolerances.
        return np.sign(x) * (np.abs(x) + 0.1) if away_from_zero else x

    yield tg.Sample(inputs=[draw((1, 5))], name="batch1")
    yield tg.Sample(inputs=[draw((8, 5))], name="batch8")
    yield tg.Sample(inputs=[draw((2, 3, 4))], name="rank3")
    yield tg.Sample(inputs=[np.array([[-800.0, -30.0, 30.0, 800.0]])], name="large")


class Sigmoid(tg.Operation):
    """Logistic ``1 / (1 + exp(-x))`` computed as ``0.5 + 0.5 tanh(x / 2)`` (no overflow).
    Any shape; saves the output."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        out = np.tanh(x * 0.5)
        out *= 0.5
        out += 0.5
        ctx.saved = (out,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * out * (1.0 - out)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng)


class Tanh(tg.Operation):
    """Hyperbolic tangent. Any shape; saves the output."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        out = np.tanh(x)
        ctx.saved = (out,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * (1.0 - out * out)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng)


class Relu(tg.Operation):
    """``max(x, 0)``; the gradient at exactly 0 is taken as 0. Any shape; saves the output."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        out = np.maximum(x, 0)
        ctx.saved = (out,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        return grad * (out > 0)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng, away_from_zero=True)


class LeakyRelu(tg.Operation):
    """``x`` for x > 0, ``alpha * x`` otherwise. Any shape; saves the sign mask."""

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = float(alpha)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        positive = x > 0
        ctx.saved = (positive,)
        return np.where(positive, x, x * self.alpha)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (positive,) = ctx.saved
        return np.where(positive, grad, grad * self.alpha)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng, away_from_zero=True)
        yield tg.Sample(kwargs={"alpha": 0.2}, inputs=[np.array([[-2.0, -0.5, 0.5, 2.0]])], name="alpha")


class Softmax(tg.Operation):
    """Softmax along ``axis`` (shifted by the max: stable for large logits). Saves the output."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = int(axis)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        (axis,) = axes(self, self.axis, x.ndim) or (0,)
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.saved = (out, axis)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        out, axis = ctx.saved
        return out * (grad - (grad * out).sum(axis=axis, keepdims=True))

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng)
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((3, 4))], name="axis0")
        yield tg.Sample(inputs=[np.array([[1000.0, 1001.0, 999.0], [-1000.0, 0.0, 1000.0]])], name="logits_1e3")


class LogSoftmax(tg.Operation):
    """``x - logsumexp(x)`` along ``axis``, stable for large logits. Saves the output."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = int(axis)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        (axis,) = axes(self, self.axis, x.ndim) or (0,)
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.saved = (out, axis)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        out, axis = ctx.saved
        return grad - np.exp(out) * grad.sum(axis=axis, keepdims=True)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng)
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((3, 4))], name="axis0")
        yield tg.Sample(inputs=[np.array([[1000.0, 1001.0, 999.0], [-1000.0, 0.0, 1000.0]])], name="logits_1e3")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [Sigmoid, Tanh, Relu, LeakyRelu, Softmax, LogSoftmax]
