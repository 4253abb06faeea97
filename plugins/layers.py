"""Layers with trainable parameters or graph randomness: Affine, Embedding, Dropout, LayerNorm."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

import tapegrad as tg
from tapegrad import NonFiniteError, ShapeError

from ._util import check_size, integer_labels, need_rank


class Affine(tg.Operation):
    """``x @ W + b``: (..., input_size) -> (..., output_size).
    W is (input_size, output_size), standard normal / sqrt(input_size); b is (output_size,),
    zeros (absent with bias=False). An output or gradient beyond the float range raises.
    Saves the input."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True) -> None:
        self.input_size = check_size(self.label, "input_size", input_size)
        self.output_size = check_size(self.label, "output_size", output_size)
        bias = tg.check_flag(self.label, "bias", bias)
        self.W = self.parameter("W", (self.input_size, self.output_size))
        self.b = self.parameter("b", (self.output_size,), init="zeros") if bias else None

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        try:  # matmul checks the shapes; the message below says what Affine expected
            out = x @ self.W.value
        except ValueError:
            raise ShapeError(
                f"{self.label}: expected input of shape (batch, {self.input_size}), got {x.shape}"
            ) from None
        if self.b is not None:
            out += self.b.value
        ctx.saved = (x,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray | None:
        (x,) = ctx.saved
        flat = grad if x.ndim == 2 else grad.reshape(-1, self.output_size)
        dW = (x if x.ndim == 2 else x.reshape(-1, self.input_size)).T @ flat
        db = flat.sum(axis=0) if self.b is not None else None
        # a constant input (data) needs no gradient; computed before any parameter is touched,
        # so an overflow leaves the gradients as they were
        dx = grad @ self.W.value.T if ctx.needs_input_grad[0] else None
        self.W.add_grad(dW)
        if self.b is not None:
            self.b.add_grad(db)
        return dx

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[4, 3], inputs=[rng.standard_normal((1, 4))], name="batch1")
        yield tg.Sample(args=[4, 3], inputs=[rng.standard_normal((6, 4))], name="batch6")
        yield tg.Sample(args=[4, 3], kwargs={"bias": False}, inputs=[rng.standard_normal((6, 4))], name="no_bias")
        yield tg.Sample(args=[4, 2], inputs=[rng.standard_normal((2, 3, 4))], name="sequence")


class Embedding(tg.Operation):
    """Rows of W (vocab_size, embed_size) for integer ids of any shape: (...) -> (..., embed_size).
    Only the rows used receive gradient. Saves the ids."""

    integer_inputs = (0,)

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        self.vocab_size = check_size(self.label, "vocab_size", vocab_size)
        self.embed_size = check_size(self.label, "embed_size", embed_size)
        self.W = self.parameter(
            "W", (self.vocab_size, self.embed_size), init=lambda shape, rng: rng.standard_normal(shape)
        )

    def forward(self, ctx: tg.Context, ids: np.ndarray) -> np.ndarray:
        ids = integer_labels(self, ids, self.vocab_size, what="id")
        ctx.saved = (ids,)
        return self.W.value[ids]

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> None:
        (ids,) = ctx.saved
        dW = np.zeros_like(self.W.value)
        np.add.at(dW, ids.ravel(), grad.reshape(-1, self.embed_size))
        self.W.add_grad(dW)
        return None

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[7, 3], inputs=[np.array([2])], name="one_id")
        yield tg.Sample(args=[7, 3], inputs=[np.array([[0, 6, 2], [2, 2, 5]])], name="repeated_ids")


class Dropout(tg.Operation):
    """Zeroes each element with probability p in [0, 1) at train time and scales the rest by
    1/(1-p) (a result beyond the float range: NonFiniteError); the identity in eval mode. Draws
    from the graph's seeded generator. Saves the mask."""

    differs_in_eval = True

    def __init__(self, p: float = 0.5) -> None:
        self.p = tg.check_number(self.label, "p", p, low=0.0, high=1.0, high_inclusive=False)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        if not ctx.training or self.p == 0.0:
            ctx.saved = (None,)
            return x.copy()
        with np.errstate(over="ignore"):
            scale = np.asarray(1.0 / (1.0 - self.p), dtype=x.dtype)
        if math.isinf(scale):  # (float16 and p near 1: the kept elements would become inf, the others NaN)
            raise NonFiniteError(
                f"{self.label}: p={self.p} scales the kept elements by {1.0 / (1.0 - self.p):g}, "
                f"beyond the range of {x.dtype}"
            )
        keep = ctx.rng.random(x.shape) >= self.p
        mask = keep * scale
        ctx.saved = (mask,)
        return x * mask

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (mask,) = ctx.saved
        return grad if mask is None else grad * mask

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[0.5], inputs=[rng.standard_normal((1, 6))], name="batch1")
        yield tg.Sample(args=[0.2], inputs=[rng.standard_normal((8, 5))], name="batch8")
        yield tg.Sample(args=[0.0], inputs=[rng.standard_normal((3, 2))], name="p0")
        yield tg.Sample(args=[0.5], inputs=[rng.standard_normal(())], name="scalar")


class LayerNorm(tg.Operation):
    """Normalise over the last axis, then scale by gamma and shift by beta (both (size,)).
    (..., size) -> (..., size); finite for any finite input (rows too large to square are
    scaled first). Saves the normalised input and 1/std."""

    def __init__(self, size: int, eps: float = 1e-5) -> None:
        self.size = check_size(self.label, "size", size)
        self.eps = tg.check_number(self.label, "eps", eps, low=0.0, low_inclusive=False)
        self.gamma = self.parameter("gamma", (self.size,), init="ones")
        self.beta = self.parameter("beta", (self.size,), init="zeros")

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        need_rank(self, x, 1)
        if x.shape[-1] != self.size:
            raise ShapeError(f"{self.label}: expected the last axis to have size {self.size}, got shape {x.shape}")
        try:
            with np.errstate(over="raise", divide="raise"):
                centred = x - x.mean(axis=-1, keepdims=True)
                inv_std = 1.0 / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + self.eps)
                xhat = centred * inv_std
        except FloatingPointError:  # |x| beyond about 1e154 squares past the float range
            xhat, inv_std = _normalise_scaled(x, self.eps)
        ctx.saved = (xhat, inv_std)
        return xhat * self.gamma.value + self.beta.value

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        xhat, inv_std = ctx.saved
        flat_g = grad.reshape(-1, self.size)
        dgamma = (flat_g * xhat.reshape(-1, self.size)).sum(axis=0)
        dxhat = grad * self.gamma.value
        dx = inv_std * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        self.gamma.add_grad(dgamma)
        self.beta.add_grad(flat_g.sum(axis=0))
        return dx

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[5], inputs=[rng.standard_normal((1, 5))], name="batch1")
        yield tg.Sample(args=[5], inputs=[rng.standard_normal((4, 5)) * 3 + 1], name="batch4")
        yield tg.Sample(args=[4], kwargs={"eps": 1e-3}, inputs=[rng.standard_normal((2, 3, 4))], name="rank3_eps")


def _normalise_scaled(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """LayerNorm's (xhat, 1/std) for rows whose squares would overflow.

    Each row is divided by a power of two (exact) that brings it below 1, where nothing
    overflows; eps shrinks by that factor squared. 1/std in x's units is 0 where std itself
    exceeds the float range (its true value, below 5.6e-309 in float64, rounds to about 0).
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        _, k = np.frexp(np.max(np.abs(x), axis=-1, keepdims=True))
        y = np.ldexp(x, -k)
        centred = y - y.mean(axis=-1, keepdims=True)
        root_var = np.sqrt((centred * centred).mean(axis=-1, keepdims=True))
        root_eps = np.asarray(np.sqrt(eps), dtype=x.dtype)
        std = np.hypot(root_var, np.ldexp(root_eps, -k))  # sqrt(var + eps), in the row's scaled units
        # std is 0 only for a constant row (centred 0, xhat 0); NaN rows stay NaN
        xhat = np.divide(centred, std, out=np.zeros_like(centred), where=std != 0)
        inv_std = 1.0 / np.hypot(np.ldexp(root_var, k), root_eps)
    return xhat, inv_std.astype(x.dtype, copy=False)


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [Affine, Embedding, Dropout, LayerNorm]
