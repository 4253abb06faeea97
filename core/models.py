"""Ready-made models, written the way the seed's article writes them."""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph
from .variable import Variable

__all__ = ["MLP", "Linear"]


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
        return self.softmax_loss.forward(self.affine2.forward(self.sigmoid.forward(self.affine1.forward(x))))  # type: ignore[no-any-return]

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
