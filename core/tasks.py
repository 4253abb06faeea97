"""Runnable models ("tasks"): what ``tapegrad train --model NAME`` and ``tapegrad evaluate --model NAME`` run.

A task knows a data set, a network for it, how to measure it and the settings it trains with by
default. Plugins offer tasks through the hook ``tapegrad_models()`` (``tapegrad.hookspecs``), in the
same entry-point group as operations; tapegrad's own ``mlp`` and ``linear`` arrive the same way, from
this module. ``tapegrad train --help`` lists every installed one.

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
run would hold, refused before anything is built when it cannot fit), ``model_for_file(source, data)``
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
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from .errors import ParameterLoadError, PluginUnavailableError
from .hookspecs import hookimpl
from .parameter import ParameterFile

__all__ = ["Task", "TaskData", "MemoryEstimate", "MLPTask", "LinearTask", "find_task", "number", "PACK_MODELS"]

#: Models of tapegrad's contrib packs, so that asking for one that is not installed names what to install.
PACK_MODELS: dict[str, tuple[str, ...]] = {
    "char-lstm": ("tapegrad-rnn",),
    "ctc-digits": ("tapegrad-ctc", "tapegrad-rnn"),
}


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


MAX_HIDDEN = 10**6  # a 64-1000000-10 MLP already takes over 1 GB with its gradients
hidden_size = number(int, 1, maximum=MAX_HIDDEN)
#: A parameter file may describe a model at most this much larger than itself (beyond the floor): more is
#: taken for a zip bomb (the bounds tapegrad.parameter's readers use).
EXPANSION, EXPANSION_FLOOR = 16, 64 << 20


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
        None when the task cannot say (then nothing is refused)."""
        return None

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


def find_task(name: str, registry: Any = None) -> type[Task]:
    """The Task class of model ``name`` (or ``plugin:name``), from the registry's plugins. A model of
    a contrib pack that is not installed raises PluginUnavailableError naming what to install; an
    unknown name raises PluginUnavailableError too, with close matches."""
    from .registry import default_registry

    registry = registry if registry is not None else default_registry()
    try:
        return registry.lookup_model(name).cls  # type: ignore[no-any-return]
    except PluginUnavailableError:
        packs = PACK_MODELS.get(name)
        if packs is None or any(row.name == name for row in registry.models()):  # (offered twice: ambiguous)
            raise
    installed = {p.distribution: p for p in registry.plugins() if p.distribution}
    missing = [pack for pack in packs if pack not in installed]
    if missing:
        raise PluginUnavailableError(
            f"model {name!r} comes with {' and '.join(packs)}, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install {' '.join(missing)} "
            "(from a source checkout: pip install " + " ".join(f"./contrib/{pack}" for pack in missing) + ")",
            missing=tuple(missing),
        )
    broken = [p for pack in packs for p in [installed[pack]] if p.status != "ok"]
    if broken:
        raise PluginUnavailableError(
            f"model {name!r} comes with {' and '.join(packs)}, but "
            + "; ".join(f"plugin {p.label} did not load ({p.status_text})" for p in broken),
            unavailable=tuple(p.name for p in broken),
        )
    raise PluginUnavailableError(
        f"model {name!r} comes with {' and '.join(packs)}, installed here in a version that does not offer it: "
        "pip install --upgrade " + " ".join(packs)
    )


# -- tapegrad's own: the seed's MLP and linear model on scikit-learn's digits -----------------------------


def _parameter_copies(optimizer: str) -> int:
    """Copies of the parameters a run holds: values and gradients, and the optimizer's state."""
    return 2 + (2 if optimizer in ("adam", "adamw") else 0)


class _Digits(Task):
    """scikit-learn's 8x8 digits (features / 16, a seeded 75/25 split), as the seed loads them."""

    held_out = "test"

    def load_data(self) -> TaskData:
        from .datasets import load_digits

        x_train, x_test, y_train, y_test = load_digits(seed=self.options.seed)
        return TaskData(x_train, y_train, x_test, y_test).limited(getattr(self.options, "limit", None))

    def _estimate(self, data: TaskData, widths: list[int]) -> MemoryEstimate:
        """Affine layers of ``widths`` (input, hidden..., classes): parameters and the arrays of a pass."""
        itemsize = np.dtype(self.options.dtype or np.float64).itemsize
        weights = [a * b for a, b in itertools.pairwise(widths)]
        count = sum(weights) + sum(widths[1:])
        parameters = itemsize * (count * _parameter_copies(self.options.optimizer) + max(weights))
        # Per sample: the input, and for each layer's output (an activation's too) its value, its
        # gradient and a temporary in training; its value and a temporary in a held-out pass.
        outputs = 2 * sum(widths[1:])
        train_batch = min(self.options.batch_size, data.train_samples)
        test_batch = min(self.eval_batch_size or data.test_samples, data.test_samples)
        training = train_batch * (widths[0] + 3 * outputs)
        held_out = test_batch * (widths[0] + 2 * outputs)
        return MemoryEstimate(parameters, itemsize * max(training, held_out), train_batch if training >= held_out else test_batch)


class MLPTask(_Digits):
    """The seed's recipe: MLP 64-hidden-10 (sigmoid, softmax loss), SGD at lr 0.3, batch size 1, 40 epochs."""

    name = "mlp"
    summary = "the seed's MLP (64-hidden-10, sigmoid, softmax loss) on scikit-learn's digits"
    epochs, batch_size, lr, optimizer = 40, 1, None, "sgd"

    @classmethod
    def add_arguments(cls, parser: Any, command: str) -> None:
        if command == "train":
            parser.add_argument(
                "--hidden", type=hidden_size, default=30, help=f"hidden units (default 30, at most {MAX_HIDDEN})"
            )
        else:
            parser.add_argument(
                "--hidden", type=hidden_size, default=None,
                help=f"hidden units (default: read from the file; at most {MAX_HIDDEN})",
            )

    def build_model(self, data: TaskData) -> Any:
        from .models import MLP

        return MLP(data.x_train.shape[1], self.options.hidden, 10, seed=self.options.seed, dtype=self.options.dtype)

    def describe(self, model: Any, data: TaskData) -> str:
        return f"MLP {model.input_size}-{model.hidden_size}-{model.output_size}"

    def memory_estimate(self, data: TaskData) -> MemoryEstimate:
        return self._estimate(data, [data.x_train.shape[1], self.options.hidden, 10])

    def model_for_file(self, source: ParameterFile, data: TaskData) -> Any:
        """The MLP the file describes: its hidden size read from the file (or ``--hidden``, which must
        agree), every name and shape checked from the headers before a model is built."""
        inputs, outputs = data.x_train.shape[1], 10
        label = source.label
        first = source.shapes.get("affine_0.W")
        hidden = self.options.hidden
        if first is not None:
            if len(first) != 2 or first[0] != inputs or first[1] < 1:
                raise ParameterLoadError(
                    f"{label} does not fit the digits MLP (nothing was loaded): affine_0.W: shape {first} given, "
                    f"({inputs}, hidden) expected"
                )
            if hidden is not None and first[1] != hidden:
                raise ParameterLoadError(
                    f"{label} does not fit these parameters (nothing was loaded): affine_0.W: shape {first} given, "
                    f"({inputs}, {hidden}) expected"
                )
            hidden = first[1]
        hidden = hidden if hidden is not None else 30
        expected = _mlp_shapes(inputs, hidden, outputs)
        _check_names_and_shapes(source, expected)
        needed = sum(8 * math.prod(shape) for shape in expected.values())
        if needed > max(EXPANSION_FLOOR, EXPANSION * source.file_size):
            raise ParameterLoadError(
                f"{label} describes a hidden size of {hidden} ({needed} bytes of values) in {source.file_size} "
                "bytes: refusing to expand it"
            )
        self.options.hidden = hidden
        return super().model_for_file(source, data)


class LinearTask(_Digits):
    """The seed's linear model: Affine 64-10 and a softmax loss, SGD at lr 0.1, batch size 1, 20 epochs
    (96.4% test accuracy for seed 0; 94.7-97.6% over seeds 0..9)."""

    name = "linear"
    summary = "the seed's linear model (Affine 64-10, softmax loss: the MLP's baseline) on scikit-learn's digits"
    epochs, batch_size, lr, optimizer = 20, 1, 0.1, "sgd"

    def build_model(self, data: TaskData) -> Any:
        from .models import Linear

        return Linear(data.x_train.shape[1], 10, seed=self.options.seed, dtype=self.options.dtype)

    def describe(self, model: Any, data: TaskData) -> str:
        return f"Linear {model.input_size}-{model.output_size}"

    def memory_estimate(self, data: TaskData) -> MemoryEstimate:
        return self._estimate(data, [data.x_train.shape[1], 10])


def _mlp_shapes(inputs: int, hidden: int, outputs: int) -> dict[str, tuple[int, ...]]:
    return {"affine_0.W": (inputs, hidden), "affine_0.b": (hidden,), "affine_1.W": (hidden, outputs), "affine_1.b": (outputs,)}


def _check_names_and_shapes(source: ParameterFile, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse (naming every difference) a file whose names or shapes are not ``expected``."""
    missing = [name for name in expected if name not in source.shapes]
    extra = [name for name in source.shapes if name not in expected]
    wrong = [f"missing: {', '.join(missing)}"] if missing else []
    wrong += [f"unexpected: {', '.join(map(repr, extra))}"] if extra else []
    wrong += [
        f"{name}: shape {source.shapes[name]} given, {shape} expected"
        for name, shape in expected.items()
        if name in source.shapes and source.shapes[name] != shape
    ]
    if wrong:
        raise ParameterLoadError(f"{source.label} does not fit these parameters (nothing was loaded): {'; '.join(wrong)}")


@hookimpl
def tapegrad_models() -> list[type[Task]]:
    return [MLPTask, LinearTask]
