"""Losses: SoftmaxLoss, SquareLoss, SigmoidCrossEntropyLoss.

``forward`` returns the prediction (probabilities for the classification losses);
``loss(target)`` returns a float; ``backward`` gives the gradient of that float with
respect to the forward input, scaled by the upstream gradient (1.0 from graph.backward()).
Every loss is finite for finite inputs unless its exact value exceeds the float range
(OperationError); NaN or infinity in an input or target raises NonFiniteError naming it, and
an empty batch raises ShapeError."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

import tapegrad as tg
from tapegrad import NonFiniteError, OutOfRangeError, ShapeError

from ._util import FLOAT_SIGNALS, integer_labels, loss_not_finite, need_examples, need_float


class SoftmaxLoss(tg.Loss):
    """Softmax over classes plus mean cross-entropy (natural log) with integer labels.
    forward: logits (N, C) -> probabilities (N, C), stable for large logits;
    loss: labels (N,) -> float; backward: (p - onehot) / N. Saves probabilities, shifted
    logits and their exp-sums; loss adds the (row, label) index."""

    def forward(self, ctx: tg.Context, logits: np.ndarray) -> np.ndarray:
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ShapeError(f"{self.label}: expected logits of shape (batch, classes) with classes >= 1, got {logits.shape}")
        top = logits.max(axis=1, keepdims=True)
        try:
            shifted = logits - top
        except FLOAT_SIGNALS:  # logits further apart than the float range (the far ones shift to -inf,
            with np.errstate(over="ignore", invalid="ignore"):  # exactly), or infinite (NaN: loss() says so)
                shifted = logits - top
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        probs = e / total
        ctx.saved = (probs, shifted, total, logits)
        return probs

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        probs, shifted, total, logits = ctx.saved
        n, classes = probs.shape
        if n == 0:
            raise ShapeError(f"{self.label}: the batch is empty (logits shape {probs.shape}); a loss needs at least one example")
        if target.ndim != 1 or target.shape[0] != n:
            raise ShapeError(f"{self.label}: expected {n} labels of shape ({n},), got shape {target.shape}")
        if target.dtype.kind not in "iu":
            target = integer_labels(self, target, classes)
        if n == 1:  # the seed's batch size: plain Python on one label
            label = target.item()
            if not 0 <= label < classes:
                integer_labels(self, target, classes)  # raises, naming the offending label
            ctx.picked = (0, label)
            value = math.log(total[0, 0]) - float(shifted[0, label])
        else:
            # Too large a label fails the indexing below; a negative one would wrap around.
            if np.minimum.reduce(target) < 0:
                integer_labels(self, target, classes)  # raises, naming the offending label
            picked = (np.arange(n), target)
            try:
                chosen = shifted[picked]
            except IndexError:
                integer_labels(self, target, classes)
                raise
            ctx.picked = picked
            rows = np.log(total[:, 0]) - chosen
            try:
                value = float(np.add.reduce(rows)) / n
            except FLOAT_SIGNALS:
                value = math.inf
            if math.isinf(value):  # the sum overflowed (or a row is infinite): average first
                value = float(np.add.reduce(rows / n))
        if not math.isfinite(value):
            raise loss_not_finite(self, value, logits=logits)
        return value

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        probs = ctx.saved[0]
        scale = grad / probs.shape[0]
        # A new array (the probabilities returned by forward stay intact); a copy is the
        # cheaper way to make it when there is nothing to scale (batch 1, graph.backward()).
        d = probs.copy() if scale == 1.0 else probs * scale
        d[ctx.picked] -= scale
        return d

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 4))], target=np.array([2]), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((6, 4))], target=rng.integers(0, 4, 6), name="batch6")
        yield tg.Sample(
            inputs=[np.array([[1000.0, 999.0, -1000.0], [0.0, 1e3, 1e3 - 2]])], target=np.array([0, 2]), name="logits_1e3"
        )


class SquareLoss(tg.Loss):
    """Half squared error, averaged over the batch: mean_n 0.5 * ||y_n - t_n||^2.
    forward: prediction (N, ...) -> itself; loss: target of the same shape. Saves the prediction."""

    def forward(self, ctx: tg.Context, y: np.ndarray) -> np.ndarray:
        need_float(self, y, "prediction")
        ctx.saved = (y,)
        return y

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        (y,) = ctx.saved
        if target.shape != y.shape:
            raise ShapeError(f"{self.label}: target shape {target.shape} does not match prediction shape {y.shape}")
        need_examples(self, y)
        n = y.shape[0] if y.ndim else 1
        with np.errstate(over="ignore", invalid="ignore"):  # judged below, on the one number
            diff = y - target
        value = 0.5 * float(np.vdot(diff, diff)) / n
        if not math.isfinite(value):
            value = _half_mean_square(diff, n)  # the sum of squares overflowed: scale it
            if not math.isfinite(value):
                raise loss_not_finite(self, value, prediction=y, target=target)
        ctx.diff = diff
        return value

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        diff = ctx.diff
        n = diff.shape[0] if diff.ndim else 1
        return diff * (grad / n)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], target=rng.standard_normal((1, 3)), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((5, 2))], target=rng.standard_normal((5, 2)), name="batch5")
        yield tg.Sample(inputs=[rng.standard_normal(4)], target=rng.standard_normal(4), name="vector")


def _half_mean_square(diff: np.ndarray, n: int) -> float:
    """0.5 * ||diff||^2 / n with diff scaled by a power of two (exact) before squaring:
    inf only where the loss itself exceeds the float range, or diff is not finite."""
    _, k = np.frexp(np.max(np.abs(diff)))
    scaled = np.ldexp(diff, -k)
    try:
        return math.ldexp(0.5 * float(np.vdot(scaled, scaled)) / n, 2 * int(k))
    except OverflowError:
        return math.inf


class SigmoidCrossEntropyLoss(tg.Loss):
    """Binary cross-entropy on logits, the mean over all elements; stable for large logits.
    forward: logits (any shape) -> sigmoid probabilities; loss: targets in [0, 1] of the same
    shape; backward: (sigmoid(x) - t) / size. Saves logits and probabilities."""

    def forward(self, ctx: tg.Context, logits: np.ndarray) -> np.ndarray:
        need_float(self, logits, "logits")
        probs = np.tanh(logits * 0.5)
        probs *= 0.5
        probs += 0.5
        ctx.saved = (logits, probs)
        return probs

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        logits, probs = ctx.saved
        if target.shape != logits.shape:
            raise ShapeError(f"{self.label}: target shape {target.shape} does not match logits shape {logits.shape}")
        need_examples(self, logits, "logits", elements=True)
        if not (target.min() >= 0 and target.max() <= 1):  # written so that NaN fails it too
            if np.isnan(target).any():
                raise NonFiniteError(f"{self.label}: the targets hold NaN")
            raise OutOfRangeError(f"{self.label}: targets must lie in [0, 1], got values from {target.min()} to {target.max()}")
        ctx.target = target
        # max(x, 0) - x t + log(1 + exp(-|x|)): each term is at most |x| + log 2, never overflowing;
        # an infinite logit gives NaN (inf - inf), reported below
        with np.errstate(invalid="ignore"):
            elementwise = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
        value = float(np.add.reduce(elementwise / elementwise.size, axis=None))  # dividing first keeps the sum in range
        if not math.isfinite(value):
            raise loss_not_finite(self, value, logits=logits)
        return value

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        _, probs = ctx.saved
        return (probs - ctx.target) * (grad / probs.size)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], target=np.array([[0.0, 1.0, 1.0]]), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((4, 2))], target=rng.uniform(0, 1, (4, 2)), name="soft_targets")
        yield tg.Sample(inputs=[np.array([[-800.0, -30.0, 30.0, 800.0]])], target=np.array([[0.0, 1.0, 0.0, 1.0]]), name="large")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [SoftmaxLoss, SquareLoss, SigmoidCrossEntropyLoss]
