"""Helpers for op authors: broadcasting checks and summing gradients back to an input's shape."""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ShapeError

__all__ = ["as_shape", "broadcast_shape", "unbroadcast"]


def as_shape(shape: Any) -> tuple[int, ...]:
    """``3`` -> ``(3,)``, ``[2, 3]`` -> ``(2, 3)``."""
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def broadcast_shape(op_label: str, *arrays: Any) -> tuple[int, ...]:
    """The broadcast shape of ``arrays``, or a ``ShapeError`` naming the op and the shapes."""
    shapes = [np.shape(a) for a in arrays]
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        listed = ", ".join(str(s) for s in shapes)
        raise ShapeError(f"{op_label}: input shapes {listed} do not broadcast together") from None


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes broadcasting added or stretched, giving ``shape``."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad.reshape(shape)
