"""scikit-learn estimators built on tapegrad: ``MLPClassifier`` and ``MLPRegressor``.

They follow scikit-learn's conventions (parameters stored unchanged by ``__init__``,
validation through scikit-learn's utilities, fitted attributes ending in ``_``) and pass
``sklearn.utils.estimator_checks``. Needs scikit-learn: ``pip install 'tapegrad[data]'``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .graph import Graph
from .optim import SGD, Adam
from .training import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"sigmoid": "Sigmoid", "logistic": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


class _Network:
    """Affine -> activation -> ... -> Affine -> loss, on one Graph (the model Trainer expects)."""

    def __init__(
        self, sizes: list[int], activation: str, loss: str, task: str, seed: int | None
    ) -> None:
        self.task = task
        self.input_size = sizes[0]
        self.output_size = sizes[-1] if task == "classification" else None
        self.graph = Graph("MLP", seed=seed)
        self.layers = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            self.layers.append(self.graph.get_operation("Affine", [fan_in, fan_out]))
            if i < len(sizes) - 2:
                self.layers.append(self.graph.get_operation(_ACTIVATIONS[activation]))
        self.loss_op = self.graph.get_operation(loss)

    def forward(self, x: Any) -> Any:
        for layer in self.layers:
            x = layer(x)
        return self.loss_op.forward(x)

    def loss(self, target: Any) -> float:
        return self.loss_op.loss(target)  # type: ignore[no-any-return]


class _BaseMLP(BaseEstimator):
    _task = "classification"
    _loss = "SoftmaxLoss"

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (30,),
        activation: str = "sigmoid",
        optimizer: str = "sgd",
        learning_rate: float = 0.3,
        batch_size: int = 32,
        max_epochs: int = 200,
        momentum: float = 0.0,
        alpha: float = 0.0,
        tol: float | None = 1e-4,
        n_iter_no_change: int = 10,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.momentum = momentum
        self.alpha = alpha
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> tuple[int, ...]:
        sizes: Any = self.hidden_layer_sizes
        hidden = (sizes,) if np.isscalar(sizes) else tuple(sizes)
        if not hidden or any(int(h) < 1 for h in hidden):
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if int(self.batch_size) < 1 or int(self.max_epochs) < 1:
            raise ValueError(f"batch_size and max_epochs must be at least 1, got {self.batch_size!r}, {self.max_epochs!r}")
        return tuple(int(h) for h in hidden)

    def _seed(self) -> int | None:
        state: Any = self.random_state
        if state is None:
            return None
        if isinstance(state, (int, np.integer)):
            return int(state)
        return int(state.randint(np.iinfo(np.int32).max))  # a RandomState instance

    def _fit_network(self, x: np.ndarray, y: np.ndarray, outputs: int) -> None:
        hidden = self._check_params()
        seed = self._seed()
        network = _Network([x.shape[1], *hidden, outputs], self.activation, self._loss, self._task, seed)
        params = network.graph.parameter
        if self.optimizer == "sgd":
            opt: Any = SGD(params, self.learning_rate, momentum=self.momentum, weight_decay=self.alpha)
        else:
            opt = Adam(params, self.learning_rate, weight_decay=self.alpha)
        trainer = Trainer(network, opt, batch_size=min(int(self.batch_size), len(x)), progress=False,
                          seed=seed, verbose=bool(self.verbose))
        history = trainer.train(x, y, epochs=int(self.max_epochs), tol=self.tol, patience=int(self.n_iter_no_change))
        self.loss_curve_ = history.train_loss
        self.n_epochs_ = len(history)
        self.network_: _Network | None = network

    def _forward(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "network_")
        x = validate_data(self, X, reset=False, dtype=np.float64)
        network = self.network_
        assert network is not None
        graph = network.graph
        graph.eval()
        try:
            return np.asarray(network.forward(x).value)
        finally:
            graph.train()

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weight matrices, input to output (as scikit-learn's MLP names them)."""
        check_is_fitted(self, "network_")
        return [layer.W.value for layer in self.network_.layers if hasattr(layer, "W")]  # type: ignore[union-attr]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        check_is_fitted(self, "network_")
        return [layer.b.value for layer in self.network_.layers if hasattr(layer, "b")]  # type: ignore[union-attr]


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained with tapegrad (softmax cross-entropy).

    Parameters are stored as given; ``fit`` validates them. Fitted: ``classes_``,
    ``n_features_in_`` (``feature_names_in_`` for DataFrames), ``loss_curve_``,
    ``n_epochs_``, ``coefs_``, ``intercepts_``.
    """

    def fit(self, X: Any, y: Any) -> MLPClassifier:
        x, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) == 1:
            # one class: nothing to learn, every prediction is that class
            self.network_ = None
            self.loss_curve_, self.n_epochs_ = [], 0
            return self
        self._fit_network(x, encoded.astype(np.int64), len(self.classes_))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")
        if self.network_ is None:
            x = validate_data(self, X, reset=False, dtype=np.float64)
            return np.ones((len(x), 1))
        return self._forward(X)

    def predict(self, X: Any) -> np.ndarray:
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]  # type: ignore[no-any-return]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained with tapegrad (squared error). Targets are
    standardised inside ``fit`` and mapped back by ``predict``; 2-D targets give multi-output."""

    _task = "regression"
    _loss = "SquareLoss"

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def fit(self, X: Any, y: Any) -> MLPRegressor:
        x, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        targets = y.reshape(len(y), -1)
        self._y_mean = targets.mean(axis=0)
        scale = targets.std(axis=0)
        self._y_scale = np.where(scale > 0, scale, 1.0)
        self._fit_network(x, (targets - self._y_mean) / self._y_scale, targets.shape[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        out = self._forward(X) * self._y_scale + self._y_mean
        return out[:, 0] if self._y_1d else out
