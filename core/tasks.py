"""Runnable models ("tasks"): what ``tapegrad train --model NAME`` and ``tapegrad evaluate --model NAME`` run.

A task knows a data set, a network for it, how to measure it and the settings it trains with by
default. Plugins offer tasks through the hook ``tapegrad_models()`` (``tapegrad.hookspecs``), in the
same entry-point group as operations; tapegrad's own ``mlp`` and ``linear`` arrive the same way, from
``tapegrad.models`` (entry point ``models``). ``tapegrad train --help`` lists every installed one.

**Writing one.** Subclass ``Task``; ``name``, ``summary``, ``load_data`` and ``build_model`` are
required, everything else has a default::

    import tapegrad as tg
    from tapegrad.tasks import Task, TaskData
    from tapegrad.training import Perplexity

    class CharLSTM(Task):
        name = "char-lstm"                       # --model char-lstm
        summary = "a character language model (Embedding -> LSTM -> Affine -> SoftmaxLoss)"
        held_out = "validation"                  # printed as "validation perplexity"
        epochs, batch_size, lr, optimizer = 10, 32, 3e-3, "adam"    # the defaults of the common options

        @classmethod
        def add_arguments(cls, parser, command):  # its own options, for "train" and "evaluate"
            parser.add_argument("--text", metavar="FILE", help="train on this text instead of the bundled corpus")

        def load_data(self):                     # self.options: every option, its own included
            ids = encode(read(self.options.text))
            ...                                  # honour self.options.limit (the CLI also cuts to it)
            return TaskData(x_train, y_train, x_valid, y_valid, info={"vocabulary": vocabulary})

        def build_model(self, data):             # in self.options.dtype, seeded by self.options.seed
            return CharModel(len(data.info["vocabulary"]), seed=self.options.seed, dtype=self.options.dtype)

        def final_report(self, model, data):     # printed after training and after evaluate
            return "sample: " + sample_text(model, data.info["vocabulary"])

    @tg.hookimpl
    def tapegrad_models():
        return [CharLSTM]

Also overridable: ``describe(model, data)`` (the model in a few words, for the first line printed),
``epoch_report(model, record)`` (a line after each epoch's summary), ``memory_estimate(data)`` (what a
run would hold, refused before anything is built when it cannot fit; ``self.estimate(...)`` makes one from
the model's sizes), ``model_for_file(source, data)``
(the model ``evaluate`` loads a file into) and ``eval_batch_size`` (held-out passes in batches).
``tapegrad.tasks.number(int, 1, maximum=...)`` is an argparse type for bounded numeric options.

**The model** a task builds is what ``tapegrad.Trainer`` trains: ``.graph``, ``forward(*inputs)`` and
``loss(target)``; it names its ``metric`` (a ``tapegrad.training.Metric``: ``Accuracy``,
``Perplexity``, or one of the task's own, such as a character error rate) and may define
``check_target(y, where)`` (its labels' check), ``task`` and ``ignore_index`` (see ``Trainer``).
The data's inputs are an array or a tuple of arrays (token ids ``(N, T)`` and input lengths ``(N,)``),
one entry per sample along axis 0; the labels one entry per sample (``(N,)``, ``(N, T)``, padded ``(N, S)``).
Its step must capture cleanly (``graph.capture``: no Python work on values inside forward); the
Trainer falls back to eager with a ``CaptureWarning`` otherwise.

**The command** parses the common options (``--epochs``, ``--batch-size``, ``--lr``, ``--optimizer``,
``--clip``, ``--schedule``, ``--seed``, ``--limit``, ``--dtype``, ``--checkpoint``, ``--save``, ...) and
the task's own, then: ``load_data()``, cuts the training set to ``--limit``, refuses a run whose
``memory_estimate`` exceeds the memory the process may use, ``build_model(data)``, trains with the
Trainer (printing its summary line and ``epoch_report`` after each epoch), prints the final metric and
``final_report``. ``tapegrad evaluate --model NAME --load FILE`` calls ``load_data()``, then
``model_for_file`` (by default ``build_model`` and an all-or-nothing load of the file), and prints the
metric on the held-out data and ``final_report``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .parameter import ParameterFile

__all__ = ["Task", "TaskData", "MemoryEstimate", "number"]

def number(kind: type, minimum: float, *, inclusive: bool = True, maximum: float | None = None) -> Any:
    """An argparse ``type`` for an option's value: ``kind`` (int or float), finite, at least (or, not
    ``inclusive``, above) ``minimum`` and at most ``maximum``; the message says which bound was missed."""
    what = "a whole number" if kind is int else "a number"
    show = str if kind is int else "{:g}".format

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:  # checked first: a huge int is no float
            raise argparse.ArgumentTypeError(f"expected {what} from {show(minimum)} to {show(maximum)}, got {text}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if value < minimum or (not inclusive and value == minimum):
            bound = f"at least {show(minimum)}" if inclusive else f"above {show(minimum)}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _first(data: Any, count: int) -> Any:
    """The first ``count`` samples of an array or of each array of a tuple."""
    return tuple(part[:count] for part in data) if isinstance(data, tuple) else data[:count]


def _count(data: Any) -> int:
    return len(data[0]) if isinstance(data, tuple) else len(data)


@dataclass
class TaskData:
    """A task's data: training and held-out inputs and labels, one entry per sample along axis 0.

    Inputs are an array or a tuple of arrays (every one with the same number of samples); ``info``
    keeps whatever else the task needs later (a vocabulary, the corpus' source).
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def train_samples(self) -> int:
        return _count(self.x_train)

    @property
    def test_samples(self) -> int:
        return _count(self.x_test)

    def limited(self, count: int | None) -> TaskData:
        """The first ``count`` training samples (all of them for None); the held-out data unchanged."""
        if count is None:
            return self
        return replace(self, x_train=_first(self.x_train, count), y_train=self.y_train[:count])


@dataclass
class MemoryEstimate:
    """What a training run holds at its peak, in bytes: ``parameters`` (values, gradients, optimizer
    state and the step's temporary) and ``activations`` (what the larger of a training step and a
    held-out pass holds: outputs, saved arrays, gradients); ``batch`` is that pass's sample count."""

    parameters: int
    activations: int
    batch: int

    @property
    def total(self) -> int:
        return self.parameters + self.activations


class Task:
    """A runnable model: data, network, metric and default settings (see the module docstring).

    Class attributes: ``name`` (the ``--model`` name: lowercase letters, digits and single hyphens),
    ``summary`` (one line, for ``--help``), ``held_out`` (what the held-out data is called in messages:
    ``test``, ``validation``), the defaults of the common options (``epochs``, ``batch_size``, ``lr``:
    None for the optimizer's own default, ``optimizer``: ``sgd``, ``adam`` or ``adamw``) and
    ``eval_batch_size`` (held-out passes in batches of this many samples; None: one batch).

    An instance holds ``options``, the parsed command line: the common options (``epochs``,
    ``batch_size``, ``lr``, ``optimizer``, ``seed``, ``limit``, ``dtype`` as a numpy dtype) and the task's
    own; ``tapegrad evaluate`` gives ``seed``, ``dtype`` and the task's own (``dtype`` None: the file's).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    held_out: ClassVar[str] = "test"
    epochs: ClassVar[int] = 10
    batch_size: ClassVar[int] = 32
    lr: ClassVar[float | None] = None
    optimizer: ClassVar[str] = "sgd"
    eval_batch_size: ClassVar[int | None] = None

    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options

    @classmethod
    def add_arguments(cls, parser: Any, command: str) -> None:
        """Add the task's own options to ``parser`` (an argparse group) for ``command`` ("train" or
        "evaluate"); their values arrive in ``self.options``."""

    def load_data(self) -> TaskData:
        """The data, honouring ``options.limit`` (the first N training samples; the command cuts to it
        afterwards anyway), ``options.dtype`` and ``options.seed`` (the split)."""
        raise NotImplementedError(f"{type(self).__name__} must define load_data()")

    def build_model(self, data: TaskData) -> Any:
        """A new model for ``data``, in ``options.dtype``, seeded by ``options.seed``."""
        raise NotImplementedError(f"{type(self).__name__} must define build_model(data)")

    def describe(self, model: Any, data: TaskData) -> str:
        """The model in a few words, for the line ``tapegrad train`` starts with (``MLP 64-30-10``)."""
        return repr(model)

    def epoch_report(self, model: Any, record: Any) -> str | None:
        """Printed after the Trainer's summary line of each epoch (``record``: its ``EpochRecord``)."""
        return None

    def final_report(self, model: Any, data: TaskData) -> str | None:
        """Printed at the end of ``tapegrad train`` and ``tapegrad evaluate`` (a sampled text, say)."""
        return None

    def memory_estimate(self, data: TaskData) -> MemoryEstimate | None:
        """What training with ``options`` would hold at its peak, computed before anything is allocated;
        None when the task cannot say (then nothing is refused). ``estimate`` makes one from sizes."""
        return None

    def estimate(
        self, data: TaskData, weights: list[int], others: int, per_sample: int, per_held_out_sample: int
    ) -> MemoryEstimate:
        """A ``MemoryEstimate`` from the model's sizes, in entries: its weight matrices (``weights``), its
        other parameters (``others``: biases), and what one sample holds in a training step
        (``per_sample``: outputs, saved arrays, gradients) and in a held-out pass. The parameters count
        twice (values, gradients), four times with Adam's state, plus the step's temporary (the largest
        weight); the batches are ``options.batch_size`` and ``eval_batch_size``, at most the data's."""
        itemsize = np.dtype(self.options.dtype or np.float64).itemsize
        copies = 4 if self.options.optimizer in ("adam", "adamw") else 2
        parameters = itemsize * ((sum(weights) + others) * copies + max(weights))
        train_batch = min(self.options.batch_size, data.train_samples)
        test_batch = min(self.eval_batch_size or data.test_samples, data.test_samples)
        training, held_out = train_batch * per_sample, test_batch * per_held_out_sample
        return MemoryEstimate(
            parameters, itemsize * max(training, held_out), train_batch if training >= held_out else test_batch
        )

    def model_for_file(self, source: ParameterFile, data: TaskData) -> Any:
        """The model ``tapegrad evaluate`` measures: ``build_model(data)`` with the file's values loaded
        (all or nothing; a file that does not fit raises ParameterLoadError naming every difference).
        ``options.dtype`` None means the file's dtype."""
        if self.options.dtype is None:
            dtypes = set(source.dtypes.values())
            self.options.dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float64)
        model = self.build_model(data)
        model.graph.parameter.load(source)
        return model
