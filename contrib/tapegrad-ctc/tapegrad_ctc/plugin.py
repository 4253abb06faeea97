"""``CTCLoss``: connectionist temporal classification (Graves et al., 2006), computed with
the forward-backward recursions in log space, vectorised over the batch; and the check of
per-sequence input lengths it shares with ``greedy_decode``."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

import tapegrad as tg
from tapegrad import ArgumentError, InputTypeError, NonFiniteError, OperationError, OutOfRangeError, ShapeError

NEG_INF = -np.inf
REDUCTIONS = ("mean", "sum")


def check_input_lengths(where: str, lengths: np.ndarray, batch: int, steps: int) -> np.ndarray:
    """Per-sequence input lengths as int64: shape ``(batch,)``, each a whole number in 0..steps
    (integral floats are accepted). Raises ShapeError, InputTypeError, NonFiniteError or
    OutOfRangeError, each naming ``where``."""
    if lengths.shape != (batch,):
        raise ShapeError(
            f"{where}: expected input_lengths of shape ({batch},), one per sequence, got shape {lengths.shape}"
        )
    if lengths.dtype.kind == "f":
        if np.isnan(lengths).any():
            raise NonFiniteError(f"{where}: input_lengths hold NaN")
        fractional = lengths[np.floor(lengths) != lengths]  # (infinity is whole: out of range below)
        if fractional.size:
            raise InputTypeError(f"{where}: input_lengths must be whole numbers, got {fractional[0]:g}")
    elif lengths.dtype.kind not in "iu":
        raise InputTypeError(f"{where}: input_lengths must be integers, got dtype {lengths.dtype}")
    outside = (lengths < 0) | (lengths > steps)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise OutOfRangeError(
            f"{where}: input_lengths[{row}] is {lengths[row]:g}, outside 0..{steps} (the number of time steps)"
        )
    return lengths.astype(np.int64)


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
    emit: np.ndarray, skip: np.ndarray, target_lengths: np.ndarray, ends: np.ndarray, input_lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log p(target | x) per batch element, and the log-space alpha and beta (T, N, 2S+1).

    ``emit`` (N, T, 2S+1) holds the log-probability of each extended label at each step; sequence
    i uses its first ``input_lengths[i]`` steps only (beta is -inf after them, so they get no posterior).
    With no steps only an empty target has an alignment (the empty one, probability 1).
    """
    n, steps, width = emit.shape
    rows = np.arange(n)
    alpha = np.full((steps, n, width), NEG_INF)
    beta = np.full((steps, n, width), NEG_INF)
    empty = np.where(target_lengths == 0, 0.0, NEG_INF)  # the likelihood of a sequence with no steps
    if steps == 0:
        return empty, alpha, beta
    alpha[0, :, 0] = emit[:, 0, 0]
    if width > 1:
        alpha[0, :, 1] = np.where(target_lengths > 0, emit[:, 0, 1], NEG_INF)
    for t in range(1, steps):
        prev = alpha[t - 1]
        best = np.logaddexp(prev, _shift(prev, 1))
        best = np.logaddexp(best, np.where(skip, _shift(prev, 2), NEG_INF))
        alpha[t] = best + emit[:, t]

    last_step = np.maximum(input_lengths - 1, 0)
    last = alpha[last_step, rows, ends]
    before = np.where(ends >= 1, alpha[last_step, rows, np.maximum(ends - 1, 0)], NEG_INF)
    log_likelihood = np.where(input_lengths == 0, empty, np.logaddexp(last, before))

    start = np.full((n, width), NEG_INF)  # beta at each sequence's last step
    start[rows, ends] = 0.0
    start[rows[ends >= 1], ends[ends >= 1] - 1] = 0.0
    recursed = np.full((n, width), NEG_INF)
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            nxt = beta[t + 1] + emit[:, t + 1]
            recursed = np.logaddexp(nxt, _shift(nxt, -1))
            recursed = np.logaddexp(recursed, _shift(np.where(skip, nxt, NEG_INF), -2))
        beta[t] = np.where((input_lengths - 1 == t)[:, None], start, recursed)
    return log_likelihood, alpha, beta


class CTCLoss(tg.Loss):
    """CTC loss, as ``torch.nn.functional.ctc_loss`` on ``log_softmax(logits)``.
    forward: logits (N, T, C) and optional input lengths (N,) (integers in 0..T; sequence i uses
    its first input_lengths[i] steps; no gradient) -> log-probabilities (N, T, C) (log-softmax over C).
    loss: integer targets (N, S) padded with -1 -> with ``reduction="mean"`` (the default), each
    sequence's -log p(target | x) divided by its target length (at least 1), then the mean over
    the batch; with ``"sum"``, the sum over the batch (S = 0 or T = 0 allowed; an empty batch
    raises ShapeError). backward: d loss / d logits = (softmax - posterior of each class) times
    each sequence's weight in the reduction; 0 at steps beyond its input length.
    An infinite loss (a target too long for its input, or every alignment at probability 0)
    raises OperationError naming the batch element, unless ``zero_infinity=True`` (then that
    element adds 0 and no gradient). NaN or +inf in the logits raises NonFiniteError.
    Saves the log-probabilities and the input lengths; loss() keeps the gradient for backward."""

    integer_inputs = (1,)

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> None:
        self.blank = int(tg.check_number(self.label, "blank", blank, low=0, integer=True))
        if not isinstance(reduction, str):
            raise InputTypeError(
                f"{self.label}: reduction must be 'mean' or 'sum', got {type(reduction).__name__} {reduction!r}"
            )
        if reduction not in REDUCTIONS:
            raise ArgumentError(f"{self.label}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.zero_infinity = tg.check_flag(self.label, "zero_infinity", zero_infinity)

    def forward(self, ctx: tg.Context, logits: np.ndarray, input_lengths: np.ndarray | None = None) -> np.ndarray:
        if logits.ndim != 3:
            raise ShapeError(f"{self.label}: expected logits of shape (N, T, C), got {logits.shape}")
        n, steps, classes = logits.shape
        if not 0 <= self.blank < classes:
            raise ShapeError(f"{self.label}: blank {self.blank} is not a class of logits with C={classes}")
        if input_lengths is None:
            lengths = np.full(n, steps, dtype=np.int64)
        else:
            lengths = check_input_lengths(self.label, input_lengths, n, steps)
        log_probs = _log_softmax(logits)
        ctx.save(log_probs, lengths, input_lengths is not None)
        return log_probs

    def _targets(self, targets: np.ndarray, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
        if targets.dtype.kind == "f":
            # checked before the cast to int64, which would turn NaN or 1e20 into garbage
            if np.isnan(targets).any():
                raise NonFiniteError(f"{self.label}: the targets hold NaN")
            if np.any(np.floor(targets) != targets):
                raise InputTypeError(
                    f"{self.label}: targets must be integers, got non-integral values of dtype {targets.dtype}"
                )
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
        log_probs, input_lengths, _ = ctx.saved
        n, steps, classes = log_probs.shape
        if n == 0:
            raise ShapeError(
                f"{self.label}: the batch is empty (logits shape {log_probs.shape}); a loss needs at least one sequence"
            )
        targets, target_lengths = self._targets(targets, n, classes)
        logp = log_probs.astype(np.float64)
        width = 2 * targets.shape[1] + 1
        ext = np.full((n, width), self.blank, dtype=np.int64)
        ext[:, 1::2] = np.where(targets >= 0, targets, self.blank)
        ends = 2 * target_lengths  # index of the final blank in each row's extended label
        # s -> s+2 skips a blank between two different labels
        skip = np.zeros((n, width), dtype=bool)
        skip[:, 2:] = (ext[:, 2:] != self.blank) & (ext[:, 2:] != ext[:, :-2])
        emit = np.take_along_axis(logp, np.broadcast_to(ext[:, None, :], (n, steps, width)), axis=2)

        # repeated labels need a blank between them: the shortest alignment's length
        repeats = ((targets[:, 1:] == targets[:, :-1]) & (targets[:, 1:] >= 0)).sum(axis=1)
        impossible = target_lengths + repeats > input_lengths
        if impossible.any() and not self.zero_infinity:
            rows = np.flatnonzero(impossible)
            raise OperationError(
                f"{self.label}: batch element {rows[0]} (of {rows.tolist()}) has a target of length "
                f"{target_lengths[rows[0]]} needing {target_lengths[rows[0]] + repeats[rows[0]]} steps, "
                f"but its input has {input_lengths[rows[0]]}; "
                "no alignment exists (pass zero_infinity=True to ignore such elements)"
            )

        with np.errstate(invalid="ignore"):  # NaN logits give a NaN likelihood, reported next
            log_likelihood, alpha, beta = _forward_backward(emit, skip, target_lengths, ends, input_lengths)
        self._check_likelihood(log_likelihood, impossible)
        # only infinite losses are left out here, and only with zero_infinity (checked above)
        ok = np.isfinite(log_likelihood)
        safe_ll = np.where(ok, log_likelihood, 0.0)
        # each sequence's weight in the reduction (0 for one left out)
        weight = np.where(ok, 1.0, 0.0)
        if self.reduction == "mean":
            weight = weight / (np.maximum(target_lengths, 1) * n)
        # posterior of each extended position, then summed per class; none after a sequence's last step
        log_post = alpha.transpose(1, 0, 2) + beta.transpose(1, 0, 2) - safe_ll[:, None, None]
        posterior = np.where(ok[:, None, None], np.exp(log_post), 0.0)
        onehot = np.zeros((n, width, classes))
        onehot[np.arange(n)[:, None], np.arange(width)[None, :], ext] = 1.0
        per_class = posterior @ onehot
        used = np.arange(steps)[None, :] < input_lengths[:, None]  # (N, T): the steps each sequence uses
        dlogits = np.where(used[:, :, None], np.exp(logp) - per_class, 0.0) * weight[:, None, None]
        ctx.dlogits = dlogits.astype(log_probs.dtype)
        return float(np.sum(-safe_ll * weight)) + 0.0  # + 0.0: no -0.0 for a loss of zero

    def _check_likelihood(self, log_likelihood: np.ndarray, impossible: np.ndarray) -> None:
        """NaN means NaN or +inf in that element's logits (within its input length); -inf where an
        alignment exists means every alignment has probability 0 in floating point (a loss beyond
        the float range)."""
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

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray | tuple[np.ndarray, None]:
        dlogits = ctx.dlogits * grad
        return (dlogits, None) if ctx.saved[2] else dlogits  # input lengths get no gradient

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 4, 3))], target=np.array([[1, 2]]), name="batch1")
        yield tg.Sample(
            inputs=[rng.standard_normal((3, 6, 4))],
            target=np.array([[1, 2, -1], [3, 3, 1], [-1, -1, -1]]),
            name="padded_repeats_empty",
        )
        yield tg.Sample(
            kwargs={"blank": 2},
            inputs=[rng.standard_normal((2, 5, 3))],
            target=np.array([[0, 1], [1, -1]]),
            name="blank2",
        )
        yield tg.Sample(
            inputs=[rng.standard_normal((3, 6, 4)), np.array([6, 4, 2])],
            target=np.array([[1, 2, -1], [3, 3, 1], [2, -1, -1]]),
            name="input_lengths",
        )
        yield tg.Sample(
            kwargs={"reduction": "sum"},
            inputs=[rng.standard_normal((3, 5, 4)), np.array([5, 0, 3])],
            target=np.array([[1, 2, 3], [-1, -1, -1], [2, 2, -1]]),
            name="sum_with_an_empty_input",
        )


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [CTCLoss]
