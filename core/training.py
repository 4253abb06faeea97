"""``Trainer``: the seed's training loop (shuffle, step, epoch summary), kept out of the
autodiff core. tqdm is used for the progress bar when it is installed and output is a terminal."""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arguments import check_number
from .errors import (
    CaptureError,
    CaptureWarning,
    NonFiniteError,
    ShapeError,
    TapegradError,
    TrainingError,
)
from .graph import Graph
from .optim import Optimizer
from .variable import Variable

__all__ = ["Trainer", "EpochRecord", "History"]


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    test_accuracy: float | None
    seconds: float


class History(list):  # type: ignore[type-arg]
    """One ``EpochRecord`` per epoch, with column accessors."""

    @property
    def train_loss(self) -> list[float]:
        return [r.train_loss for r in self]

    @property
    def test_accuracy(self) -> list[float | None]:
        return [r.test_accuracy for r in self]

    @property
    def seconds(self) -> list[float]:
        return [r.seconds for r in self]


def _graph_of(model: Any) -> Graph:
    graph = model if isinstance(model, Graph) else getattr(model, "graph", None)
    if not isinstance(graph, Graph):
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


class Trainer:
    """Trains a model (``.graph``, ``forward(x)``, ``loss(y)``) with an optimizer.

    Labels are checked as class indices unless the model says ``task = "regression"``
    (then targets are float arrays); ``input_size``/``output_size`` on the model enable
    the feature-count and label-range checks.

    ``train`` shuffles every epoch (seeded), steps through mini-batches, prints the seed's
    summary line after each epoch (``verbose``) and returns a ``History``. ``test``
    returns accuracy from one batched forward pass in eval mode (``optimizer`` may be None
    for a Trainer that only evaluates).

    With ``capture`` (the default) the train step and the batched prediction are captured
    steps (``graph.capture``): recorded once per batch shape, verified against eager on
    their first replay, then replayed; ``capture=False`` runs every step eagerly. Training
    refuses non-finite data and runs with numpy's floating-point errors raised, so a step
    whose numbers overflow stops training before the optimizer applies it.
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
    ) -> None:
        self.batch_size = check_number("Trainer", "batch_size", batch_size, low=1, integer=True)
        self.model = model
        self.graph = _graph_of(model)
        self.optimizer = optimizer
        self.progress = progress
        self.verbose = verbose
        self.rng = np.random.default_rng(seed)
        self.capture = bool(capture)
        self._train_step: Any = self.graph.capture(self._step) if self.capture else self._step
        self._predict_step: Any = self.graph.capture(self._forward) if self.capture else self._forward

    def _step(self, x: np.ndarray, y: np.ndarray, optimizer: Optimizer) -> float:
        """One training step: forward, loss, backward, the optimizer's step and zero_grad. (The
        optimizer is an argument so that a captured step records anew when it is replaced.)"""
        self.model.forward(x)
        value = self.model.loss(y)
        self.graph.backward()
        optimizer.step()
        optimizer.zero_grad()
        return value  # type: ignore[no-any-return]

    def _forward(self, x: np.ndarray) -> Any:
        return self.model.forward(x)

    def _run(self, which: str, *args: Any) -> Any:
        """Call the captured ``_train_step`` or ``_predict_step``; a model whose step cannot be
        captured (Python work on its input inside forward, say) goes on eagerly, with a warning."""
        step = getattr(self, which)
        tape = self.graph.tape
        if tape.entries or tape.losses:  # the user's pass in flight: not a reason to stop capturing
            if which == "_predict_step":
                return self._forward(*args)  # (eval mode leaves the tape alone)
            raise TrainingError(
                f"Trainer.train: graph {self.graph.name!r} has a forward pass in flight ({len(tape.entries)} "
                "applications on its tape); call graph.backward() or graph.clear() before training"
            )
        try:
            return step(*args)
        except CaptureError as exc:
            # Both steps go eager: they share the model's forward, so what stops one from being
            # captured (Python work on the input, say) makes the other's record suspect too.
            self.graph.clear()
            self._train_step, self._predict_step = self._step, self._forward
            warnings.warn(
                f"Trainer: this model's {'training' if which == '_train_step' else 'prediction'} step cannot be "
                f"captured, so training and prediction run eagerly from now on ({exc}). Pass "
                "Trainer(capture=False) to choose that.",
                CaptureWarning,
                stacklevel=3,
            )
            eager = getattr(self, which)
            return exc.eager_result if exc.eager_result is not None else eager(*args)

    # -- validation ----------------------------------------------------------------------
    def _check_data(self, x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        x = self._inputs(x, what)
        regression = getattr(self.model, "task", "classification") == "regression"
        y = _samples(y, "y", what, "(samples, ...)" if regression else "(samples,)")
        if len(x) == 0:
            raise TrainingError(f"{what}: the data set is empty")
        if len(x) != len(y):
            raise TrainingError(f"{what}: x has {len(x)} samples but y has {len(y)}")
        width = getattr(self.model, "input_size", None)
        if width is not None and (x.ndim != 2 or x.shape[1] != width):
            raise TrainingError(f"{what}: the model expects {width} features per sample, got x of shape {x.shape}")
        if x.dtype.kind != "f":
            x = x.astype(self.graph.dtype)
        if regression:
            return x, y.astype(self.graph.dtype, copy=False)
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)):
            raise TrainingError(f"{what}: labels must be integers, got non-integral values")
        # The range is checked on the labels as given: a float beyond int64 would cast to garbage.
        classes = getattr(self.model, "output_size", None)
        if y.size and (y.min() < 0 or (classes is not None and y.max() >= classes)):
            bad = y.min() if y.min() < 0 else y.max()
            limit = f"[0, {classes})" if classes is not None else "non-negative"
            raise TrainingError(f"{what}: label {bad} is out of range {limit}")
        if y.dtype.kind == "f":
            if y.size and y.max() >= 2**63:
                raise TrainingError(f"{what}: label {y.max()} is too large for a class index")
            y = y.astype(np.int64)
        return x, y

    def _inputs(self, x: Any, what: str) -> np.ndarray:
        width = getattr(self.model, "input_size", None)
        return _samples(x, "x", what, f"(samples, {width})" if width is not None else "(samples, ...)")

    # -- training ------------------------------------------------------------------------
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
    ) -> History:
        """Train for ``epochs``; returns per-epoch train loss, test accuracy and seconds.

        With ``tol``, training stops early once the train loss has not improved by at least
        ``tol`` for ``patience`` consecutive epochs (scikit-learn's ``tol``/``n_iter_no_change``).
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
        history = History()
        best, stale = np.inf, 0
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            train_loss = self._epoch(x, y, epoch, epochs)
            seconds = time.perf_counter() - start
            accuracy = self.test(x_test, y_test) if has_test else None
            history.append(EpochRecord(epoch, train_loss, accuracy, seconds))
            if self.verbose:
                shown = f"{accuracy:.4f}" if accuracy is not None else "n/a"
                print(f"=== Epoch {epoch} Summary === train loss: {train_loss:.4f} test accuracy {shown}")
            if tol is not None:
                stale = stale + 1 if train_loss > best - tol else 0
                best = min(best, train_loss)
                if stale >= patience:
                    break
        return history

    def _epoch(self, x: np.ndarray, y: np.ndarray, epoch: int, epochs: int) -> float:
        assert self.optimizer is not None
        size = self.batch_size
        self.graph.train()
        order = self.rng.permutation(len(x))
        xs, ys = x[order], y[order]
        steps = (len(x) + size - 1) // size
        bar = self._bar(steps, epoch, epochs)
        total = 0.0
        self.optimizer.zero_grad()
        try:
            # Floating-point errors raise, so a step whose numbers overflow stops before the
            # optimizer applies it: the parameters stay those of the last good step.
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                for index, begin in enumerate(range(0, len(x), size)):
                    yb = ys[begin : begin + size]
                    try:
                        value = self._run("_train_step", xs[begin : begin + size], yb, self.optimizer)
                    except (TapegradError, FloatingPointError) as exc:
                        if not _diverging(exc):
                            raise
                        self.graph.clear()
                        self._diverged(epoch, index + 1, steps, exc)
                    total += value * len(yb)
                    if bar is not None and index % 64 == 63:
                        bar.update(64)
        finally:
            if bar is not None:
                bar.close()
        return total / len(x)

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

    # -- evaluation ----------------------------------------------------------------------
    def predict(self, x: Any) -> np.ndarray:
        """Class predictions from one batched forward pass in eval mode."""
        return self._predict(self._inputs(x, "Trainer.predict"))

    def _predict(self, x: np.ndarray) -> np.ndarray:
        graph = self.graph
        was_training = graph.train_state
        graph.eval()
        try:
            out = self._run("_predict_step", np.asarray(x, dtype=graph.dtype))
        finally:
            graph.train_state = was_training
        values = out.value if isinstance(out, Variable) else np.asarray(out)
        return np.asarray(values.argmax(axis=-1))

    def test(self, x: Any, y: Any) -> float:
        """Accuracy on ``(x, y)``."""
        x, y = self._check_data(x, y, "Trainer.test")
        return float(np.mean(self._predict(x) == y))
