"""``Variable``: a value, its gradient, a name and whether an optimizer may change it."""

from __future__ import annotations

from sys import getrefcount
from typing import Any

import numpy as np

from .errors import InputTypeError, ShapeError

__all__ = ["Variable", "as_array"]


def as_array(value: Any, where: str = "Variable") -> np.ndarray:
    """Return ``value`` as a numeric ndarray; lists and scalars become float64.

    Integer and boolean arrays stay as they are (labels, indices); anything that is
    not real-numeric raises ``InputTypeError`` naming ``where``.
    """
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, Variable):
        return value.value
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise InputTypeError(f"{where}: expected numeric data, got {type(value).__name__}: {exc}") from None
        if array.dtype.kind in "iub" and not isinstance(value, np.generic):
            array = array.astype(np.float64)
        elif array.dtype.kind == "f" and not isinstance(value, np.generic):
            array = array.astype(np.float64, copy=False)
    if array.dtype.kind not in "fiub":
        raise InputTypeError(
            f"{where}: expected a real numeric array, got dtype {array.dtype} "
            f"(from {type(value).__name__})"
        )
    return array


class Variable:
    """A numpy value with a gradient slot.

    ``grad`` has the value's shape and reads as zeros until something is written;
    integer and boolean Variables (labels, indices) have no gradient (``grad is None``).
    ``trainable`` tells optimizers whether they may update the value.
    """

    __slots__ = ("_grad", "_owned", "name", "trainable", "value")

    value: np.ndarray
    name: str | None
    trainable: bool

    def __init__(self, value: Any, name: str | None = None, trainable: bool = True) -> None:
        self.value = as_array(value, f"Variable {name!r}" if name else "Variable")
        self._grad: np.ndarray | None = None
        # _owned: the gradient array belongs to this Variable alone, so it may be
        # updated in place. A first contribution is stored by reference (not owned).
        self._owned = False
        self.name = name
        self.trainable = trainable

    @classmethod
    def _wrap(cls, value: np.ndarray) -> Variable:
        """Fast constructor for op outputs: ``value`` is already a valid ndarray."""
        var = cls.__new__(cls)
        var.value = value
        var._grad = None
        var._owned = False
        var.name = None
        var.trainable = True
        return var

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def differentiable(self) -> bool:
        """True for float values: only they carry a gradient."""
        return self.value.dtype.kind == "f"

    @property
    def grad(self) -> np.ndarray | None:
        """The accumulated gradient (zeros until written; None for integer values)."""
        if self.value.dtype.kind != "f":
            return None
        grad = self._grad
        if grad is None:
            grad = self._grad = np.zeros_like(self.value)
            self._owned = True
        elif not self._owned:
            if grad.base is not None or self._grad_refs() != _EXCLUSIVE_REFS:
                # Someone else may hold this array (an op returned it for two inputs):
                # take a private copy before handing it out for in-place updates.
                grad = self._grad = np.array(grad, dtype=self.value.dtype)
            self._owned = True
        return grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is self._grad and value is not None:
            return  # ``v.grad += g`` wrote in place into our own array
        if self.value.dtype.kind != "f":
            if value is None:
                return
            raise InputTypeError(
                f"Variable {self.name!r}: integer values have no gradient "
                f"(dtype {self.value.dtype})"
            )
        if value is None:
            self._grad = None
            return
        array = np.array(value, dtype=self.value.dtype)
        if array.shape != self.value.shape:
            raise ShapeError(
                f"Variable {self.name!r}: gradient must have the value's shape "
                f"{self.value.shape}, got {array.shape}"
            )
        self._grad = array
        self._owned = True

    def _grad_refs(self) -> int:
        grad = self._grad
        return getrefcount(grad)

    def add_grad(self, grad: np.ndarray) -> None:
        """Add ``grad`` into ``.grad`` without ever writing into ``grad`` itself.

        The first contribution is kept by reference (no copy); later ones are added
        out of place once, then in place into the array this Variable owns. Ops may
        use it instead of ``.grad +=`` to save an allocation.
        """
        if getattr(grad, "shape", None) != self.value.shape:
            raise ShapeError(
                f"Variable {self.name!r}: gradient must have the value's shape "
                f"{self.value.shape}, got {getattr(grad, 'shape', type(grad).__name__)}"
            )
        self._accumulate(grad)

    def _accumulate(self, grad: np.ndarray) -> None:
        """add_grad without the shape check (the caller has checked)."""
        current = self._grad
        if current is None:
            self._grad = grad
            self._owned = False
        elif self._owned:
            current += grad
        else:
            self._grad = current + grad
            self._owned = True

    def clear_grad(self) -> None:
        """Reset the gradient to zeros (lazily: nothing is allocated until it is read)."""
        self._grad = None
        self._owned = False

    def numpy(self) -> np.ndarray:
        return self.value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is None:
            return self.value
        return self.value.astype(dtype)

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        flag = "" if self.trainable else ", trainable=False"
        return f"Variable({name}shape={self.value.shape}, dtype={self.value.dtype}{flag})"


def _calibrate() -> int:
    """References _grad_refs sees for an array held by nothing but the Variable (per interpreter)."""
    probe = Variable._wrap(np.zeros(1))
    probe._grad = np.zeros(1)
    return probe._grad_refs()


_EXCLUSIVE_REFS = _calibrate()
