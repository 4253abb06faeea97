"""Helpers for op authors: broadcasting checks and summing gradients back to an input's shape."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputTypeError, ShapeError

__all__ = ["as_shape", "broadcast_error", "broadcast_shape", "unbroadcast"]


def as_shape(shape: Any, where: str = "shape") -> tuple[int, ...]:
    """``3`` -> ``(3,)``, ``[2, 3]`` -> ``(2, 3)``. Every dimension must be a whole number of at least 0
    (``2.5`` or ``-1`` is an error naming ``where``, never a silently different shape)."""
    dims = (shape,) if isinstance(shape, (int, np.integer)) else shape
    try:
        dims = tuple(dims)
    except TypeError:
        raise InputTypeError(
            f"{where}: expected a shape (a whole number or a sequence of them), got {shape!r}"
        ) from None
    for dim in dims:
        if isinstance(dim, (bool, np.bool_)) or not isinstance(dim, (int, np.integer)):
            raise InputTypeError(f"{where}: every dimension must be a whole number, got {dim!r} in {shape!r}")
        if dim < 0:
            raise ShapeError(f"{where}: dimensions cannot be negative, got {shape!r}")
    return tuple(int(d) for d in dims)


def broadcast_error(op_label: str, *arrays: Any) -> ShapeError:
    """The error for inputs that do not broadcast (ops compute first and call this on failure)."""
    listed = ", ".join(str(np.shape(a)) for a in arrays)
    return ShapeError(f"{op_label}: input shapes {listed} do not broadcast together")


def broadcast_shape(op_label: str, *arrays: Any) -> tuple[int, ...]:
    """The broadcast shape of ``arrays``, or a ``ShapeError`` naming the op and the shapes."""
    try:
        return tuple(np.broadcast_shapes(*[np.shape(a) for a in arrays]))
    except ValueError:
        raise broadcast_error(op_label, *arrays) from None


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes broadcasting added or stretched, giving ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=0 if extra == 1 else tuple(range(extra)))
        if grad.shape == shape:
            return grad
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)
