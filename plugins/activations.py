"""Activations: Sigmoid, Tanh, Relu, LeakyRelu, Softmax, LogSoftmax.
Each is stable for any finite input: no overflow warnings, finite outputs and gradients (only
LogSoftmax raises, for log-probabilities beyond the float range). NaN in gives NaN out."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import tapegrad as tg

from ._util import axes, check_axis


def _samples(rng: np.random.Generator, away_from_zero: bool = False, scalar: bool = True) -> Iterator[tg.Sample]:
    def draw(shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal(shape)
        # Kinks at 0 are avoided by the samples, not by loose tolerances.
        return np.sign(x) * (np.abs(x) + 0.1) if away_from_zero else x

    yield tg.Sample(inputs=[draw((1, 5))], name="batch1")
    yield tg.Sample(inputs=[draw((8, 5))], name="batch8")
    yield tg.Sample(inputs=[draw((2, 3, 4))], name="rank3")
    yield tg.Sample(inputs=[np.array([[-800.0, -30.0, 30.0, 800.0]])], name="large")
    if scalar:  # elementwise ops only: Softmax needs an axis
        yield tg.Sample(inputs=[draw(())], name="scalar")


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
        out = np.maximum(x, 0)  # keeps NaN
        ctx.saved = (out,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (out,) = ctx.saved
        # heaviside is 1 above 0, 0 at 0 and NaN at NaN: a NaN input gets a NaN gradient, not a plausible 0
        return grad * np.heaviside(out, 0.0)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng, away_from_zero=True)


class LeakyRelu(tg.Operation):
    """``x`` for x > 0, ``alpha * x`` otherwise, with alpha in [0, 1] (so |output| <= |input|).
    Any shape; saves the slope."""

    def __init__(self, alpha: float = 0.01) -> None:
        self.alpha = tg.check_number(self.label, "alpha", alpha, low=0.0, high=1.0)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        # np.sign is exactly 1 for x > 0 and NaN for NaN: a NaN input gets a NaN slope (and gradient)
        slope = np.where(x <= 0, self.alpha, np.sign(x))
        ctx.saved = (slope,)
        return x * slope

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (slope,) = ctx.saved
        return grad * slope

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng, away_from_zero=True)
        yield tg.Sample(kwargs={"alpha": 0.2}, inputs=[np.array([[-2.0, -0.5, 0.5, 2.0]])], name="alpha")


class Softmax(tg.Operation):
    """Softmax along ``axis`` (shifted by the max: stable for any finite logits; a row holding
    NaN or +inf gives NaN). Saves the output."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = check_axis(self.label, "axis", axis)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        (axis,) = axes(self, self.axis, x.ndim) or (0,)
        # Logits more than the float range apart shift to -inf, whose exp is the right 0;
        # inf - inf (an infinite logit) is NaN, as it should be.
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(x - x.max(axis=axis, keepdims=True))
        out = e / e.sum(axis=axis, keepdims=True)
        ctx.saved = (out, axis)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        out, axis = ctx.saved
        return out * (grad - (grad * out).sum(axis=axis, keepdims=True))

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _samples(rng, scalar=False)
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((3, 4))], name="axis0")
        yield tg.Sample(inputs=[np.array([[1000.0, 1001.0, 999.0], [-1000.0, 0.0, 1000.0]])], name="logits_1e3")


class LogSoftmax(tg.Operation):
    """``x - logsumexp(x)`` along ``axis``, stable for large logits; logits more than the float
    range apart give a log-probability beyond it: -inf with numpy's overflow warning, or
    NonFiniteError where numpy is asked to raise. Saves the output."""

    def __init__(self, axis: int = -1) -> None:
        self.axis = check_axis(self.label, "axis", axis)

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
        yield from _samples(rng, scalar=False)
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((3, 4))], name="axis0")
        yield tg.Sample(inputs=[np.array([[1000.0, 1001.0, 999.0], [-1000.0, 0.0, 1000.0]])], name="logits_1e3")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [Sigmoid, Tanh, Relu, LeakyRelu, Softmax, LogSoftmax]
