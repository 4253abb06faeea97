"""Datasets for examples and tests. scikit-learn is imported only when a loader is called."""

from __future__ import annotations

import numpy as np

from .errors import MissingDependencyError

__all__ = ["load_digits"]


def _sklearn() -> tuple[object, object]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise MissingDependencyError(
            "the digits dataset needs scikit-learn: pip install 'tapegrad[data]'"
        ) from None
    return sk_load_digits, train_test_split


def load_digits(test_size: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (shipped inside scikit-learn: no network), features / 16.

    Returns ``(x_train, x_test, y_train, y_test)``: float64 features of shape (n, 64) in
    [0, 1] and int64 labels 0..9; ``seed`` fixes the split.
    """
    sk_load_digits, train_test_split = _sklearn()
    data = sk_load_digits()  # type: ignore[operator]
    x = np.asarray(data.data, dtype=np.float64) / 16.0
    y = np.asarray(data.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(  # type: ignore[operator]
        x, y, test_size=test_size, random_state=seed
    )
    return x_train, x_test, y_train, y_test
