"""tapegrad's scikit-learn estimators against scikit-learn's own checks and tools."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from tapegrad.sklearn import MLPClassifier, MLPRegressor

# scikit-learn 1.7 (the newest on Python 3.10) parametrizes with a generator, which pytest 9 deprecates: a list
_CHECKS = parametrize_with_checks([MLPClassifier(), MLPRegressor()])
_CHECKS = pytest.mark.parametrize(_CHECKS.args[0], list(_CHECKS.args[1]), **_CHECKS.kwargs)


@_CHECKS
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data / 16.0, data.target


def test_cross_val_score_on_digits_reaches_95_percent(digits):
    # digits is ordered by writer: shuffled folds measure the classifier, not the writer split
    # (unshuffled 5-fold gives ~0.94 here and for scikit-learn's own MLPClassifier alike)
    x, y = digits
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_score(MLPClassifier(random_state=0), x, y, cv=folds)
    assert scores.mean() >= 0.95, scores


def test_pipeline_and_grid_search(digits):
    x, y = digits
    x, y = x[:600], y[:600]
    search = GridSearchCV(
        make_pipeline(StandardScaler(), MLPClassifier(max_epochs=30, random_state=0)),
        {"mlpclassifier__hidden_layer_sizes": [(10,), (30,)]},
        cv=2,
    )
    search.fit(x, y)
    assert search.best_params_["mlpclassifier__hidden_layer_sizes"] in [(10,), (30,)]
    assert search.score(x, y) > 0.9


def test_parameters_are_stored_unchanged_and_clone_works():
    est = MLPClassifier(hidden_layer_sizes=(5, 4), activation="tanh", optimizer="adam", learning_rate=0.01,
                        batch_size=8, max_epochs=3, random_state=7)
    params = est.get_params()
    assert params["hidden_layer_sizes"] == (5, 4) and params["optimizer"] == "adam"
    twin = clone(est).set_params(max_epochs=5)
    assert twin.max_epochs == 5 and est.max_epochs == 3


def test_fitted_attributes_and_errors(digits):
    x, y = digits
    est = MLPClassifier(max_epochs=5, random_state=0)
    with pytest.raises(NotFittedError):
        est.predict(x)
    assert est.fit(x, y) is est
    assert list(est.classes_) == list(range(10)) and est.n_features_in_ == 64
    proba = est.predict_proba(x[:5])
    assert proba.shape == (5, 10) and np.allclose(proba.sum(axis=1), 1)
    assert [w.shape for w in est.coefs_] == [(64, 30), (30, 10)]
    assert 1 <= est.n_epochs_ <= 5 and len(est.loss_curve_) == est.n_epochs_
    with pytest.raises(ValueError, match="64 features"):
        est.predict(x[:, :10])
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(activation="swish").fit(x, y)


def test_string_labels_and_dataframes():
    pd = pytest.importorskip("pandas")  # pandas is part of the test extra, so this runs under tox
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.standard_normal((60, 2)), columns=["a", "b"])
    y = np.where(x["a"] > 0, "pos", "neg")
    est = MLPClassifier(random_state=0).fit(x, y)
    assert list(est.feature_names_in_) == ["a", "b"]
    assert set(est.predict(x)) <= {"neg", "pos"} and est.score(x, y) > 0.9


def test_regressor_fits_a_smooth_function_and_multi_output():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (300, 1))
    y = np.sin(x[:, 0]) * 10 + 3
    est = MLPRegressor(random_state=0, max_epochs=300).fit(x, y)
    assert est.score(x, y) > 0.95 and est.predict(x).shape == (300,)
    both = MLPRegressor(random_state=0).fit(x, np.c_[y, -y])
    assert both.predict(x).shape == (300, 2)


_X = np.random.default_rng(0).standard_normal((40, 3))
_Y = (_X[:, 0] > 0).astype(int)


@pytest.mark.parametrize("estimator", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize(
    "param, value",
    [
        ("random_state", np.random.default_rng(0)),
        ("random_state", -1),
        ("random_state", "0"),
        ("max_epochs", None),
        ("max_epochs", 0),
        ("max_epochs", 2.5),
        ("learning_rate", "0.1"),
        ("learning_rate", float("inf")),
        ("learning_rate", float("nan")),
        ("learning_rate", 0),
        ("alpha", -1e-3),
        ("alpha", float("inf")),
        ("n_iter_no_change", 0),
        ("n_iter_no_change", -3),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("batch_size", 0),
        ("batch_size", None),
        ("tol", -1.0),
        ("activation", "swish"),
        ("optimizer", "rmsprop"),
        ("verbose", "yes"),
        ("hidden_layer_sizes", (5, 0)),
        ("hidden_layer_sizes", ()),
        ("hidden_layer_sizes", (2.5,)),
        ("hidden_layer_sizes", "5"),
        ("hidden_layer_sizes", 0),
        ("hidden_layer_sizes", [[3, 4]]),
        ("hidden_layer_sizes", (True,)),
    ],
)
def test_invalid_parameters_raise_scikit_learns_error_naming_them(estimator, param, value):
    from sklearn.utils._param_validation import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=rf"The '{param}' parameter of {estimator.__name__} must be"):
        estimator(**{param: value}).fit(_X, _Y)


@pytest.mark.parametrize(
    "params",
    [
        {"random_state": np.random.RandomState(0)},
        {"random_state": 2**32 - 1},
        {"hidden_layer_sizes": 3},
        {"hidden_layer_sizes": np.array([4, 3])},
        {"tol": None, "momentum": 0.9, "alpha": 1e-4, "learning_rate": np.float32(0.05)},
        {"activation": "logistic", "verbose": 0},
    ],
)
def test_what_scikit_learn_accepts_is_accepted(params):
    est = MLPClassifier(max_epochs=2, **params).fit(_X, _Y)
    assert est.predict(_X).shape == (40,)


def test_labels_mixing_strings_and_numbers_are_refused_clearly():
    import tapegrad as tg

    mixed = np.array([1, "a"] * 20, dtype=object)
    with pytest.raises(tg.TrainingError, match="all strings or all numbers.*number, str"):
        MLPClassifier(max_epochs=2).fit(_X, mixed)
    with pytest.raises(ValueError, match="NoneType"):
        MLPClassifier(max_epochs=2).fit(_X, np.array([None, "a"] * 20, dtype=object))
    numbers = MLPClassifier(max_epochs=2).fit(_X, np.array([1, 2.0] * 20, dtype=object))
    assert list(numbers.classes_) == [1.0, 2.0]


@pytest.mark.parametrize("magnitude", [1e200, 1e300, 1e308, 1e-300, 1e-310])
def test_regressor_fits_targets_of_any_finite_magnitude(magnitude):
    import warnings

    x = np.linspace(-1, 1, 80)[:, None]
    y = np.sin(2 * x[:, 0])
    unit = MLPRegressor(random_state=0, max_epochs=30).fit(x, y).predict(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow anywhere on the way
        predicted = MLPRegressor(random_state=0, max_epochs=30).fit(x, y * magnitude).predict(x)
    assert np.isfinite(predicted).all()
    # the targets are scaled away exactly: the same fit as for targets of magnitude 1
    assert np.allclose(predicted / magnitude, unit, rtol=0, atol=1e-6)


def test_regressor_predictions_beyond_float64_raise_a_clear_error():
    import tapegrad as tg

    x = np.linspace(-1, 1, 40)[:, None]
    est = MLPRegressor(random_state=0, max_epochs=100, hidden_layer_sizes=(8,), activation="relu").fit(
        x, x[:, 0] * 1.7e308
    )
    with pytest.raises(tg.NonFiniteError, match="exceed the float64 range"):
        est.predict(x * 1000)  # far outside the data: the network extrapolates past the largest float


_FIRST_PARTY = ("Affine", "Sigmoid", "Tanh", "Relu", "SoftmaxLoss", "SquareLoss")


def _fit_every_network():
    for activation in ("sigmoid", "tanh", "relu"):
        est = MLPClassifier(max_epochs=2, activation=activation, random_state=0).fit(_X, _Y)
        assert set(est.predict(_X)) <= {0, 1} and len(est.loss_curve_) == 2
    assert MLPRegressor(max_epochs=2, random_state=0).fit(_X, _X[:, 0]).predict(_X).shape == (40,)


def test_a_run_time_op_named_like_ours_changes_nothing():
    import tapegrad as tg

    for name in _FIRST_PARTY:
        impostor = type(name, (tg.Operation,), {
            "forward": lambda self, ctx, *inputs: pytest.fail("a third-party op was used"),
            "backward": lambda self, ctx, grad: grad,
        })
        tg.register_operation(impostor, plugin="impostors", override=True)  # the bare name now means it
    assert tg.default_registry().resolve("Affine").__module__ != "tapegrad.plugins.layers"
    _fit_every_network()


def test_an_installed_plugin_offering_our_op_names_changes_nothing(plugin_dir):
    import tapegrad as tg
    from conftest import make_dist, op_module

    modules = {f"tgtest_{name.lower()}": op_module(name, "tgtest-impostors") for name in _FIRST_PARTY}
    entry_points = {f"tgtest_{name.lower()}": f"tgtest_{name.lower()}" for name in _FIRST_PARTY}
    make_dist(plugin_dir, "tgtest-impostors", "1.0", entry_points, modules)
    with pytest.raises(tg.AmbiguousOperationError):
        tg.Graph().get_operation("Affine", [2, 2])
    _fit_every_network()
