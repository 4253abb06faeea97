"""Checks for constructor and hyperparameter arguments (layer sizes, learning rates, eps, p).

One function for every number an op, optimizer or trainer is configured with, so each bad
value gets the same kind of message: who (``"Affine (affine_0)"``), which argument, the range
it must lie in and what arrived. Op authors may use it too.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .errors import ArgumentError, InputTypeError

__all__ = ["check_flag", "check_number"]


def check_flag(where: str, name: str, value: Any) -> bool:
    """``value`` as a bool; anything but True/False (an int, a string) raises InputTypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputTypeError(f"{where}: {name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_number(
    where: str,
    name: str,
    value: Any,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> Any:
    """``value`` as a finite ``float`` (an ``int`` when ``integer``) within the bounds.

    A value of the wrong type (a string, None, a bool, a float where a whole number is
    needed) raises ``InputTypeError``; NaN, infinity or a value outside the bounds raises
    ``ArgumentError``. Both messages start with ``where: name``.
    """
    kinds: tuple[type, ...] = (numbers.Integral,) if integer else (numbers.Real,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        wanted = "a whole number" if integer else "a number"
        raise InputTypeError(f"{where}: {name} must be {wanted}, got {type(value).__name__} {value!r}")
    number: float = int(value) if integer else float(value)  # type: ignore[call-overload,arg-type]
    inside = (
        math.isfinite(number)
        and (number >= low if low_inclusive else number > low)
        and (number <= high if high_inclusive else number < high)
    )
    if not inside:
        raise ArgumentError(
            f"{where}: {name} must be {_describe(low, high, low_inclusive, high_inclusive)}, got {value!r}"
        )
    return number


def _describe(low: float, high: float, low_inclusive: bool, high_inclusive: bool) -> str:
    if math.isinf(high):
        if math.isinf(low):
            return "finite"
        return f"{'at least' if low_inclusive else 'above'} {low:g}"
    if math.isinf(low):
        return f"{'at most' if high_inclusive else 'below'} {high:g}"
    return f"in {'[' if low_inclusive else '('}{low:g}, {high:g}{']' if high_inclusive else ')'}"
