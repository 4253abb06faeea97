"""``CTCLoss``: connectionist temporal classification (Graves et al., 2006), computed with
the forward-backward recursions in log space, vectorised over the batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import tapegrad as tg
from tapegrad import InputTypeError, NonFiniteError, OperationError, OutOfRangeError, ShapeError

NEG_INF = -np.inf


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    # Logits more than the float range apart give -inf (a probability that is 0 in floating
    # point, which the recursions handle); NaN or +inf give NaN, which loss() reports.
    with np.errstate(over="ignore", invalid="ignore"):
        shifted = logits - logits.max(axis=-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _shift(a: np.ndarray, k: int) -> np.ndarray:
    """``a`` moved ``k`` places along the last axis (right for k > 0), padded with -inf."""
    out = np.full_like(a, NEG_INF)
    if k > 0:
        out[..., k:] = a[..., :-k]
    else:
        out[..., :k] = a[..., -k:]
    return out


def _forward_backward(
    emit: np.ndarray, skip: np.ndarray, lengths: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log p(target | x) per batch element, and the log-space alpha and beta (T, N, 2S+1).

    ``emit`` (N, T, 2S+1) holds the log-probability of each extended label at each step.
    With T = 0 only an empty target has an alignment (the empty one, probability 1).
    """
    n, steps, width = emit.shape
    rows = np.arange(n)
    alpha = np.full((steps, n, width), NEG_INF)
    beta = np.full((steps, n, width), NEG_INF)
    if steps == 0:
        return np.where(lengths == 0, 0.0, NEG_INF), alpha, beta
    alpha[0, :, 0] = emit[:, 0, 0]
    if width > 1:
        alpha[0, :, 1] = np.where(lengths > 0, emit[:, 0, 1], NEG_INF)
    for t in range(1, steps):
        prev = alpha[t - 1]
        best = np.logaddexp(prev, _shift(prev, 1))
        best = np.logaddexp(best, np.where(skip, _shift(prev, 2), NEG_INF))
        alpha[t] = best + emit[:, t]

    last = alpha[-1, rows, ends]
    before = np.where(ends >= 1, alpha[-1, rows, np.maximum(ends - 1, 0)], NEG_INF)
    log_likelihood = np.logaddexp(last, before)

    beta[-1, rows, ends] = 0.0
    beta[-1, rows[ends >= 1], ends[ends >= 1] - 1] = 0.0
    for t in range(steps - 2, -1, -1):
        nxt = beta[t + 1] + emit[:, t + 1]
        best = np.logaddexp(nxt, _shift(nxt, -1))
        beta[t] = np.logaddexp(best, _shift(np.where(skip, nxt, NEG_INF), -2))
    return log_likelihood, alpha, beta


class CTCLoss(tg.Loss):
    """CTC loss. forward: logits (N, T, C) -> log-probabilities (N, T, C) (log-softmax over C).
    loss: integer targets (N, S) padded with -1 -> sum over the batch of -log p(target | x), / N
    (S = 0 or T = 0 allowed; an empty batch raises ShapeError).
    backward: d loss / d logits = (softmax - posterior of each class) / N.
    An infinite loss (a target too long for T, or every alignment at probability 0) raises
    OperationError naming the batch element, unless ``zero_infinity=True`` (then that element
    adds 0 and no gradient). NaN or +inf in the logits raises NonFiniteError.
    Saves the log-probabilities; loss() keeps the gradient for backward."""

    def __init__(self, blank: int = 0, zero_infinity: bool = False) -> None:
        self.blank = int(tg.check_number(self.label, "blank", blank, low=0, integer=True))
        if not isinstance(zero_infinity, (bool, np.bool_)):
            raise InputTypeError(
                f"{self.label}: zero_infinity must be True or False, got {type(zero_infinity).__name__} {zero_infinity!r}"
            )
        self.zero_infinity = bool(zero_infinity)

    def forward(self, ctx: tg.Context, logits: np.ndarray) -> np.ndarray:
        if logits.ndim != 3:
            raise ShapeError(f"{self.label}: expected logits of shape (N, T, C), got {logits.shape}")
        if not 0 <= self.blank < logits.shape[2]:
            raise ShapeError(f"{self.label}: blank {self.blank} is not a class of logits with C={logits.shape[2]}")
        log_probs = _log_softmax(logits)
        ctx.save(log_probs)
        return log_probs

    def _targets(self, targets: np.ndarray, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
        if targets.dtype.kind == "f":
            # checked before the cast to int64, which would turn NaN or 1e20 into garbage
            if np.isnan(targets).any():
                raise NonFiniteError(f"{self.label}: the targets hold NaN")
            if np.any(np.floor(targets) != targets):
                raise InputTypeError(f"{self.label}: targets must be integers, got non-integral values of dtype {targets.dtype}")
            outside = (targets < -1) | (targets >= classes)
            if outside.any():
                raise self._bad_label(targets[outside][0], classes)
            targets = targets.astype(np.int64)
        elif targets.dtype.kind not in "iu":
            raise InputTypeError(f"{self.label}: targets must be integers, got dtype {targets.dtype}")
        if targets.ndim != 2 or targets.shape[0] != n:
            raise ShapeError(f"{self.label}: expected targets of shape ({n}, S) padded with -1, got {targets.shape}")
        bad = (targets < -1) | (targets >= classes) | (targets == self.blank)
        if bad.any():
            raise self._bad_label(targets[bad][0], classes)
        valid = targets >= 0
        if np.any(valid[:, 1:] & ~valid[:, :-1]):
            raise ShapeError(f"{self.label}: -1 padding must come after the labels of each row")
        return targets, valid.sum(axis=1)

    def _bad_label(self, label: float, classes: int) -> OutOfRangeError:
        shown = f"{label:g}" if isinstance(label, (float, np.floating)) else str(label)
        return OutOfRangeError(
            f"{self.label}: target label {shown} is not allowed (labels are 0..{classes - 1} except the "
            f"blank {self.blank}; -1 pads)"
        )

    def loss(self, ctx: tg.Context, targets: np.ndarray) -> float:
        (log_probs,) = ctx.saved
        n, steps, classes = log_probs.shape
        if n == 0:
            raise ShapeError(f"{self.label}: the batch is empty (logits shape {log_probs.shape}); a loss needs at least one sequence")
        targets, lengths = self._targets(targets, n, classes)
        logp = log_probs.astype(np.float64)
        width = 2 * targets.shape[1] + 1
        ext = np.full((n, width), self.blank, dtype=np.int64)
        ext[:, 1::2] = np.where(targets >= 0, targets, self.blank)
        ends = 2 * lengths  # index of the final blank in each row's extended label
        # s -> s+2 skips a blank between two different labels
        skip = np.zeros((n, width), dtype=bool)
        skip[:, 2:] = (ext[:, 2:] != self.blank) & (ext[:, 2:] != ext[:, :-2])
        emit = np.take_along_axis(logp, np.broadcast_to(ext[:, None, :], (n, steps, width)), axis=2)

        # repeated labels need a blank between them: the shortest alignment's length
        repeats = ((targets[:, 1:] == targets[:, :-1]) & (targets[:, 1:] >= 0)).sum(axis=1)
        impossible = lengths + repeats > steps
        if impossible.any() and not self.zero_infinity:
            rows = np.flatnonzero(impossible)
            raise OperationError(
                f"{self.label}: batch element {rows[0]} (of {rows.tolist()}) has a target of length "
                f"{lengths[rows[0]]} needing {lengths[rows[0]] + repeats[rows[0]]} steps, but the input has {steps}; "
                "no alignment exists (pass zero_infinity=True to ignore such elements)"
            )

        with np.errstate(invalid="ignore"):  # NaN logits give a NaN likelihood, reported next
            log_likelihood, alpha, beta = _forward_backward(emit, skip, lengths, ends)
        self._check_likelihood(log_likelihood, impossible)
        # only infinite losses are left out here, and only with zero_infinity (checked above)
        ok = np.isfinite(log_likelihood)
        safe_ll = np.where(ok, log_likelihood, 0.0)
        # posterior of each extended position, then summed per class
        log_post = alpha.transpose(1, 0, 2) + beta.transpose(1, 0, 2) - safe_ll[:, None, None]
        posterior = np.where(ok[:, None, None], np.exp(log_post), 0.0)
        onehot = np.zeros((n, width, classes))
        onehot[np.arange(n)[:, None], np.arange(width)[None, :], ext] = 1.0
        per_class = posterior @ onehot
        dlogits = np.where(ok[:, None, None], np.exp(logp) - per_class, 0.0) / n
        ctx.dlogits = dlogits.astype(log_probs.dtype)
        return float(np.sum(-safe_ll[ok])) / n + 0.0  # + 0.0: no -0.0 for a loss of zero

    def _check_likelihood(self, log_likelihood: np.ndarray, impossible: np.ndarray) -> None:
        """NaN means NaN or +inf in that element's logits; -inf where an alignment exists means
        every alignment has probability 0 in floating point (a loss beyond the float range)."""
        nan = np.flatnonzero(np.isnan(log_likelihood))
        if nan.size:
            raise NonFiniteError(
                f"{self.label}: the logits of batch element {nan[0]} (of {nan.tolist()}) hold NaN or infinite values"
            )
        infinite = np.flatnonzero(np.isneginf(log_likelihood) & ~impossible)
        if infinite.size and not self.zero_infinity:
            raise NonFiniteError(
                f"{self.label}: the loss of batch element {infinite[0]} (of {infinite.tolist()}) is infinite: every "
                "alignment of its target has probability 0 (logits of -inf, or more than the float range apart); "
                "pass zero_infinity=True to ignore such elements"
            )

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        return ctx.dlogits * grad  # type: ignore[no-any-return]

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 4, 3))], target=np.array([[1, 2]]), name="batch1")
        yield tg.Sample(
            inputs=[rng.standard_normal((3, 6, 4))],
            target=np.array([[1, 2, -1], [3, 3, 1], [-1, -1, -1]]),
            name="padded_repeats_empty",
        )
        yield tg.Sample(kwargs={"blank": 2}, inputs=[rng.standard_normal((2, 5, 3))], target=np.array([[0, 1], [1, -1]]), name="blank2")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [CTCLoss]
