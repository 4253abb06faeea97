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


@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
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
