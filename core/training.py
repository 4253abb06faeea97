"""``Trainer``: the training loop (shuffle, step, evaluate, summary, checkpoint), kept out of the
autodiff core; and the ``Metric`` a model is measured by on held-out data.

tqdm is used for the progress bar when it is installed and output is a terminal.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import checkpoint as checkpoint_file
from . import optim
from .arguments import check_number
from .errors import (
    ArgumentError,
    CaptureError,
    CaptureWarning,
    InputTypeError,
    NonFiniteError,
    ParameterLoadError,
    ShapeError,
    TapegradError,
    TrainingError,
)
from .graph import Graph, graph_of
from .optim import LRScheduler, Optimizer
from .variable import Variable

__all__ = ["Trainer", "EpochRecord", "History", "Metric", "Accuracy", "Perplexity", "MeanLoss"]


# -- metrics ------------------------------------------------------------------------------------------------


class Metric:
    """How a model is measured on held-out data: the Trainer computes it after every epoch (``History``
    keeps it, ``tapegrad train`` prints it) and ``Trainer.evaluate``/``test`` return it.

    A model names its metric with a ``metric`` attribute (an instance); without one, a classification
    model is measured by ``Accuracy()`` and any other by ``MeanLoss()``. A subclass sets ``name`` (the
    main value's name, printed as ``test accuracy`` or ``validation perplexity``), ``higher_is_better``,
    ``uses_loss`` (the Trainer then computes the model's loss on each held-out batch, in eval mode) and
    ``uses_outputs`` (the model's outputs on the whole held-out set are gathered and passed), and writes
    ``__call__``::

        class CharacterErrorRate(Metric):
            name, higher_is_better = "character error rate", False

            def __call__(self, outputs, targets, *, inputs, loss):
                decoded = greedy_decode(outputs, inputs[1])       # outputs: (N, T, C); inputs[1]: lengths
                return {"character error rate": cer(decoded, targets),
                        "sequence accuracy": exact(decoded, targets)}

    ``outputs`` is what ``model.forward`` returned for every held-out sample, as an array (batches
    joined along axis 0; a tuple of arrays when forward returns a tuple), or None unless ``uses_outputs``;
    ``targets`` the labels as the Trainer checked them; ``inputs`` the held-out inputs as a tuple of
    arrays; ``loss`` the mean of the batches' losses weighted by their sizes (None unless ``uses_loss``).
    It returns the value (a float), or a dict of values whose first entry is ``name``'s: the others are
    reported beside it.
    """

    name: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    uses_loss: ClassVar[bool] = False
    uses_outputs: ClassVar[bool] = True

    def __call__(
        self, outputs: Any, targets: np.ndarray, *, inputs: tuple[np.ndarray, ...], loss: float | None
    ) -> float | Mapping[str, float]:
        raise NotImplementedError(f"{type(self).__name__} must define __call__")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """The fraction of positions whose largest output (argmax over the last axis) is the label; positions
    labelled ``ignore_index`` are not counted. Labels ``(N,)`` or ``(N, T)`` against outputs ``(N, C)``
    or ``(N, T, C)``."""

    name = "accuracy"

    def __init__(self, ignore_index: int | None = None) -> None:
        self.ignore_index = ignore_index

    def __call__(
        self, outputs: Any, targets: np.ndarray, *, inputs: tuple[np.ndarray, ...], loss: float | None
    ) -> float:
        first = outputs[0] if isinstance(outputs, tuple) else outputs
        predicted = np.asarray(first).argmax(axis=-1)
        if predicted.shape != targets.shape:
            raise ShapeError(
                f"Accuracy: the model's outputs {np.shape(first)} give predictions of shape {predicted.shape}, "
                f"but the labels have shape {targets.shape}"
            )
        if self.ignore_index is None:
            return float(np.mean(predicted == targets))
        counted = targets != self.ignore_index
        return float(np.mean(predicted[counted] == targets[counted])) if counted.any() else math.nan

    def __repr__(self) -> str:
        return f"Accuracy(ignore_index={self.ignore_index!r})" if self.ignore_index is not None else "Accuracy()"


class Perplexity(Metric):
    """``exp`` of the mean held-out loss (a language model's mean cross-entropy per position, in nats).
    Exact when the held-out set is one batch, or when every sample counts the same number of positions."""

    name, higher_is_better, uses_loss, uses_outputs = "perplexity", False, True, False

    def __call__(
        self, outputs: Any, targets: np.ndarray, *, inputs: tuple[np.ndarray, ...], loss: float | None
    ) -> float:
        assert loss is not None
        return math.exp(loss) if loss < 709.0 else math.inf


class MeanLoss(Metric):
    """The model's mean loss on the held-out data (regression's default)."""

    name, higher_is_better, uses_loss, uses_outputs = "loss", False, True, False

    def __call__(
        self, outputs: Any, targets: np.ndarray, *, inputs: tuple[np.ndarray, ...], loss: float | None
    ) -> float:
        assert loss is not None
        return loss


# -- history ------------------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """One epoch: its mean train loss, the held-out metric values (``{}`` without held-out data), its
    wall time, and the loss of each of its steps."""

    epoch: int
    train_loss: float
    metrics: dict[str, float]
    seconds: float
    step_losses: list[float] = field(default_factory=list)

    @property
    def metric(self) -> float | None:
        """The main metric value (the first), or None."""
        return next(iter(self.metrics.values()), None)

    @property
    def test_accuracy(self) -> float | None:
        """The held-out accuracy, where the metric measured one."""
        return self.metrics.get("accuracy")


class History(list):  # type: ignore[type-arg]
    """One ``EpochRecord`` per epoch, with column accessors."""

    @property
    def train_loss(self) -> list[float]:
        return [r.train_loss for r in self]

    @property
    def metric(self) -> list[float | None]:
        """The main held-out metric per epoch."""
        return [r.metric for r in self]

    @property
    def test_accuracy(self) -> list[float | None]:
        return [r.test_accuracy for r in self]

    @property
    def seconds(self) -> list[float]:
        return [r.seconds for r in self]

    @property
    def step_losses(self) -> list[float]:
        """Every step's loss, epoch after epoch."""
        return [value for r in self for value in r.step_losses]


# -- data ---------------------------------------------------------------------------------------------------


def _graph_of(model: Any) -> Graph:
    graph = graph_of(model)
    if graph is None:
        raise TrainingError(f"Trainer: the model must have a .graph (or be a Graph), got {type(model).__name__}")
    return graph


def _diverging(exc: BaseException) -> bool:
    """A non-finite loss, or an overflow numpy raised (inside an op, the error's cause)."""
    return isinstance(exc, (NonFiniteError, FloatingPointError)) or isinstance(exc.__cause__, FloatingPointError)


def _samples(data: Any, name: str, what: str, shape: str) -> np.ndarray:
    """``data`` (an array or a Variable) as a numeric array with one entry per sample, every float
    finite; ``shape`` is what the message says was expected."""
    try:
        array = np.asarray(data.value if isinstance(data, Variable) else data)
    except (ValueError, TypeError) as exc:  # ragged nested lists, say
        raise TrainingError(
            f"{what}: expected {name} as a numeric array of shape {shape}, got data numpy cannot read as one ({exc})"
        ) from None
    if array.dtype.kind not in "fiub":
        raise TrainingError(f"{what}: expected {name} to hold numbers (float, int or bool), got dtype {array.dtype}")
    if array.ndim == 0:
        raise ShapeError(f"{what}: expected {name} of shape {shape}, one entry per sample; got a scalar (shape ())")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise TrainingError(
            f"{what}: {name} holds a non-finite value ({array[tuple(where)]} at {where}); remove or impute it first"
        )
    return array


def _progress_enabled(progress: bool) -> bool:
    if not progress:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _arrays(out: Any) -> Any:
    """A forward's result as arrays: a Variable's value, a tuple's entries one by one."""
    if isinstance(out, (tuple, list)):
        return tuple(_arrays(o) for o in out)
    return out.value if isinstance(out, Variable) else np.asarray(out)


def _joined(parts: list[Any]) -> Any:
    """Batches of outputs (arrays, or tuples of them) joined along axis 0."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def _rows(inputs: tuple[np.ndarray, ...], begin: int, end: int) -> Any:
    """Samples ``begin:end`` of the inputs, as the steps take them: one array as itself, several as a tuple.
    (A captured step reads a plain array's signature faster than a 1-tuple's: a seed step at batch 1 took
    1.08-1.10x the previous Trainer's time with a 1-tuple, 1.00-1.03x so, in the same run.)"""
    if len(inputs) == 1:
        return inputs[0][begin:end]
    return tuple(part[begin:end] for part in inputs)


def _generator_state(rng: np.random.Generator) -> dict[str, Any]:
    return dict(rng.bit_generator.state)


#: The Trainer's steps (captured unless ``capture=False``), each with the method it runs eagerly.
_STEPS = {"_train_step": "_step", "_predict_step": "_forward", "_evaluate_step": "_forward_and_loss"}


class Trainer:
    """Trains a model (``.graph``, ``forward(*inputs)``, ``loss(target)``) with an optimizer.

    **Data.** ``x``: an array with one entry per sample along axis 0 (anything numpy reads as one), or a
    tuple of such arrays when the model's forward takes several inputs (CTC's input lengths): each batch
    calls ``model.forward(*inputs)``. Float inputs are computed in the graph's dtype; integer inputs
    (token ids ``(N, T)``) stay integers. ``y``: one entry per sample: class indices ``(N,)``, per-position
    labels ``(N, T)``, padded targets ``(N, S)``, float targets.

    **Labels** are checked by the model's own ``check_target(y, where) -> y`` where it has one. Otherwise
    by ``model.task``: ``"classification"`` (the default) wants integers in ``[0, output_size)`` when the
    model says ``output_size`` (non-negative otherwise), except positions equal to ``model.ignore_index``;
    ``"regression"`` wants floats; any other task (``"ctc"``, say) leaves them to the loss. Every float
    must be finite. ``input_size`` on the model enables the feature-count check of a single 2-D input.

    **Measuring.** After every epoch with held-out data, the model's ``metric`` (see ``Metric``; by
    default accuracy for classification) is computed in eval mode, in batches of ``eval_batch_size``
    (None: one batch of the whole set). ``train`` prints the summary line after each epoch
    (``verbose``), calls ``on_step(epoch, step, loss)`` after each step and ``on_epoch(record)`` after
    each epoch, and returns a ``History`` (per epoch: train loss, metric values, seconds, every step's
    loss).

    **Options.** ``clip_grad_norm``: clip the gradients' total 2-norm to this inside each step
    (``tapegrad.optim.clip_grad_norm``); ``scheduler``: an ``LRScheduler`` of this optimizer, stepped once
    after every epoch, outside the step; ``configuration``: JSON-like data saved in the checkpoint and
    compared on resume (the CLI's options). ``optimizer`` may be None for a Trainer that only evaluates.

    **Checkpoints.** With ``checkpoint=PATH``, everything a resumed run needs is written to PATH after
    every epoch, atomically (``tapegrad.checkpoint``: a zip of a JSON manifest and ``.npy`` arrays, never
    a pickle): parameters, optimizer and scheduler state, the epoch and the history, the early-stopping
    state, the data order's and the graph's generators, the Trainer's settings and ``configuration``.
    When PATH exists, ``train`` resumes from it: a run interrupted after epoch k, or in the middle of
    epoch k + 1, and resumed ends bit for bit where the uninterrupted run ends. A checkpoint of another
    model (class, parameter names, shapes, dtypes), optimizer or schedule class, batch size, clipping,
    number of training samples or configuration is refused with a ``ParameterLoadError`` naming every
    difference, and nothing changes.

    With ``capture`` (the default) the train step and the held-out passes are captured steps
    (``graph.capture``): recorded once per batch shape, verified against eager on their first replay,
    then replayed; ``capture=False`` runs every step eagerly. Training refuses non-finite data and runs
    with numpy's floating-point errors raised, so a step whose numbers overflow stops training before
    the optimizer applies it.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Optimizer | None,
        *,
        batch_size: int = 1,
        progress: bool = True,
        seed: int | None = 0,
        verbose: bool = True,
        capture: bool = True,
        scheduler: LRScheduler | None = None,
        clip_grad_norm: float | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        configuration: Mapping[str, Any] | None = None,
        eval_batch_size: int | None = None,
        metric: Metric | None = None,
    ) -> None:
        self.batch_size = check_number("Trainer", "batch_size", batch_size, low=1, integer=True)
        self.model = model
        self.graph = _graph_of(model)
        self.optimizer = optimizer
        self.progress = progress
        self.verbose = verbose
        self.rng = np.random.default_rng(seed)
        self.capture = bool(capture)
        if scheduler is not None and (not isinstance(scheduler, LRScheduler) or scheduler.optimizer is not optimizer):
            raise ArgumentError(
                "Trainer: scheduler must be a tapegrad.optim schedule of this Trainer's optimizer, got "
                + (
                    "a schedule of another optimizer"
                    if isinstance(scheduler, LRScheduler)
                    else type(scheduler).__name__
                )
            )
        self.scheduler = scheduler
        if clip_grad_norm is not None:
            clip_grad_norm = check_number("Trainer", "clip_grad_norm", clip_grad_norm, low=0.0, low_inclusive=False)
        self.clip_grad_norm = clip_grad_norm
        self.checkpoint = Path(os.fspath(checkpoint)) if checkpoint is not None else None
        self.configuration = dict(configuration) if configuration is not None else None
        if eval_batch_size is not None:
            eval_batch_size = check_number("Trainer", "eval_batch_size", eval_batch_size, low=1, integer=True)
        self.eval_batch_size = eval_batch_size
        if metric is not None and not isinstance(metric, Metric):
            raise InputTypeError(f"Trainer: metric must be a tapegrad.training.Metric, got {type(metric).__name__}")
        self.metric = metric if metric is not None else self._model_metric()
        for step, eager in _STEPS.items():
            function = getattr(self, eager)
            setattr(self, step, self.graph.capture(function) if self.capture else function)

    def _model_metric(self) -> Metric:
        named = getattr(self.model, "metric", None)
        if named is not None:
            if not isinstance(named, Metric):
                raise InputTypeError(
                    f"Trainer: the model's metric must be a tapegrad.training.Metric, got {type(named).__name__}"
                )
            return named
        if self._task == "classification":
            return Accuracy(ignore_index=getattr(self.model, "ignore_index", None))
        return MeanLoss()

    @property
    def _task(self) -> str:
        return str(getattr(self.model, "task", "classification"))

    # -- the steps (captured unless capture=False) ------------------------------------------------
    def _apply(self, x: Any) -> Any:
        """The model's forward on one batch: ``x`` is its one input, or a tuple of its inputs (see ``_rows``)."""
        return self.model.forward(*x) if isinstance(x, tuple) else self.model.forward(x)

    def _step(self, x: Any, y: np.ndarray, optimizer: Optimizer) -> float:
        """One training step: forward, loss, backward, clipping, the optimizer's step and zero_grad. (The
        optimizer is an argument so that a captured step records anew when it is replaced.)"""
        self._apply(x)
        value = self.model.loss(y)
        self.graph.backward()
        if self.clip_grad_norm is not None:
            optim.clip_grad_norm(optimizer.variables, self.clip_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return value  # type: ignore[no-any-return]

    def _forward(self, x: Any) -> Any:
        return self._apply(x)

    def _forward_and_loss(self, x: Any, y: np.ndarray) -> Any:
        out = self._apply(x)
        return out, self.model.loss(y)

    def _run(self, which: str, *args: Any) -> Any:
        """Call a captured step; a model whose step cannot be captured (Python work on its input inside
        forward, say) goes on eagerly, with a warning."""
        step = getattr(self, which)
        tape = self.graph.tape
        if tape.entries or tape.losses:  # the user's pass in flight: not a reason to stop capturing
            if which != "_train_step":  # eval mode leaves the tape, and which forward a loss pairs with, alone
                return getattr(self, _STEPS[which])(*args)
            raise TrainingError(
                f"Trainer.train: graph {self.graph.name!r} has a forward pass in flight ({len(tape.entries)} "
                "applications on its tape); call graph.backward() or graph.clear() before training"
            )
        try:
            return step(*args)
        except CaptureError as exc:
            # Every step goes eager: they share the model's forward, so what stops one from being
            # captured (Python work on the input, say) makes the others' records suspect too.
            self.graph.clear()
            for step, eager in _STEPS.items():
                setattr(self, step, getattr(self, eager))
            kind = {"_train_step": "training", "_predict_step": "prediction"}.get(which, "held-out evaluation")
            warnings.warn(
                f"Trainer: this model's {kind} step cannot be captured, so training and prediction run eagerly "
                f"from now on ({exc}). Pass Trainer(capture=False) to choose that.",
                CaptureWarning,
                stacklevel=3,
            )
            return exc.eager_result if exc.eager_result is not None else getattr(self, which)(*args)

    # -- validation -----------------------------------------------------------------------------------
    def _check_data(self, x: Any, y: Any, what: str) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        inputs = self._inputs(x, what)
        task = self._task
        shape = {"classification": "(samples,) (or (samples, T) for sequences)"}.get(task, "(samples, ...)")
        y = _samples(y, "y", what, shape)
        if len(inputs[0]) == 0:
            raise TrainingError(f"{what}: the data set is empty")
        if len(inputs[0]) != len(y):
            raise TrainingError(f"{what}: x has {len(inputs[0])} samples but y has {len(y)}")
        check = getattr(self.model, "check_target", None)
        if check is not None:
            return inputs, check(y, what)
        if task == "regression":
            return inputs, y.astype(self.graph.dtype, copy=False)
        if task != "classification":
            return inputs, y  # the model's loss checks its labels
        return inputs, self._class_labels(y, what)

    def _class_labels(self, y: np.ndarray, what: str) -> np.ndarray:
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise TrainingError(f"{what}: labels must be integers, got non-integral values")
        ignore = getattr(self.model, "ignore_index", None)
        counted = y if ignore is None else y[y != ignore]
        # The range is checked on the labels as given: a float beyond int64 would cast to garbage.
        classes = getattr(self.model, "output_size", None)
        if counted.size and (counted.min() < 0 or (classes is not None and counted.max() >= classes)):
            bad = counted.min() if counted.min() < 0 else counted.max()
            limit = f"[0, {classes})" if classes is not None else "non-negative"
            skipped = f" (positions labelled ignore_index={ignore} are skipped)" if ignore is not None else ""
            raise TrainingError(f"{what}: label {bad} is out of range {limit}{skipped}")
        if y.dtype.kind == "f":
            if counted.size and counted.max() >= 2**63:
                raise TrainingError(f"{what}: label {counted.max()} is too large for a class index")
            y = y.astype(np.int64)
        return y

    def _inputs(self, x: Any, what: str) -> tuple[np.ndarray, ...]:
        """``x`` (an array, or a tuple of arrays) as a tuple of arrays, float ones in the graph's dtype."""
        width = getattr(self.model, "input_size", None)
        several = isinstance(x, tuple)
        parts = x if several else (x,)
        if several and not parts:
            raise TrainingError(f"{what}: x is an empty tuple; expected the model's inputs")
        inputs: list[np.ndarray] = []
        for i, part in enumerate(parts):
            name = f"x[{i}]" if several else "x"
            shape = f"(samples, {width})" if width is not None and i == 0 else "(samples, ...)"
            array = _samples(part, name, what, shape)
            if i and len(array) != len(inputs[0]):
                raise TrainingError(f"{what}: x[0] has {len(inputs[0])} samples but {name} has {len(array)}")
            if array.dtype.kind == "f":
                array = array.astype(self.graph.dtype, copy=False)
            inputs.append(array)
        first = inputs[0]
        if width is not None and (first.ndim != 2 or first.shape[1] != width):
            raise TrainingError(f"{what}: the model expects {width} features per sample, got x of shape {first.shape}")
        return tuple(inputs)

    # -- training -------------------------------------------------------------------------------------
    def train(
        self,
        x_train: Any,
        y_train: Any,
        x_test: Any = None,
        y_test: Any = None,
        epochs: int = 40,
        *,
        tol: float | None = None,
        patience: int = 10,
        held_out: str = "test",
        on_step: Callable[[int, int, float], Any] | None = None,
        on_epoch: Callable[[EpochRecord], Any] | None = None,
    ) -> History:
        """Train until ``epochs`` epochs are done; returns the history (see the class docstring).

        With ``tol``, training stops early once the train loss has not improved by at least ``tol`` for
        ``patience`` consecutive epochs (scikit-learn's ``tol``/``n_iter_no_change``). ``held_out`` names
        the held-out data in the summary line (``test accuracy``, ``validation perplexity``). With a
        ``checkpoint`` that exists, training resumes where it stopped (its history included).
        """
        if self.optimizer is None:
            raise TrainingError("Trainer.train: this Trainer has no optimizer (it was made to evaluate only)")
        x, y = self._check_data(x_train, y_train, "Trainer.train")
        has_test = x_test is not None and y_test is not None
        if has_test:
            x_test, y_test = self._check_data(x_test, y_test, "Trainer.train (test set)")
        epochs = check_number("Trainer.train", "epochs", epochs, low=1, integer=True)
        patience = check_number("Trainer.train", "patience", patience, low=1, integer=True)
        if tol is not None:
            tol = check_number("Trainer.train", "tol", tol, low=0.0)
        state = _RunState(History(), math.inf, 0, False)
        if self.checkpoint is not None and self.checkpoint.exists():
            state = self._resume(self.checkpoint, len(x[0]))
            if self.verbose:
                print(f"resumed from {self.checkpoint} after epoch {len(state.history)}")
        history = state.history
        for epoch in range(len(history) + 1, epochs + 1):
            if state.stopped:
                break
            start = time.perf_counter()
            train_loss, step_losses = self._epoch(x, y, epoch, epochs, on_step)
            seconds = time.perf_counter() - start
            metrics = self._measure(x_test, y_test) if has_test else {}
            record = EpochRecord(epoch, train_loss, metrics, seconds, step_losses)
            history.append(record)
            if self.verbose:
                print(self.summary(record, held_out))
            if tol is not None:
                state.stale = state.stale + 1 if train_loss > state.best - tol else 0
                state.best = min(state.best, train_loss)
                state.stopped = state.stale >= patience
            if self.scheduler is not None:
                self.scheduler.step()
            if self.checkpoint is not None:
                self._save_checkpoint(self.checkpoint, state, len(x[0]))
            if on_epoch is not None:
                on_epoch(record)
        return history

    def summary(self, record: EpochRecord, held_out: str = "test") -> str:
        """The line printed after an epoch: ``=== Epoch 3 Summary === train loss: 0.1377 test accuracy 0.9600``."""
        if record.metrics:
            shown = " ".join(f"{name} {value:.4f}" for name, value in record.metrics.items())
        else:
            shown = f"{self.metric.name} n/a"
        return f"=== Epoch {record.epoch} Summary === train loss: {record.train_loss:.4f} {held_out} {shown}"

    def _epoch(
        self, x: tuple[np.ndarray, ...], y: np.ndarray, epoch: int, epochs: int, on_step: Callable[..., Any] | None
    ) -> tuple[float, list[float]]:
        assert self.optimizer is not None
        size = self.batch_size
        self.graph.train()
        samples = len(y)
        order = self.rng.permutation(samples)
        xs, ys = tuple(part[order] for part in x), y[order]
        steps = (samples + size - 1) // size
        bar = self._bar(steps, epoch, epochs)
        total = 0.0
        losses: list[float] = []
        self.optimizer.zero_grad()
        try:
            # Floating-point errors raise, so a step whose numbers overflow stops before the
            # optimizer applies it: the parameters stay those of the last good step.
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                for index, begin in enumerate(range(0, samples, size)):
                    yb = ys[begin : begin + size]
                    try:
                        value = self._run("_train_step", _rows(xs, begin, begin + size), yb, self.optimizer)
                    except (TapegradError, FloatingPointError) as exc:
                        if not _diverging(exc):
                            raise
                        self.graph.clear()
                        self._diverged(epoch, index + 1, steps, exc)
                    value = float(value)
                    losses.append(value)
                    total += value * len(yb)
                    if on_step is not None:
                        on_step(epoch, index + 1, value)
                    if bar is not None and index % 64 == 63:
                        bar.update(64)
        finally:
            if bar is not None:
                bar.close()
        return total / samples, losses

    def _diverged(self, epoch: int, step: int, steps: int, cause: BaseException) -> None:
        assert self.optimizer is not None
        finite = all(np.isfinite(v.value).all() for v in self.optimizer.variables)
        state = (
            "the parameters are those of the last good step"
            if finite
            else "WARNING: the parameters already hold non-finite values"
        )
        raise TrainingError(
            f"the numbers became non-finite at epoch {epoch}, step {step} of {steps} ({cause}); training stopped "
            f"and {state}. Try a smaller learning rate (now {self.optimizer.lr:g})."
        ) from cause

    def _bar(self, steps: int, epoch: int, epochs: int) -> Any:
        if not _progress_enabled(self.progress):
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", leave=False, unit="step", file=sys.stderr)

    # -- evaluation -----------------------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        """Class predictions (argmax over the last axis of the model's output) from forward passes in eval mode."""
        first = self._outputs(self._inputs(x, "Trainer.predict"))
        first = first[0] if isinstance(first, tuple) else first
        return np.asarray(np.asarray(first).argmax(axis=-1))

    def evaluate(self, x: Any, y: Any) -> dict[str, float]:
        """Every value the metric measures on ``(x, y)``, the main one first; computed in eval mode."""
        return self._measure(*self._check_data(x, y, "Trainer.evaluate"))

    def _measure(self, x: tuple[np.ndarray, ...], y: np.ndarray) -> dict[str, float]:
        metric = self.metric
        loss = None
        if metric.uses_loss:
            outputs, loss = self._outputs(x, y, keep=metric.uses_outputs)
        else:
            outputs = self._outputs(x)
        value = metric(outputs if metric.uses_outputs else None, y, inputs=x, loss=loss)
        if isinstance(value, Mapping):
            values = {str(k): float(v) for k, v in value.items()}
            if not values or next(iter(values)) != metric.name:
                raise InputTypeError(
                    f"{type(metric).__name__}: a metric returning a dict must give its main value, {metric.name!r}, "
                    f"first; got {list(values)}"
                )
            return values
        return {metric.name: float(value)}

    def test(self, x: Any, y: Any) -> float:
        """The main metric value on ``(x, y)`` (accuracy for a classification model)."""
        return next(iter(self._measure(*self._check_data(x, y, "Trainer.test")).values()))

    def _outputs(self, x: tuple[np.ndarray, ...], y: np.ndarray | None = None, *, keep: bool = True) -> Any:
        """The model's outputs on ``x`` in eval mode, batch by batch (``eval_batch_size``); with ``y``,
        also the mean loss weighted by the batches' sizes: ``(outputs, loss)``."""
        graph = self.graph
        samples = len(x[0])
        size = self.eval_batch_size or samples
        parts: list[Any] = []
        total = 0.0
        was_training = graph.train_state
        graph.eval()
        try:
            for begin in range(0, samples, size):
                rows = _rows(x, begin, begin + size)
                if y is None:
                    parts.append(_arrays(self._run("_predict_step", rows)))
                    continue
                yb = y[begin : begin + size]
                out, value = self._run("_evaluate_step", rows, yb)
                total += float(value) * len(yb)
                if keep:
                    parts.append(_arrays(out))
        finally:
            graph.train_state = was_training
        outputs = _joined(parts) if parts else None
        return outputs if y is None else (outputs, total / samples)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _save_checkpoint(self, path: str | os.PathLike[str], state: _RunState, samples: int) -> None:
        """Write everything a resumed run needs to ``path`` atomically: parameters, optimizer and scheduler
        state, the epoch and the history, the early-stopping state, the data order's and the graph's
        generators, the Trainer's settings and ``configuration`` (format: ``tapegrad.checkpoint``).
        Raises TrainingError when it cannot be written (the previous checkpoint stays whole)."""
        assert self.optimizer is not None
        parameters = self.graph.parameter.variable_dict
        history = state.history
        content = {
            "written_by": _written_by(),
            "model": self._model_spec(),
            "parameters": {name: v.value for name, v in parameters.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "trainer": self._settings(samples),
            "configuration": self.configuration,
            "epoch": len(history),
            "history": [
                {"epoch": r.epoch, "train_loss": r.train_loss, "metrics": r.metrics, "seconds": r.seconds,
                 "steps": len(r.step_losses)}
                for r in history
            ],
            "step_losses": np.asarray(history.step_losses, dtype=np.float64),
            "early_stopping": {"best": state.best, "stale": state.stale, "stopped": state.stopped},
            "generators": {"data_order": _generator_state(self.rng), "graph": _generator_state(self.graph.rng)},
        }
        where = Path(os.fspath(path))
        try:
            checkpoint_file.write(where, content)
        except TypeError as exc:  # a custom optimizer's attribute that is not data
            raise TrainingError(f"Trainer: cannot write checkpoint {str(where)!r}: {exc}") from None
        except OSError as exc:
            raise TrainingError(
                f"Trainer: cannot write checkpoint {str(where)!r} after epoch {len(history)}: {exc.strerror or exc}; "
                "training stopped (an earlier checkpoint there is left whole)"
            ) from None

    def _model_spec(self) -> dict[str, Any]:
        return {
            "class": type(self.model).__qualname__,
            "parameters": [
                {"name": name, "shape": list(v.shape), "dtype": str(v.dtype)}
                for name, v in self.graph.parameter.variable_dict.items()
            ],
        }

    def _settings(self, samples: int) -> dict[str, Any]:
        assert self.optimizer is not None
        return {
            "optimizer": type(self.optimizer).__name__,
            "scheduler": None if self.scheduler is None else type(self.scheduler).__name__,
            "batch_size": self.batch_size,
            "clip_grad_norm": self.clip_grad_norm,
            "samples": samples,
        }

    def _resume(self, path: Path, samples: int) -> _RunState:
        """Load the checkpoint at ``path`` into the model, optimizer, scheduler and generators, or refuse
        it (ParameterLoadError naming every difference) leaving everything as it was."""
        assert self.optimizer is not None
        parameters = self.graph.parameter.variable_dict
        # A checkpoint holds the parameters, at most three optimizer arrays per parameter, and its history.
        bound = 4 * sum(v.value.nbytes for v in parameters.values()) + (64 << 20)
        found = checkpoint_file.read(path, bound)
        content, label = found.content, found.label
        try:
            differences = self._differences(content, samples)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ParameterLoadError(f"{label} is incomplete or malformed ({exc!r}); nothing was loaded") from None
        if differences:
            raise ParameterLoadError(
                f"{label} was written by another run, so it cannot be resumed here (nothing was loaded): "
                + "; ".join(differences)
                + ". Give another --checkpoint path (or delete this one) to start afresh."
            )
        try:
            state = _RunState(
                _history(content["history"], content["step_losses"]),
                float(content["early_stopping"]["best"]),
                int(content["early_stopping"]["stale"]),
                bool(content["early_stopping"]["stopped"]),
            )
            generators = {}
            for name in ("data_order", "graph"):
                trial = np.random.default_rng()
                trial.bit_generator.state = content["generators"][name]  # (checked on a throw-away generator)
                generators[name] = content["generators"][name]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParameterLoadError(f"{label} is incomplete or malformed ({exc!r}); nothing was loaded") from None
        before = (self.optimizer.state_dict(), None if self.scheduler is None else self.scheduler.state_dict())
        try:
            self.optimizer.load_state_dict(content["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(content["scheduler"])
            self.graph.parameter.load_state_dict(content["parameters"], source=label)
        except (TapegradError, KeyError, TypeError) as exc:
            self.optimizer.load_state_dict(before[0])
            if self.scheduler is not None and before[1] is not None:
                self.scheduler.load_state_dict(before[1])
            raise ParameterLoadError(f"{label} cannot be resumed (nothing was loaded): {exc}") from None
        self.rng.bit_generator.state = generators["data_order"]
        self.graph.rng.bit_generator.state = generators["graph"]
        return state

    def _differences(self, content: Mapping[str, Any], samples: int) -> list[str]:
        """What makes the checkpoint another run's: the model, optimizer, settings or configuration."""
        found = []
        model, here = content["model"], self._model_spec()
        if model["class"] != here["class"]:
            found.append(f"the model is a {model['class']} there and a {here['class']} here")
        theirs = {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in model["parameters"]}
        ours = {p["name"]: (tuple(p["shape"]), p["dtype"]) for p in here["parameters"]}
        missing = [n for n in ours if n not in theirs]
        extra = [n for n in theirs if n not in ours]
        if missing:
            found.append(f"parameters missing there: {', '.join(missing)}")
        if extra:
            found.append(f"parameters only there: {', '.join(extra)}")
        for name in ours.keys() & theirs.keys():
            for i, key in enumerate(("shape", "dtype")):
                if ours[name][i] != theirs[name][i]:
                    found.append(f"{name} has {key} {theirs[name][i]} there and {ours[name][i]} here")
        settings = content["trainer"]
        for key, value in self._settings(samples).items():
            if settings.get(key) != value:
                what = {
                    "samples": "training samples", "batch_size": "batch size", "clip_grad_norm": "gradient clipping"
                }
                found.append(f"{what.get(key, key)}: {settings.get(key)!r} there, {value!r} here")
        saved = content.get("configuration")
        if self.configuration is not None and saved is not None:
            for key in dict.fromkeys([*saved, *self.configuration]):
                if saved.get(key) != self.configuration.get(key):
                    found.append(f"{key}: {saved.get(key)!r} there, {self.configuration.get(key)!r} here")
        return found


@dataclass
class _RunState:
    """What a run carries from epoch to epoch besides the model: its history and early-stopping state."""

    history: History
    best: float
    stale: int
    stopped: bool


def _history(rows: list[Mapping[str, Any]], step_losses: np.ndarray) -> History:
    history = History()
    at = 0
    for row in rows:
        steps = int(row["steps"])
        losses = [float(v) for v in step_losses[at : at + steps]]
        if len(losses) != steps:
            raise ValueError(f"epoch {row['epoch']} counts {steps} step losses, the file has fewer")
        at += steps
        metrics = {str(k): float(v) for k, v in dict(row["metrics"]).items()}
        history.append(EpochRecord(int(row["epoch"]), float(row["train_loss"]), metrics, float(row["seconds"]), losses))
    return history


def _written_by() -> str:
    from .version import __version__

    return f"tapegrad {__version__}"
