"""Losses: SoftmaxLoss, SquareLoss, SigmoidCrossEntropyLoss.

``forward`` returns the prediction (probabilities for the classification losses);
``loss(target)`` returns a float; ``backward`` gives the gradient of that float with
respect to the forward input, scaled by the upstream gradient (1.0 from graph.backward())."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

import tapegrad as tg
from tapegrad import OutOfRangeError, ShapeError

from ._util import integer_labels, need_float


class SoftmaxLoss(tg.Loss):
    """Softmax over classes plus mean cross-entropy (natural log) with integer labels.
    forward: logits (N, C) -> probabilities (N, C), stable for large logits;
    loss: labels (N,) -> float; backward: (p - onehot) / N. Saves probabilities, shifted
    logits and their exp-sums; loss adds the (row, label) index."""

    def forward(self, ctx: tg.Context, logits: np.ndarray) -> np.ndarray:
        if logits.ndim != 2:
            raise ShapeError(f"{self.label}: expected logits of shape (batch, classes), got {logits.shape}")
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        probs = e / total
        ctx.saved = (probs, shifted, total)
        return probs

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        probs, shifted, total = ctx.saved
        n, classes = probs.shape
        if target.ndim != 1 or target.shape[0] != n:
            raise ShapeError(f"{self.label}: expected {n} labels of shape ({n},), got shape {target.shape}")
        if target.dtype.kind not in "iu":
            target = integer_labels(self, target, classes)
        if n == 1:  # the seed's batch size: plain Python on one label
            label = target.item()
            if not 0 <= label < classes:
                integer_labels(self, target, classes)  # raises, naming the offending label
            ctx.picked = (0, label)
            return math.log(total[0, 0]) - float(shifted[0, label])
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
        return float(np.add.reduce(np.log(total[:, 0]) - chosen)) / n

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
        diff = y - target
        ctx.diff = diff
        n = y.shape[0] if y.ndim else 1
        return float(0.5 * np.vdot(diff, diff) / n)

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        diff = ctx.diff
        n = diff.shape[0] if diff.ndim else 1
        return diff * (grad / n)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], target=rng.standard_normal((1, 3)), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((5, 2))], target=rng.standard_normal((5, 2)), name="batch5")
        yield tg.Sample(inputs=[rng.standard_normal(4)], target=rng.standard_normal(4), name="vector")


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
        if target.size and (target.min() < 0 or target.max() > 1):
            raise OutOfRangeError(f"{self.label}: targets must lie in [0, 1], got values from {target.min()} to {target.max()}")
        ctx.target = target
        # max(x, 0) - x t + log(1 + exp(-|x|)): never overflows
        elementwise = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
        return float(elementwise.mean()) if elementwise.size else 0.0

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        _, probs = ctx.saved
        return (probs - ctx.target) * (grad / max(probs.size, 1))

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], target=np.array([[0.0, 1.0, 1.0]]), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((4, 2))], target=rng.uniform(0, 1, (4, 2)), name="soft_targets")
        yield tg.Sample(inputs=[np.array([[-800.0, -30.0, 30.0, 800.0]])], target=np.array([[0.0, 1.0, 0.0, 1.0]]), name="large")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [SoftmaxLoss, SquareLoss, SigmoidCrossEntropyLoss]
