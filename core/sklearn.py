"""scikit-learn estimators built on tapegrad: ``MLPClassifier`` and ``MLPRegressor``.

They follow scikit-learn's conventions (parameters stored unchanged by ``__init__``,
validation through scikit-learn's utilities, fitted attributes ending in ``_``) and pass
``sklearn.utils.estimator_checks``. Needs scikit-learn: ``pip install 'tapegrad[data]'``.
"""

from __future__ import annotations

import itertools
from numbers import Integral, Number, Real
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import NonFiniteError, TrainingError
from .graph import Graph
from .optim import SGD, Adam
from .training import Trainer

__all__ = ["MLPClassifier", "MLPRegressor"]

# First-party ops by qualified name: a third-party op of the same name changes nothing here.
_ACTIVATIONS = {
    "sigmoid": "activations:Sigmoid",
    "logistic": "activations:Sigmoid",
    "tanh": "activations:Tanh",
    "relu": "activations:Relu",
}
_AFFINE = "layers:Affine"


def _validate(estimator: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
    """scikit-learn's ``validate_data``. Its quick finiteness test sums the data, which overflows
    (with a RuntimeWarning) for finite values near 1e308 before its exact test decides correctly."""
    with np.errstate(over="ignore", invalid="ignore"):
        return validate_data(estimator, *args, **kwargs)


def _check_label_types(owner: str, y: np.ndarray) -> np.ndarray:
    """Labels in an object array must be all strings or all numbers (they are sorted into ``classes_``);
    numbers come back as a numeric array."""
    if y.dtype != object:
        return y
    kinds = {"str" if isinstance(v, str) else "number" if isinstance(v, Number) else type(v).__name__ for v in y}
    if len(kinds) > 1 or not kinds <= {"str", "number"}:
        raise TrainingError(
            f"{owner}: class labels must be all strings or all numbers; got a mix of {', '.join(sorted(kinds))}"
        )
    return np.asarray(y.tolist()) if kinds == {"number"} else y


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
            self.layers.append(self.graph.get_operation(_AFFINE, [fan_in, fan_out]))
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
    _loss = "losses:SoftmaxLoss"

    # Checked by scikit-learn's own machinery when fit starts (errors are its InvalidParameterError).
    _parameter_constraints: ClassVar[dict[str, list[Any]]] = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "optimizer": [StrOptions({"sgd", "adam"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

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

    def _hidden_sizes(self) -> tuple[int, ...]:
        """``hidden_layer_sizes`` as a tuple; each entry must be an int of at least 1 (sklearn checked the rest)."""
        sizes: Any = self.hidden_layer_sizes
        entries = np.asarray(sizes, dtype=object)
        hidden = tuple(entries) if entries.ndim == 1 else (sizes,) if isinstance(sizes, Integral) else ()
        if not hidden or not all(isinstance(h, Integral) and not isinstance(h, bool) and int(h) >= 1 for h in hidden):
            raise InvalidParameterError(
                f"The 'hidden_layer_sizes' parameter of {type(self).__name__} must be an int in the range "
                f"[1, inf) or a non-empty array-like of such ints. Got {sizes!r} instead."
            )
        return tuple(int(h) for h in hidden)

    def _seed(self) -> int | None:
        """A seed for the graph and the shuffling, from ``random_state`` as scikit-learn reads it."""
        state: Any = self.random_state
        if state is None:
            return None
        if isinstance(state, Integral):
            return int(state)
        return int(check_random_state(state).randint(np.iinfo(np.int32).max))  # a RandomState instance

    def _fit_network(self, x: np.ndarray, y: np.ndarray, outputs: int) -> None:
        hidden = self._hidden_sizes()
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
        x = _validate(self, X, reset=False, dtype=np.float64)
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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> MLPClassifier:
        x, y = _validate(self, X, y, dtype=np.float64)
        y = _check_label_types(type(self).__name__, y)
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
            x = _validate(self, X, reset=False, dtype=np.float64)
            return np.ones((len(x), 1))
        return self._forward(X)

    def predict(self, X: Any) -> np.ndarray:
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]  # type: ignore[no-any-return]


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained with tapegrad (squared error). Targets are
    standardised inside ``fit`` and mapped back by ``predict``; 2-D targets give multi-output.
    Any finite targets work: they are divided by their largest magnitude before squaring."""

    _task = "regression"
    _loss = "losses:SquareLoss"

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: Any, y: Any) -> MLPRegressor:
        x, y = _validate(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        targets = y.reshape(len(y), -1)
        # Scale into [-1, 1] first: the mean and variance of targets near 1e200 would overflow.
        magnitude = np.abs(targets).max(axis=0)
        self._y_magnitude = np.where(magnitude > 0, magnitude, 1.0)
        scaled = targets / self._y_magnitude
        self._y_mean = scaled.mean(axis=0)
        spread = scaled.std(axis=0)
        self._y_scale = np.where(spread > 0, spread, 1.0)
        self._fit_network(x, (scaled - self._y_mean) / self._y_scale, targets.shape[1])
        return self

    def predict(self, X: Any) -> np.ndarray:
        raw = self._forward(X)
        with np.errstate(over="ignore"):
            out = (raw * self._y_scale + self._y_mean) * self._y_magnitude
        if not np.isfinite(out).all() and np.isfinite(raw).all():
            raise NonFiniteError(
                f"{type(self).__name__}.predict: predictions exceed the float64 range "
                f"(the targets reached {float(np.max(self._y_magnitude)):.3g}); fit on rescaled targets"
            )
        return out[:, 0] if self._y_1d else out
