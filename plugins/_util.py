"""Small checks shared by the first-party op families (not part of the public API)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from tapegrad import (
    ArgumentError,
    InputTypeError,
    NonFiniteError,
    Operation,
    OutOfRangeError,
    ShapeError,
    TapegradError,
    check_number,
)

try:  # numpy >= 2
    from numpy.exceptions import AxisError
    from numpy.lib.array_utils import normalize_axis_tuple
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy import AxisError  # type: ignore[attr-defined,no-redef]
    from numpy.core.numeric import normalize_axis_tuple  # type: ignore[no-redef]



# -- constructor arguments ------------------------------------------------------------------
def check_size(where: str, name: str, value: Any) -> int:
    """A layer size: a whole number of at least 1."""
    return int(check_number(where, name, value, low=1, integer=True))


def check_axis(where: str, name: str, value: Any, *, allow_none: bool = False, allow_tuple: bool = False) -> Any:
    """An axis argument: an int (None and tuples of distinct ints where allowed), checked for
    type here; whether it fits an input's rank is checked in forward (``axes``)."""
    if value is None and allow_none:
        return None
    if allow_tuple and isinstance(value, (tuple, list)):
        checked = tuple(int(check_number(where, f"{name}[{i}]", a, integer=True)) for i, a in enumerate(value))
        if len(set(checked)) != len(checked):
            raise ArgumentError(f"{where}: {name} must not repeat an axis, got {value!r}")
        return checked
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        wanted = "an int" + (", a tuple of ints" if allow_tuple else "") + (" or None" if allow_none else "")
        raise InputTypeError(f"{where}: {name} must be {wanted}, got {type(value).__name__} {value!r}")
    return int(value)


# -- inputs ---------------------------------------------------------------------------------
def axes(op: Operation, axis: Any, ndim: int) -> tuple[int, ...] | None:
    """``axis`` (None, int or tuple) normalised for an input of rank ``ndim``, or a ShapeError."""
    if axis is None:
        return None
    try:
        return tuple(normalize_axis_tuple(axis, ndim))
    except AxisError:
        raise ShapeError(f"{op.label}: axis {axis!r} is out of range for an input of rank {ndim}") from None
    except (TypeError, ValueError):  # numpy says "repeated axis" (normalised: -1 and 1 may clash)
        raise ShapeError(f"{op.label}: axis {axis!r} names one axis twice for an input of rank {ndim}") from None


def need_rank(op: Operation, x: np.ndarray, low: int, what: str = "input") -> None:
    if x.ndim < low:
        raise ShapeError(f"{op.label}: expected the {what} to have at least {low} dimensions, got shape {x.shape}")


def need_float(op: Operation, x: np.ndarray, what: str = "input") -> None:
    if x.dtype.kind != "f":
        raise InputTypeError(f"{op.label}: expected a float {what}, got dtype {x.dtype}")


def need_examples(op: Operation, x: np.ndarray, what: str = "prediction", *, elements: bool = False) -> None:
    """A loss averages over the batch (over every element when ``elements``): an empty one has
    no mean, which is an error rather than a NaN."""
    if x.ndim and x.shape[0] == 0:
        raise ShapeError(f"{op.label}: the batch is empty ({what} shape {x.shape}); a loss needs at least one example")
    if elements and x.size == 0:
        raise ShapeError(f"{op.label}: the {what} have no elements (shape {x.shape}); a mean over none is undefined")


def _show(value: float) -> str:
    """A label as a user wrote it: ``3`` for 3.0, ``1e+20`` for 1e20."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def integer_labels(op: Operation, target: np.ndarray, classes: int, what: str = "label") -> np.ndarray:
    """``target`` as integers in ``[0, classes)``; integral floats are accepted.

    NaN raises NonFiniteError; a value outside the range (floats beyond int64 and infinity
    included) OutOfRangeError; a non-integral float or another dtype InputTypeError.
    """
    if target.dtype.kind == "f":
        target = _float_labels(op, target, classes, what)
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


def _float_labels(op: Operation, target: np.ndarray, classes: int, what: str) -> np.ndarray:
    """Float labels checked before the cast to int64, which would turn NaN or 1e20 into garbage."""
    if np.isnan(target).any():
        raise NonFiniteError(f"{op.label}: the {what}s hold NaN")
    fractional = np.floor(target) != target
    if fractional.any():
        bad = target[fractional].flat[0]
        raise InputTypeError(f"{op.label}: expected integer {what}s, got the non-integral value {bad:g}")
    outside = (target < 0) | (target >= classes)  # infinity and anything beyond int64 included
    if outside.any():
        raise OutOfRangeError(f"{op.label}: {what} {_show(target[outside].flat[0])} is out of range [0, {classes})")
    return target.astype(np.int64)


# -- floating-point range -------------------------------------------------------------------
# (numpy's overflow signals, when the caller asked for them: tapegrad.FLOAT_SIGNALS. An op that can compute
# a representable result another way catches them and does: the common path pays nothing.)

def scaled_mean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    """``x.mean(axis)`` for any ``x``, with no overflow signal unless the mean itself is beyond the
    float range (it never is: it lies between the extremes). A sum that would overflow is taken
    over slices scaled by a power of two (exact) and the mean scaled back. The scale comes from
    the finite values only: NaN and inf propagate (NaN in gives NaN, inf its limit or NaN)
    without setting the scale, which a NaN would make 1 and let the sum overflow again."""
    with np.errstate(over="raise", invalid="ignore"):
        try:
            return np.asarray(x.mean(axis=axis, keepdims=keepdims))
        except FloatingPointError:
            pass
    with np.errstate(invalid="ignore"):  # (inf - inf is NaN, rightly)
        finite_magnitude = np.where(np.isfinite(x), np.abs(x), 0)
        _, exponent = np.frexp(np.max(finite_magnitude, axis=axis, keepdims=True))
        mean = np.ldexp(np.ldexp(x, -exponent).mean(axis=axis, keepdims=True), exponent).astype(x.dtype, copy=False)
    return mean if keepdims else np.squeeze(mean, axis=axis)


def scaled_sum(x: np.ndarray, axis: tuple[int, ...] | None = None, keepdims: bool = False) -> np.ndarray:
    """``x.sum(axis)``, signalling overflow (as the caller's ``np.errstate`` asks) only where the sum
    itself is beyond the float range: a partial sum that overflowed on the way to a representable
    result ([1e308, 1e308, -1e308]) or to NaN ([1e308, 1e308, nan]) is the scaled mean times the count."""
    with np.errstate(over="raise", invalid="ignore"):
        try:
            return np.asarray(x.sum(axis=axis, keepdims=keepdims))
        except FloatingPointError:
            pass
    count = x.size if axis is None else math.prod(x.shape[i] for i in axis)
    return scaled_mean(x, axis, keepdims) * count


def loss_not_finite(op: Operation, value: float, **arrays: np.ndarray) -> TapegradError:
    """Why a loss came out non-finite: the array that holds NaN or infinity, by name; or, when
    every input is finite, a loss beyond the float range. Both are NonFiniteError, which the
    Trainer reports as divergence."""
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            kind = "NaN" if np.isnan(array).any() else "infinite values"
            return NonFiniteError(f"{op.label}: the loss is {value} because of {kind} in the {name}")
    dtype = next(iter(arrays.values())).dtype
    return NonFiniteError(
        f"{op.label}: the loss exceeds the {dtype} range (above {np.finfo(dtype).max:.4g}) although every "
        f"input is finite; scale the data down"
    )
