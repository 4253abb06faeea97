"""Ready-made models, written the way the seed's article writes them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import ParameterLoadError
from .graph import Graph
from .hookspecs import hookimpl
from .parameter import EXPANSION, EXPANSION_FLOOR, ParameterFile
from .tasks import MemoryEstimate, Task, TaskData, number
from .variable import Variable

__all__ = ["MLP", "Linear", "LinearTask", "MLPTask"]


class MLP:
    """The seed's 3-layer network: Affine -> Sigmoid -> Affine -> SoftmaxLoss.

    ``forward(x)`` returns class probabilities (a Variable); ``loss(target)`` the mean
    cross-entropy of the last forward against integer labels.
    """

    def __init__(
        self, input_size: int, hidden_size: int, output_size: int, *, seed: int | None = None, dtype: Any = np.float64
    ) -> None:
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.graph = Graph("MLP", seed=seed, dtype=dtype)
        # Qualified names: a third-party plugin offering "Affine" or "Sigmoid" must not change this model.
        self.affine1 = self.graph.get_operation("layers:Affine", [input_size, hidden_size])
        self.sigmoid = self.graph.get_operation("activations:Sigmoid")
        self.affine2 = self.graph.get_operation("layers:Affine", [hidden_size, output_size])
        self.softmax_loss = self.graph.get_operation("losses:SoftmaxLoss")

    def forward(self, x: Any) -> Variable:
        return self.softmax_loss.forward(  # type: ignore[no-any-return]
            self.affine2.forward(self.sigmoid.forward(self.affine1.forward(x)))
        )

    def loss(self, target: Any) -> float:
        return self.softmax_loss.loss(target)  # type: ignore[attr-defined,no-any-return]

    def __repr__(self) -> str:
        return f"MLP({self.input_size}, {self.hidden_size}, {self.output_size})"


class Linear:
    """The seed's linear model, the baseline its MLP is measured against: Affine -> SoftmaxLoss
    (multinomial logistic regression). ``forward``/``loss`` as ``MLP``'s."""

    def __init__(self, input_size: int, output_size: int, *, seed: int | None = None, dtype: Any = np.float64) -> None:
        self.input_size, self.output_size = input_size, output_size
        self.graph = Graph("Linear", seed=seed, dtype=dtype)
        self.affine = self.graph.get_operation("layers:Affine", [input_size, output_size])
        self.softmax_loss = self.graph.get_operation("losses:SoftmaxLoss")

    def forward(self, x: Any) -> Variable:
        return self.softmax_loss.forward(self.affine.forward(x))  # type: ignore[no-any-return]

    def loss(self, target: Any) -> float:
        return self.softmax_loss.loss(target)  # type: ignore[attr-defined,no-any-return]

    def __repr__(self) -> str:
        return f"Linear({self.input_size}, {self.output_size})"


MAX_HIDDEN = 10**6  # a 64-1000000-10 MLP already takes over 1 GB with its gradients
hidden_size = number(int, 1, maximum=MAX_HIDDEN)



# -- tapegrad's own: the seed's MLP and linear model on scikit-learn's digits -----------------------------


class _Digits(Task):
    """scikit-learn's 8x8 digits (features / 16, a seeded 75/25 split), as the seed loads them."""

    held_out = "test"

    def load_data(self) -> TaskData:
        from .datasets import load_digits

        x_train, x_test, y_train, y_test = load_digits(seed=self.options.seed)
        return TaskData(x_train, y_train, x_test, y_test).limited(getattr(self.options, "limit", None))

    def _estimate(self, data: TaskData, widths: list[int]) -> MemoryEstimate:
        """Affine layers of ``widths`` (input, hidden..., classes): parameters and the arrays of a pass."""
        weights = [a * b for a, b in itertools.pairwise(widths)]
        # Per sample: the input, and for each layer's output (an activation's too) its value, its
        # gradient and a temporary in training; its value and a temporary in a held-out pass.
        outputs = 2 * sum(widths[1:])
        return self.estimate(data, weights, sum(widths[1:]), widths[0] + 3 * outputs, widths[0] + 2 * outputs)


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
        return Linear(data.x_train.shape[1], 10, seed=self.options.seed, dtype=self.options.dtype)

    def describe(self, model: Any, data: TaskData) -> str:
        return f"Linear {model.input_size}-{model.output_size}"

    def memory_estimate(self, data: TaskData) -> MemoryEstimate:
        return self._estimate(data, [data.x_train.shape[1], 10])


def _mlp_shapes(inputs: int, hidden: int, outputs: int) -> dict[str, tuple[int, ...]]:
    return {
        "affine_0.W": (inputs, hidden),
        "affine_0.b": (hidden,),
        "affine_1.W": (hidden, outputs),
        "affine_1.b": (outputs,),
    }


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
        raise ParameterLoadError(
            f"{source.label} does not fit these parameters (nothing was loaded): {'; '.join(wrong)}"
        )


@hookimpl
def tapegrad_models() -> list[type[Task]]:
    return [MLPTask, LinearTask]
