"""Elementwise and array math: Add, Subtract, Multiply, Divide, Matmul, Sum, Mean,
Reshape, Transpose, Concat, Index, Stack, Unstack, Exp, Log. Binary ops broadcast like numpy;
their gradients are summed back over the broadcast axes. NaN in gives NaN out."""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from functools import reduce
from typing import Any

import numpy as np

import tapegrad as tg
from tapegrad import (
    ArgumentError,
    InputTypeError,
    NonFiniteError,
    OperationError,
    ShapeError,
    broadcast_error,
    broadcast_shape,
    unbroadcast,
)

from ._util import axes, check_axis, need_rank, scaled_mean, scaled_sum


def _binary_samples(rng: np.random.Generator, positive_b: bool = False) -> Iterator[tg.Sample]:
    def b(shape: tuple[int, ...]) -> np.ndarray:
        x = rng.standard_normal(shape)
        return np.abs(x) + 0.5 if positive_b else x

    yield tg.Sample(inputs=[rng.standard_normal((1, 3)), b((1, 3))], name="batch1")
    yield tg.Sample(inputs=[rng.standard_normal((4, 3)), b((4, 3))], name="batch4")
    yield tg.Sample(inputs=[rng.standard_normal((4, 3)), b((3,))], name="broadcast_row")
    yield tg.Sample(inputs=[rng.standard_normal((2, 1, 3)), b((4, 1))], name="broadcast_both")
    yield tg.Sample(inputs=[rng.standard_normal(()), b((2, 3))], name="broadcast_scalar")
    yield tg.Sample(inputs=[rng.standard_normal(()), b(())], name="scalar")


class Add(tg.Operation):
    """Sum of one or more inputs, broadcasting; with three or more, a partial sum that overflows on
    the way to a representable sum (or to NaN) signals nothing (as Sum). Saves only the input shapes."""

    def forward(self, ctx: tg.Context, first: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        xs = (first, *rest)
        if len(xs) == 2:  # the common case, kept short
            a, b = xs
            try:
                out = a + b
            except ValueError:
                raise broadcast_error(self.label, a, b) from None
            ctx.saved = (a.shape, b.shape)
            return out
        shapes = [x.shape for x in xs]
        if len(set(shapes)) > 1:
            broadcast_shape(self.label, *xs)
        ctx.saved = tuple(shapes)
        with np.errstate(over="raise", invalid="ignore"):
            try:
                return reduce(np.add, xs[1:], np.array(xs[0], copy=True))
            except FloatingPointError:  # a partial sum overflowed: the whole may fit, or be NaN
                pass
        return scaled_sum(np.stack(np.broadcast_arrays(*xs)), (0,))

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, ...]:
        shape = grad.shape
        if len(ctx.saved) == 2:
            sa, sb = ctx.saved
            return (grad if sa == shape else unbroadcast(grad, sa), grad if sb == shape else unbroadcast(grad, sb))
        return tuple(grad if s == shape else unbroadcast(grad, s) for s in ctx.saved)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _binary_samples(rng)
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))], name="one_input")
        yield tg.Sample(inputs=[rng.standard_normal((2, 3)) for _ in range(3)], name="three_inputs")


class Subtract(tg.Operation):
    """``a - b``, broadcasting. Saves the input shapes."""

    def forward(self, ctx: tg.Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        try:
            out = a - b
        except ValueError:
            raise broadcast_error(self.label, a, b) from None
        ctx.saved = (a.shape, b.shape)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sa, sb = ctx.saved
        return unbroadcast(grad, sa), unbroadcast(-grad, sb)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _binary_samples(rng)


class Multiply(tg.Operation):
    """Elementwise ``a * b``, broadcasting. Saves both inputs."""

    def forward(self, ctx: tg.Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        try:
            out = a * b
        except ValueError:
            raise broadcast_error(self.label, a, b) from None
        ctx.saved = (a, b)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = ctx.saved
        return unbroadcast(grad * b, a.shape), unbroadcast(grad * a, b.shape)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _binary_samples(rng)


class Divide(tg.Operation):
    """Elementwise ``a / b``, broadcasting; a zero in ``b`` raises OperationError, and so does a
    quotient (or gradient) beyond the float range. Saves b and a/b."""

    def forward(self, ctx: tg.Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape != b.shape:
            broadcast_shape(self.label, a, b)  # before the zero check: shapes first
        if not np.all(b):  # NaN counts as non-zero here: it gives NaN, not an error
            raise OperationError(f"{self.label}: division by zero (the divisor holds {np.sum(b == 0)} zero(s))")
        out = a / b
        ctx.saved = (a.shape, b, out)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape_a, b, out = ctx.saved
        grad_a = grad / b
        return unbroadcast(grad_a, shape_a), unbroadcast(-grad_a * out, b.shape)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _binary_samples(rng, positive_b=True)
        yield tg.Sample(
            inputs=[rng.standard_normal((3, 2)), -np.abs(rng.standard_normal((3, 2))) - 0.5], name="negative"
        )


class Matmul(tg.Operation):
    """Matrix product ``a @ b`` of arrays with at least 2 dimensions (batch dims broadcast).
    (..., n, k) @ (..., k, m) -> (..., n, m); saves both inputs."""

    def forward(self, ctx: tg.Context, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        need_rank(self, a, 2, "first input")
        need_rank(self, b, 2, "second input")
        if a.shape[-1] != b.shape[-2]:
            raise ShapeError(
                f"{self.label}: inner dimensions differ: {a.shape} @ {b.shape} "
                f"({a.shape[-1]} != {b.shape[-2]})"
            )
        if a.ndim > 2 or b.ndim > 2:
            broadcast_shape(self.label, a[..., :1, :1], b[..., :1, :1])
        ctx.saved = (a, b)
        return a @ b

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = ctx.saved
        if a.ndim == 2 and b.ndim == 2:
            return grad @ b.T, a.T @ grad
        grad_a = grad @ np.swapaxes(b, -1, -2)
        grad_b = np.swapaxes(a, -1, -2) @ grad
        return unbroadcast(grad_a, a.shape), unbroadcast(grad_b, b.shape)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 4)), rng.standard_normal((4, 3))], name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((5, 4)), rng.standard_normal((4, 3))], name="batch5")
        yield tg.Sample(inputs=[rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 2))], name="batched")
        yield tg.Sample(inputs=[rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 2))], name="batched_both")


class Sum(tg.Operation):
    """Sum over ``axis`` (None: all), optionally keeping reduced dims. A sum beyond the float range
    is inf with numpy's overflow signal (NonFiniteError where numpy is asked to raise); a partial
    sum that overflows on the way to a representable sum or to NaN signals nothing. Saves the input shape."""

    def __init__(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> None:
        self.axis = check_axis(self.label, "axis", axis, allow_none=True, allow_tuple=True)
        self.keepdims = tg.check_flag(self.label, "keepdims", keepdims)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        ax = axes(self, self.axis, x.ndim)
        ctx.saved = (x.shape, ax)
        return scaled_sum(x, ax, self.keepdims)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        shape, ax = ctx.saved
        return _expand(grad, shape, ax, self.keepdims)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _reduction_samples(rng)


class Mean(tg.Operation):
    """Mean over ``axis`` (None: all), optionally keeping reduced dims; finite for any finite
    input (a sum that would overflow is scaled). Saves the input shape."""

    def __init__(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> None:
        self.axis = check_axis(self.label, "axis", axis, allow_none=True, allow_tuple=True)
        self.keepdims = tg.check_flag(self.label, "keepdims", keepdims)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        ax = axes(self, self.axis, x.ndim)
        count = x.size if ax is None else int(np.prod([x.shape[i] for i in ax]))
        if count == 0:
            raise ShapeError(f"{self.label}: mean over an empty axis (input shape {x.shape})")
        ctx.saved = (x.shape, ax, count)
        return scaled_mean(x, ax, self.keepdims)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        shape, ax, count = ctx.saved
        return _expand(grad / count, shape, ax, self.keepdims)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield from _reduction_samples(rng)


def _expand(grad: np.ndarray, shape: tuple[int, ...], ax: tuple[int, ...] | None, keepdims: bool) -> np.ndarray:
    if ax is None:
        ax = tuple(range(len(shape)))
    if not keepdims:
        grad = np.expand_dims(grad, ax)
    return np.broadcast_to(grad, shape)


def _reduction_samples(rng: np.random.Generator) -> Iterator[tg.Sample]:
    yield tg.Sample(inputs=[rng.standard_normal((1, 3))], name="all")
    yield tg.Sample(kwargs={"axis": 0}, inputs=[rng.standard_normal((4, 3))], name="axis0")
    yield tg.Sample(kwargs={"axis": -1, "keepdims": True}, inputs=[rng.standard_normal((4, 3))], name="last_keepdims")
    yield tg.Sample(kwargs={"axis": (0, 2)}, inputs=[rng.standard_normal((2, 3, 4))], name="two_axes")
    yield tg.Sample(kwargs={"keepdims": True}, inputs=[rng.standard_normal((2, 3))], name="all_keepdims")
    yield tg.Sample(inputs=[rng.standard_normal(())], name="scalar")


class Reshape(tg.Operation):
    """Reshape to ``shape`` (one entry may be -1). Saves the input shape."""

    def __init__(self, shape: Any) -> None:
        self.shape = _shape_argument(self.label, shape)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        try:
            out = x.reshape(self.shape)
        except ValueError:
            raise ShapeError(
                f"{self.label}: cannot reshape an input of shape {x.shape} (size {x.size}) to {self.shape}"
            ) from None
        ctx.saved = (x.shape,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        return grad.reshape(ctx.saved[0])

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[(1, 6)], inputs=[rng.standard_normal((2, 3))], name="flatten")
        yield tg.Sample(args=[(3, -1)], inputs=[rng.standard_normal((2, 3, 2))], name="infer")
        yield tg.Sample(args=[(1, 1)], inputs=[rng.standard_normal(())], name="scalar")


def _shape_argument(where: str, shape: Any) -> tuple[int, ...]:
    """A target shape: an int or a sequence of ints, each at least -1, with at most one -1."""
    entries = [shape] if isinstance(shape, (int, np.integer)) else shape
    if isinstance(shape, (str, bytes)) or not isinstance(entries, (list, tuple, np.ndarray)):
        raise InputTypeError(
            f"{where}: shape must be an int or a sequence of ints, got {type(shape).__name__} {shape!r}"
        )
    dims = tuple(int(tg.check_number(where, f"shape[{i}]", d, low=-1, integer=True)) for i, d in enumerate(entries))
    if dims.count(-1) > 1:
        raise ArgumentError(f"{where}: shape may infer one dimension (-1), got {shape!r}")
    return dims


class Transpose(tg.Operation):
    """Permute axes (None: reverse them), like ``numpy.transpose``. Saves the normalised axes."""

    def __init__(self, axes: Any = None) -> None:
        if isinstance(axes, np.ndarray):
            axes = axes.tolist()
        self.axes = check_axis(self.label, "axes", axes, allow_none=True, allow_tuple=True)
        if isinstance(self.axes, int):
            raise InputTypeError(f"{self.label}: axes must be a sequence of ints or None, got int {axes!r}")

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        ax = axes(self, self.axes, x.ndim)
        if ax is not None and len(ax) != x.ndim:
            raise ShapeError(
                f"{self.label}: axes {self.axes} are not a permutation of the {x.ndim} axes of shape {x.shape}"
            )
        ctx.saved = (ax,)
        return np.transpose(x, ax)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        (ax,) = ctx.saved
        return np.transpose(grad) if ax is None else np.transpose(grad, np.argsort(ax))

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))], name="matrix")
        yield tg.Sample(args=[(1, 2, 0)], inputs=[rng.standard_normal((2, 3, 4))], name="permute")
        yield tg.Sample(inputs=[rng.standard_normal(())], name="scalar")


class Concat(tg.Operation):
    """Join one or more inputs along ``axis`` (the seed's HStack is axis=1, VStack axis=0).
    Saves the split points."""

    def __init__(self, axis: int = 0) -> None:
        self.axis = check_axis(self.label, "axis", axis)

    def forward(self, ctx: tg.Context, first: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        (axis,) = axes(self, self.axis, first.ndim) or (0,)
        for x in rest:
            if (
                x.ndim != first.ndim
                or x.shape[:axis] + x.shape[axis + 1 :] != first.shape[:axis] + first.shape[axis + 1 :]
            ):
                listed = ", ".join(str(x.shape) for x in (first, *rest))
                raise ShapeError(f"{self.label}: inputs must match except along axis {self.axis}, got {listed}")
        ctx.saved = (axis, np.cumsum([x.shape[axis] for x in (first, *rest)][:-1]))
        return np.concatenate((first, *rest), axis=axis)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, ...]:
        axis, splits = ctx.saved
        return tuple(np.split(grad, splits, axis=axis))

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((1, 3)), rng.standard_normal((2, 3))], name="vstack")
        yield tg.Sample(
            args=[1],
            inputs=[rng.standard_normal((2, 1)), rng.standard_normal((2, 3)), rng.standard_normal((2, 2))],
            name="hstack",
        )
        yield tg.Sample(
            args=[-1], inputs=[rng.standard_normal((2, 2, 2)), rng.standard_normal((2, 2, 1))], name="last_axis"
        )


# -- selecting and joining: Index, Stack, Unstack -------------------------------------------------
def _basic_index(where: str, index: Any) -> tuple[Any, ...]:
    """``index`` checked as numpy basic indexing (an int, slice, None, Ellipsis, or a tuple of
    them) and normalised to a tuple of Python ints, slices, None and Ellipsis."""
    items = index if isinstance(index, tuple) else (index,)
    checked: list[Any] = []
    for position, item in enumerate(items):
        what = f"index[{position}]" if isinstance(index, tuple) else "index"
        if item is None or item is Ellipsis:
            checked.append(item)
        elif isinstance(item, slice):
            parts = [
                _index_int(where, f"{what}.{part}", getattr(item, part), slice_part=True)
                for part in ("start", "stop", "step")
            ]
            if parts[2] == 0:
                raise ArgumentError(f"{where}: {what} has a step of 0; a slice step must be non-zero")
            checked.append(slice(*parts))
        else:
            checked.append(_index_int(where, what, item))
    if checked.count(Ellipsis) > 1:
        raise ArgumentError(f"{where}: index {_show_index(tuple(checked))} holds more than one Ellipsis (...)")
    return tuple(checked)


def _index_int(where: str, what: str, value: Any, slice_part: bool = False) -> int | None:
    if slice_part and value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        wanted = "an int or None" if slice_part else "an int, a slice, None or Ellipsis"
        advanced = isinstance(value, (list, np.ndarray, bool, np.bool_))
        hint = " (arrays, lists and booleans are advanced indexing, which Index does not do)" if advanced else ""
        raise InputTypeError(f"{where}: {what} must be {wanted}, got {type(value).__name__} {value!r}{hint}")
    return int(value)


def _show_index(index: tuple[Any, ...]) -> str:
    """An index as numpy syntax: ``[:, 2]``, ``[..., None, 1:4:2]``."""

    def one(item: Any) -> str:
        if item is Ellipsis:
            return "..."
        if item is None:
            return "None"
        if isinstance(item, slice):
            text = ":".join("" if part is None else str(part) for part in (item.start, item.stop))
            return text + ("" if item.step is None else f":{item.step}")
        return str(item)

    return "[" + ", ".join(one(item) for item in index) + "]"


class Index(tg.Operation):
    """``x[index]``, numpy basic indexing: an int, slice, None or Ellipsis, or a tuple of them.
    ``Index((slice(None), 2))`` is ``x[:, 2]``. The index is checked when the op is made: arrays,
    lists and booleans (advanced indexing) are refused; one that does not fit the input's shape
    raises ShapeError in forward. Integer inputs stay integers (ids). The output is a view of the
    input; the gradient is zeros with the upstream gradient at the selected places. Saves the
    input shape."""

    integer_inputs = (0,)

    def __init__(self, index: Any) -> None:
        self.index = _basic_index(self.label, index)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        try:
            out = x[self.index]
        except IndexError as exc:
            raise ShapeError(
                f"{self.label}: index {_show_index(self.index)} does not fit an input of shape {x.shape}: {exc}"
            ) from None
        ctx.saved = (x.shape,)
        return np.asarray(out)  # an int index of every axis gives a numpy scalar

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        full = np.zeros(ctx.saved[0], dtype=grad.dtype)
        full[self.index] = grad  # basic indexing selects each element once: no accumulation needed
        return full

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(args=[(slice(None), 2)], inputs=[rng.standard_normal((4, 3))], name="column")
        yield tg.Sample(args=[1], inputs=[rng.standard_normal((3, 4))], name="row")
        yield tg.Sample(args=[(slice(None), -1)], inputs=[rng.standard_normal((2, 5, 3))], name="last_step")
        yield tg.Sample(args=[(slice(1, None, 2), slice(None, 2))], inputs=[rng.standard_normal((5, 3))], name="slices")
        yield tg.Sample(args=[(Ellipsis, None, 0)], inputs=[rng.standard_normal((2, 3, 2))], name="ellipsis_none")
        yield tg.Sample(args=[(1, 2)], inputs=[rng.standard_normal((3, 4))], name="element")


class Stack(tg.Operation):
    """Join one or more inputs of the same shape along a new axis, as ``numpy.stack``.
    ``axis`` lies in -(rank+1)..rank of the inputs; n inputs give a new axis of length n there. The
    gradient of each input is its slice of the upstream gradient. Saves the normalised axis."""

    def __init__(self, axis: int = 0) -> None:
        self.axis = check_axis(self.label, "axis", axis)

    def forward(self, ctx: tg.Context, first: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        rank = first.ndim + 1
        if not -rank <= self.axis < rank:
            raise ShapeError(
                f"{self.label}: axis {self.axis} is out of range for stacking inputs of rank {first.ndim} "
                f"(the result has rank {rank}: axis -{rank}..{rank - 1})"
            )
        if any(x.shape != first.shape for x in rest):
            listed = ", ".join(str(x.shape) for x in (first, *rest))
            raise ShapeError(f"{self.label}: inputs must all have the same shape, got {listed}")
        axis = self.axis % rank
        ctx.saved = (axis,)
        return np.stack((first, *rest), axis=axis)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, ...]:
        (axis,) = ctx.saved
        return tuple(np.moveaxis(grad, axis, 0))  # views of the upstream gradient, one per input

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((2, 3)) for _ in range(3)], name="three")
        yield tg.Sample(args=[1], inputs=[rng.standard_normal((2, 3)) for _ in range(4)], name="time_axis")
        yield tg.Sample(args=[-1], inputs=[rng.standard_normal((2, 3)) for _ in range(2)], name="last_axis")
        yield tg.Sample(inputs=[rng.standard_normal((4,))], name="one_input")
        yield tg.Sample(inputs=[rng.standard_normal(()) for _ in range(3)], name="scalars")


class Unstack(tg.Operation):
    """Split one input into a tuple of outputs along ``axis``, as ``torch.unbind``.
    One output per index along the axis, which is removed: (N, T, D) with axis=1 gives T outputs
    of shape (N, D). Integer inputs stay
    integers (ids). An axis of length 0 raises ShapeError. Outputs are views of the input; the
    gradient stacks the outputs' gradients (zeros for unused outputs). Saves the normalised axis."""

    integer_inputs = (0,)

    def __init__(self, axis: int = 0) -> None:
        self.axis = check_axis(self.label, "axis", axis)

    def forward(self, ctx: tg.Context, x: np.ndarray) -> tuple[np.ndarray, ...]:
        need_rank(self, x, 1)
        (axis,) = axes(self, self.axis, x.ndim) or (0,)
        if x.shape[axis] == 0:
            raise ShapeError(
                f"{self.label}: axis {self.axis} of the input (shape {x.shape}) has length 0: nothing to unstack"
            )
        ctx.saved = (axis,)
        return tuple(np.moveaxis(x, axis, 0))

    def backward(self, ctx: tg.Context, grads: tuple[np.ndarray, ...]) -> np.ndarray:
        (axis,) = ctx.saved
        return np.stack(grads, axis=axis)

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((3, 2))], name="rows")
        yield tg.Sample(args=[1], inputs=[rng.standard_normal((2, 4, 3))], name="time_steps")
        yield tg.Sample(args=[-1], inputs=[rng.standard_normal((2, 3))], name="last_axis")
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], name="length1")
        yield tg.Sample(inputs=[rng.standard_normal(3)], name="vector")


class Exp(tg.Operation):
    """Elementwise ``exp(x)``; an input whose exponential exceeds the float range raises
    NonFiniteError, an OperationError (NaN gives NaN). Saves the output."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        # The overflow flag, not a max() test: x.max() is NaN when x holds a NaN, and hides a 800 next to it.
        with np.errstate(over="raise"):
            try:
                out = np.exp(x)
            except FloatingPointError:
                limit = np.log(np.finfo(x.dtype).max)
                raise NonFiniteError(
                    f"{self.label}: exp overflows {x.dtype} for inputs above {limit:.6g} "
                    f"(largest input {np.nanmax(x):g})"
                ) from None
        ctx.saved = (out,)
        return out

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        return grad * ctx.saved[0]

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((4, 3))], name="batch4")
        yield tg.Sample(inputs=[np.array([[-700.0, -30.0, 0.0, 5.0]])], name="wide_range")
        yield tg.Sample(inputs=[rng.standard_normal(())], name="scalar")


class Log(tg.Operation):
    """Elementwise natural log; inputs <= 0 raise OperationError (NaN gives NaN). Saves the input."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        if x.size and not x.min() > 0:  # also true when x holds a NaN: look closer
            outside = x[x <= 0]
            if outside.size:
                raise OperationError(f"{self.label}: log needs positive inputs, got a minimum of {outside.min()}")
        ctx.saved = (x,)
        return np.log(x)

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        return grad / ctx.saved[0]

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[tg.Sample]:
        yield tg.Sample(inputs=[np.abs(rng.standard_normal((1, 3))) + 0.5], name="batch1")
        yield tg.Sample(inputs=[np.abs(rng.standard_normal((4, 3))) + 0.1], name="batch4")
        yield tg.Sample(inputs=[np.array([[1e-3, 1.0, 1e3]])], name="wide_range")
        yield tg.Sample(inputs=[np.abs(rng.standard_normal(())) + 0.5], name="scalar")


@tg.hookimpl
def tapegrad_operations() -> list[type[tg.Operation]]:
    return [
        Add, Subtract, Multiply, Divide, Matmul, Sum, Mean, Reshape, Transpose, Concat, Index, Stack, Unstack, Exp, Log
    ]
