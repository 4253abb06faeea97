"""``Variable``: a value, its gradient, a name and whether an optimizer may change it.

The one rule for accumulating gradients lives here (``Variable.add_grad``); the tape, the ops
and the optimizers all go through it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy import ndarray

from . import events
from .errors import InputTypeError, ShapeError

__all__ = ["Constant", "Variable", "add_to", "as_array", "clear_grads", "constant", "peek_grads"]


def as_array(value: Any, where: str = "Variable") -> np.ndarray:
    """Return ``value`` as a real numeric ndarray; Python lists and scalars become float64, an array-like
    (``__array__``) keeps its dtype.

    Integer and boolean arrays stay as they are (labels, indices); anything that is not
    real-numeric raises ``InputTypeError`` naming ``where``.
    """
    if isinstance(value, Variable):
        return value.value
    if isinstance(value, np.ndarray):
        array = value
    else:
        try:
            # an array-like's own array, as it gives it (the same object: a recording traces it)
            array = value.__array__() if hasattr(type(value), "__array__") else np.asarray(value)
            if not isinstance(array, np.ndarray):
                array = np.asarray(array)
        except (TypeError, ValueError) as exc:
            raise InputTypeError(f"{where}: expected numeric data, got {type(value).__name__}: {exc}") from None
        if array.dtype.kind in "iubf" and isinstance(value, (list, tuple, int, float)):
            array = array.astype(np.float64, copy=False)  # (an array-like's own dtype is kept)
    if array.dtype.kind not in "fiub":
        raise InputTypeError(
            f"{where}: expected a real numeric array, got dtype {array.dtype} (from {type(value).__name__})"
        )
    return array


class Variable:
    """A numpy value with a gradient slot.

    ``grad`` has the value's shape and dtype and reads as zeros until something is written;
    integer and boolean Variables (labels, indices) have no gradient (``grad is None``).
    ``trainable`` tells optimizers whether they may update the value.
    """

    __slots__ = ("__weakref__", "_grad", "_grad_is_borrowed", "name", "trainable", "value")

    value: np.ndarray
    name: str | None
    trainable: bool

    def __init__(self, value: Any, name: str | None = None, trainable: bool = True) -> None:
        if type(value) is ndarray and value.dtype.kind in "fiub":
            self.value = value  # the common case (every op output): nothing to convert
        else:
            self.value = as_array(value, f"Variable {name!r}" if name else "Variable")
        self._grad: np.ndarray | None = None
        # True while _grad is an array this Variable was handed (see add_grad): never written into.
        self._grad_is_borrowed = False
        self.name = name
        self.trainable = trainable
        if events.observer is not None:
            events.observer.created(self)

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

    # -- the accumulation rule ---------------------------------------------------------------
    def add_grad(self, grad: Any) -> None:
        """Add ``grad`` (the value's shape, a real dtype) into this Variable's gradient.

        The one accumulation rule, for every shape including ``()``: the first contribution is
        kept by reference, without a copy, and is *borrowed*: whoever made it may hold it too
        (an op may return one array for two inputs), so it is never written into. The second
        contribution is added into a new array this Variable owns; later ones are added into
        that array in place. Ops call this for their parameters' gradients.
        """
        value = self.value
        if type(grad) is not ndarray or grad.dtype is not value.dtype or grad.shape != value.shape:
            grad = self._checked(grad)  # converts it, or says what is wrong
        elif value.dtype.kind != "f":
            self._checked(grad)  # raises: integer values have no gradient
        current = self._grad
        if current is None:
            self._grad = grad
            self._grad_is_borrowed = True
        else:
            self._grad = add_to(current, grad, owned=not self._grad_is_borrowed)
            self._grad_is_borrowed = False

    def _checked(self, grad: Any) -> np.ndarray:
        """``grad`` as an array of this Variable's shape and dtype, or a clear error."""
        value = self.value
        if value.dtype.kind != "f":
            raise InputTypeError(f"{self._title()}: integer values have no gradient (dtype {value.dtype})")
        if type(grad) is not ndarray:
            grad = np.asarray(grad)  # numpy scalars (what ufuncs return for shape ()), lists
        if grad.shape != value.shape:
            raise ShapeError(
                f"{self._title()}: got a gradient of shape {grad.shape}; it must have the value's shape {value.shape}"
            )
        if grad.dtype != value.dtype:
            if grad.dtype.kind not in "fiub":
                raise InputTypeError(
                    f"{self._title()}: gradient must be real, got dtype {grad.dtype} for a value of dtype {value.dtype}"
                )
            grad = grad.astype(value.dtype)
        return grad

    @property
    def grad(self) -> np.ndarray | None:
        """The accumulated gradient, this Variable's own array: updating it in place is safe.

        Zeros until something is written; None for integer values.
        """
        if self.value.dtype.kind != "f":
            return None
        if self._grad is None:
            self._grad = np.zeros_like(self.value)
        elif self._grad_is_borrowed:
            self._grad = self._grad.copy()  # in-place updates must not reach the array's other holders
        self._grad_is_borrowed = False
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is None:
            self.clear_grad()
            return
        if value is self._grad and not self._grad_is_borrowed:
            return  # ``v.grad += g`` wrote in place into this Variable's own array
        grad = self._checked(value)  # before anything changes: a bad value loses nothing
        self._grad = np.array(grad, copy=True)  # this Variable's own: the caller keeps what it passed
        self._grad_is_borrowed = False

    def peek_grad(self) -> np.ndarray | None:
        """The gradient accumulated so far, without a copy; None if nothing arrived.

        For reading only (optimizers, the tape): the array may be shared, so never write into it.
        """
        return self._grad

    def clear_grad(self) -> None:
        """Reset the gradient to zeros (lazily: nothing is allocated until it is read)."""
        self._grad = None
        self._grad_is_borrowed = False

    def _title(self) -> str:
        return f"Variable {self.name!r}" if self.name else f"a Variable of shape {self.value.shape}"

    # -- numpy interplay -----------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        return self.value

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if dtype is None:
            return self.value.copy() if copy else self.value
        return self.value.astype(dtype)

    def __copy__(self) -> Variable:
        twin = Variable(self.value, self.name, self.trainable)
        if self._grad is not None:  # one gradient array for both: borrowed by both, written by neither
            twin._grad = self._grad
            twin._grad_is_borrowed = self._grad_is_borrowed = True
        return twin

    def __len__(self) -> int:
        return len(self.value)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        flag = "" if self.trainable else ", trainable=False"
        return f"Variable({name}shape={self.value.shape}, dtype={self.value.dtype}{flag})"


def add_to(total: np.ndarray, grad: np.ndarray, owned: bool) -> np.ndarray:
    """The accumulation rule's sum, for ``Variable.add_grad`` and a captured step's replay alike:
    ``total + grad`` (both of one shape and dtype), added into ``total`` when this sum ``owned`` it,
    else into a new array (``total`` may be shared: never written into). The same additions in the
    same order give the same bits, which is why replayed gradients equal eager ones."""
    if owned:
        return np.add(total, grad, out=total)
    return np.add(total, grad, out=np.empty_like(total))


class Constant(Variable):
    """A Variable holding data rather than a parameter: it receives no gradient (``grad`` is None,
    gradients routed to it are dropped) and optimizers never update it. Made by ``constant``."""

    __slots__ = ()

    @property
    def differentiable(self) -> bool:
        return False

    def add_grad(self, grad: Any) -> None:
        """Nothing: a constant receives no gradient."""

    @property
    def grad(self) -> None:
        return None

    @grad.setter
    def grad(self, value: Any) -> None:
        if value is not None:
            raise InputTypeError(f"{self._title()} is a constant: it has no gradient to set")

    def __copy__(self) -> Constant:
        return Constant(self.value, self.name)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return f"constant({name}shape={self.value.shape}, dtype={self.value.dtype})"


def constant(value: Any, name: str | None = None) -> Constant:
    """``value`` as a Variable that receives no gradient: data a model reads (an initial state of
    zeros, a mask), never a parameter.

    Inside a captured step, an array made by Python that reaches an op must be one of these (or an
    argument of the step): the record keeps it, and every replay reads its value as it is then. Its
    value must not change between calls unless you change it yourself, outside the step: a step that
    makes a new constant on each call replays the first call's."""
    return Constant(value, name, trainable=False)


def peek_grads(variables: Iterable[Variable]) -> list[np.ndarray | None]:
    """``[v.peek_grad() for v in variables]`` in one call, for optimizers (read only: never write
    into these arrays)."""
    return [v._grad for v in variables]


def clear_grads(variables: Iterable[Variable]) -> None:
    """``v.clear_grad()`` for every Variable, in one call."""
    for v in variables:
        v._grad = None
        v._grad_is_borrowed = False
