"""Small checks shared by the first-party op families (not part of the public API)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tapegrad import InputTypeError, Operation, OutOfRangeError, ShapeError

try:  # numpy >= 2
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.numeric import normalize_axis_tuple  # type: ignore[no-redef]


def axes(op: Operation, axis: Any, ndim: int) -> tuple[int, ...] | None:
    """``axis`` (None, int or tuple) normalised for an input of rank ``ndim``, or a ShapeError."""
    if axis is None:
        return None
    try:
        return tuple(normalize_axis_tuple(axis, ndim))
    except (TypeError, ValueError):  # numpy AxisError is a ValueError
        raise ShapeError(f"{op.label}: axis {axis!r} is out of range for an input of rank {ndim}") from None


def need_rank(op: Operation, x: np.ndarray, low: int, what: str = "input") -> None:
    if x.ndim < low:
        raise ShapeError(f"{op.label}: expected the {what} to have at least {low} dimensions, got shape {x.shape}")


def need_float(op: Operation, x: np.ndarray, what: str = "input") -> None:
    if x.dtype.kind != "f":
        raise InputTypeError(f"{op.label}: expected a float {what}, got dtype {x.dtype}")


def integer_labels(op: Operation, target: np.ndarray, classes: int, what: str = "label") -> np.ndarray:
    """``target`` as integers in ``[0, classes)``; integral floats are accepted."""
    if target.dtype.kind == "f":
        as_int = target.astype(np.int64)
        if not np.array_equal(as_int, target):
            raise InputTypeError(f"{op.label}: expected integer {what}s, got non-integral values of dtype {target.dtype}")
        target = as_int
    elif target.dtype.kind not in "iu":
        raise InputTypeError(f"{op.label}: expected integer {what}s, got dtype {target.dtype}")
    if target.size == 1:
        value = target.item()
        if value < 0 or value >= classes:
            raise OutOfRangeError(f"{op.label}: {what} {value} is out of range [0, {classes})")
    elif target.size:
        # One reduction checks both ends: negative ints wrap to huge unsigned values.
        unsigned = target.view(np.dtype(f"u{target.itemsize}")) if target.dtype.kind == "i" else target
        if unsigned.max() >= classes:
            bad = int(target.min()) if target.min() < 0 else int(target.max())
            raise OutOfRangeError(f"{op.label}: {what} {bad} is out of range [0, {classes})")
    return target
