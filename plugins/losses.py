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

from ._util import integer_labels, loss_not_finite, need_examples, need_float


class SoftmaxLoss(tg.Loss):
    """Softmax over the last axis plus mean cross-entropy with integer labels (torch's cross_entropy).
    As ``torch.nn.functional.cross_entropy`` with the classes moved last; natural log.
    forward: logits (..., C) -> probabilities (..., C), stable for any finite logits;
    loss: labels (...) -> the mean over the positions whose label is not ``ignore_index``;
    backward: (p - onehot) / count at those positions, 0 at ignored ones. A loss with every
    position ignored is 0.0 with zero gradient (torch's is NaN, 0/0, which tapegrad refuses as a
    loss: a batch of padding contributes nothing). Saves the probabilities, the exponentiated
    logits (shifted or not, see forward), their exp-sums and the logits; loss adds the (row, label)
    indices, and for (..., C) logits or ignore_index the count and the ignored rows."""

    def __init__(self, ignore_index: int | None = None) -> None:
        if ignore_index is not None:
            ignore_index = int(tg.check_number(self.label, "ignore_index", ignore_index, integer=True))
        self.ignore_index = ignore_index

    def forward(self, ctx: tg.Context, logits: np.ndarray) -> np.ndarray:
        if logits.ndim == 0 or logits.shape[-1] == 0:
            raise ShapeError(
                f"{self.label}: expected logits of shape (..., classes) with classes >= 1, got {logits.shape}"
            )
        # Moderate logits (the common case) are exponentiated as they are: no exp or sum can leave
        # the float range, so no shift by the row max is needed. Others (and NaN) are shifted.
        peak = np.maximum.reduce(np.abs(logits), axis=None, initial=0.0)
        z = logits if peak <= _unshifted_limit(logits.dtype, logits.shape[-1]) else _shifted(logits)
        probs = np.exp(z)
        total = np.add.reduce(probs, axis=-1, keepdims=True)
        probs /= total  # (in place: the exponentials are not kept)
        ctx.saved = (probs, z, total, logits)
        return probs

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        probs, z, total, logits = ctx.saved
        if probs.ndim != 2 or self.ignore_index is not None:
            return self._positions_loss(ctx, target)
        # the seed's case, kept lean: logits (N, C), every one of the N labels counts (backward tests the same)
        n, classes = probs.shape
        if n == 0:
            raise ShapeError(
                f"{self.label}: the batch is empty (logits shape {probs.shape}); a loss needs at least one example"
            )
        if target.ndim != 1 or target.shape[0] != n:
            raise ShapeError(f"{self.label}: expected {n} labels of shape ({n},), got shape {target.shape}")
        if target.dtype.kind not in "iu":
            target = integer_labels(self, target, classes)
        if n == 1:  # the seed's batch size: plain Python on one label
            label = target.item()
            if not 0 <= label < classes:
                integer_labels(self, target, classes)  # raises, naming the offending label
            ctx.picked = (0, label)
            value = math.log(total.item()) - z.item(label)
        else:
            # Too large a label fails the indexing below; a negative one would wrap around.
            if np.minimum.reduce(target) < 0:
                integer_labels(self, target, classes)  # raises, naming the offending label
            picked = (np.arange(n), target)
            try:
                chosen = z[picked]
            except IndexError:
                integer_labels(self, target, classes)
                raise
            ctx.picked = picked
            value = _mean(np.log(total[:, 0]) - chosen, n, moderate=z is logits)
        return value if math.isfinite(value) else self._far_apart(ctx, value)

    def _far_apart(self, ctx: tg.Context, value: float) -> float:
        """The loss recomputed from the logits of the rows it counts, for logits further apart than
        the float range; or the error for a loss that is not finite (NaN or infinite logits, a
        mean beyond the range)."""
        logits = ctx.saved[3]
        rows, labels = (np.atleast_1d(index) for index in ctx.picked)
        counted = logits.reshape(-1, logits.shape[-1])[rows]
        value = _mean_from_logits(counted, labels, len(rows))
        if not math.isfinite(value):
            raise loss_not_finite(self, value, logits=counted)
        return value

    def _positions_loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        """Logits (..., C) and labels (...), some of them perhaps ignore_index."""
        probs, z, total, logits = ctx.saved
        classes = probs.shape[-1]
        if not all(probs.shape[:-1]):
            raise ShapeError(
                f"{self.label}: the batch is empty (logits shape {probs.shape}); a loss needs at least one example"
            )
        if target.shape != probs.shape[:-1]:
            raise ShapeError(
                f"{self.label}: expected labels of shape {probs.shape[:-1]} (the logits' shape {probs.shape} "
                f"without the classes), got shape {target.shape}"
            )
        labels = target.reshape(-1)
        ctx.ignored = None
        if self.ignore_index is None:
            rows = np.arange(labels.size)
        else:
            ignored = labels == self.ignore_index
            rows, labels = np.flatnonzero(~ignored), labels[~ignored]
            ctx.ignored = ignored
        try:
            labels = integer_labels(self, labels, classes)
        except OutOfRangeError as exc:
            if self.ignore_index is None:
                raise
            raise OutOfRangeError(f"{exc} (positions labelled ignore_index={self.ignore_index} are skipped)") from None
        ctx.picked, ctx.count = (rows, labels), rows.size
        if not rows.size:
            return 0.0  # every position ignored: nothing to average (see the class docstring)
        chosen = z.reshape(-1, classes)[rows, labels]
        value = _mean(np.log(total.reshape(-1)[rows]) - chosen, rows.size, moderate=z is logits)
        return value if math.isfinite(value) else self._far_apart(ctx, value)

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        probs = ctx.saved[0]
        if probs.ndim == 2 and self.ignore_index is None:  # (as in loss)
            scale = grad / probs.shape[0]
            # A new array (the probabilities returned by forward stay intact); a copy is the
            # cheaper way to make it when there is nothing to scale (batch 1, graph.backward()).
            d = probs.copy() if scale == 1.0 else probs * scale
            d[ctx.picked] -= scale
            return d
        if not ctx.count:
            return np.zeros_like(probs)
        scale = grad / ctx.count
        d = probs * scale
        rows = d.reshape(-1, d.shape[-1])  # a view of d
        if ctx.ignored is not None:
            rows[ctx.ignored] = 0.0
        rows[ctx.picked] -= scale
        return d

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 4))], target=np.array([2]), name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((6, 4))], target=rng.integers(0, 4, 6), name="batch6")
        yield tg.Sample(
            inputs=[np.array([[1000.0, 999.0, -1000.0], [0.0, 1e3, 1e3 - 2]])],
            target=np.array([0, 2]),
            name="logits_1e3",
        )
        yield tg.Sample(
            inputs=[rng.standard_normal((2, 3, 4))], target=np.array([[0, 3, 1], [2, 2, 0]]), name="sequence"
        )
        yield tg.Sample(
            kwargs={"ignore_index": -1},
            inputs=[rng.standard_normal((2, 3, 4))],
            target=np.array([[0, 3, -1], [2, -1, -1]]),
            name="ignore_padding",
        )
        yield tg.Sample(
            kwargs={"ignore_index": 1},
            inputs=[rng.standard_normal((5, 3))],
            target=np.array([1, 0, 2, 1, 2]),
            name="ignore_a_class",
        )
        yield tg.Sample(inputs=[rng.standard_normal(5)], target=np.array(3), name="one_position")


_HALF_LOG_MAX: dict[np.dtype, float] = {}


def _unshifted_limit(dtype: np.dtype, classes: int) -> float:
    """How far from 0 logits may lie for SoftmaxLoss to exponentiate them unshifted: each exp then
    lies between 1/sqrt(max) and sqrt(max)/classes (normal numbers), and so does their sum."""
    half_log_max = _HALF_LOG_MAX.get(dtype)
    if half_log_max is None:
        half_log_max = _HALF_LOG_MAX[dtype] = 0.5 * float(np.log(np.finfo(dtype).max))
    return half_log_max - math.log(classes)


def _shifted(logits: np.ndarray) -> np.ndarray:
    """``logits`` minus each row's max, for exp. Logits further apart than the float range shift
    to -inf (exactly: a probability of 0) and an infinite logit gives NaN (loss() says so): both
    are handled, so numpy is not asked to signal them."""
    with np.errstate(over="ignore", invalid="ignore"):
        return logits - logits.max(axis=-1, keepdims=True)


def _mean(losses: np.ndarray, count: int, moderate: bool) -> float:
    """The mean of rows' losses (each >= 0). Those of moderate (unshifted) logits are small, so
    their sum cannot overflow; others are divided by the count first, and their sum then stays in
    range wherever the mean does."""
    return float(np.add.reduce(losses)) / count if moderate else float(np.add.reduce(losses / count))


def _mean_from_logits(logits: np.ndarray, labels: np.ndarray, count: int) -> float:
    """The mean over the rows of ``max - logit[label] + log(sum(exp(logit - max)))``, each term
    divided by the count before the difference is taken: for logits further apart than the float
    range, whose shifted value is -inf although the mean may be representable (rows [-1e308, 1e308]
    and [1e308, -1e308], label 1: the mean of 0 and 2e308 is 1e308). inf where the mean is beyond
    the range (always when count is 1), NaN for NaN or infinite logits."""
    with np.errstate(over="ignore", invalid="ignore"):
        top = logits.max(axis=1)
        chosen = logits[np.arange(len(labels)), labels]
        total = np.exp(logits - top[:, None]).sum(axis=1)
        return float(np.add.reduce((top / count - chosen / count) + np.log(total) / count))


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
            raise OutOfRangeError(
                f"{self.label}: targets must lie in [0, 1], got values from {target.min()} to {target.max()}"
            )
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
        yield tg.Sample(
            inputs=[np.array([[-800.0, -30.0, 30.0, 800.0]])], target=np.array([[0.0, 1.0, 0.0, 1.0]]), name="large"
        )


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [SoftmaxLoss, SquareLoss, SigmoidCrossEntropyLoss]
