"""Signatures: which record a call of a captured step replays.

A call's key holds the graph's train/eval mode, how many ops the graph has (a layer added since makes
a new record), and per argument: for an array or a Variable, its shape and dtype (and its type, for an
ndarray subclass); lists, tuples and dicts of them, item by item; any other argument by value (0.0 and
-0.0 differ, NaN equals NaN). The arrays and Variables are the call's *leaves*, in order: what the
replay program takes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from ..errors import CaptureError
from ..variable import Variable

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["Made", "changed", "rebuild", "signature"]


def signature(args: tuple[Any, ...], kwargs: Mapping[str, Any], graph: Graph) -> tuple[Any, list[Any]]:
    """(key, leaves): the cache key of a call, and its array and Variable arguments in order."""
    leaves: list[Any] = []
    parts: list[Any] = [graph.train_state, len(graph.operations)]
    plain = True
    for index, a in enumerate(args):
        if type(a) is ndarray:  # the common case first
            leaves.append(a)
            parts.append(a.shape)
            parts.append(a.dtype)
        else:
            plain = False
            parts.append(_spec(a, leaves, f"argument {index}"))
    if kwargs:
        plain = False
        parts.append(tuple((k, _spec(v, leaves, f"argument {k!r}")) for k, v in kwargs.items()))
    if not plain:
        variables = [id(leaf) for leaf in leaves if isinstance(leaf, Variable)]
        if len(set(variables)) < len(variables):
            # one Variable passed twice: a record made so binds both uses to it, so it is keyed apart
            first: dict[int, int] = {}
            parts.append(("aliases", tuple(first.setdefault(id(leaf), i) for i, leaf in enumerate(leaves))))
    return tuple(parts), leaves


def _spec(obj: Any, leaves: list[Any], where: str) -> Any:
    if isinstance(obj, ndarray):
        leaves.append(obj)
        return (type(obj), obj.shape, obj.dtype)
    if isinstance(obj, Variable):
        leaves.append(obj)
        return (Variable, obj.value.shape, obj.value.dtype)
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_spec(o, leaves, f"{where}[{i}]") for i, o in enumerate(obj)))
    if isinstance(obj, Mapping):
        return (type(obj), tuple((k, _spec(v, leaves, f"{where}[{k!r}]")) for k, v in obj.items()))
    if isinstance(obj, (float, np.floating)):  # by its bits: 0.0 and -0.0 differ, NaN equals NaN
        return (type(obj), float(obj).hex())
    try:
        hash(obj)
    except TypeError:
        raise CaptureError(
            f"the captured step's {where} is a {type(obj).__name__}, neither an array, a Variable nor "
            "hashable: a record is kept per value of such arguments. Pass arrays or Variables (lists, "
            "tuples and dicts of them are fine), or hashable values (numbers, strings, tuples)."
        ) from None
    return ("value", type(obj), obj)


def rebuild(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], replace: Callable[[int], Any]
) -> tuple[tuple[Any, ...], dict[str, Any], list[Made]]:
    """``args`` and ``kwargs`` with their k-th leaf (in ``signature``'s order) replaced by ``replace(k)``, in
    lists, tuples and dicts made anew; and each list or dict made (``changed`` tells whether the step changed
    one: a replay could not)."""
    count = [0]
    made: list[Made] = []
    leaves: dict[int, Any] = {}  # id(stand-in) -> the caller's leaf

    def walk(obj: Any) -> Any:
        if isinstance(obj, (ndarray, Variable)):
            count[0] += 1
            stand_in = replace(count[0] - 1)
            leaves[id(stand_in)] = obj
            return stand_in
        if isinstance(obj, tuple):
            items = [walk(o) for o in obj]
            return type(obj)._make(items) if hasattr(obj, "_fields") else type(obj)(items)  # type: ignore[attr-defined]
        if isinstance(obj, list):
            items = type(obj)(walk(o) for o in obj)
            made.append(Made(items, obj, list(items), leaves))
            return items
        if isinstance(obj, Mapping):
            mapping: Any = copy.copy(obj)
            for k, v in obj.items():
                mapping[k] = walk(v)
            made.append(Made(mapping, obj, list(mapping.items()), leaves))
            return mapping
        return obj

    return tuple(walk(a) for a in args), {k: walk(v) for k, v in kwargs.items()}, made


class Made:
    """A list or dict ``rebuild`` made for the step in place of the caller's ``original``, with what it
    ``held`` then (``leaves``: the caller's leaf behind each stand-in)."""

    def __init__(self, container: Any, original: Any, held: list[Any], leaves: dict[int, Any]) -> None:
        self.container, self.original, self.held, self.leaves = container, original, held, leaves

    def changed(self) -> bool:
        """Whether the step added, removed or replaced one of its items."""
        now = list(self.container.items()) if isinstance(self.container, Mapping) else list(self.container)
        if len(now) != len(self.held):
            return True
        if isinstance(self.container, Mapping):
            return any(a[0] != b[0] or a[1] is not b[1] for a, b in zip(now, self.held))
        return any(a is not b for a, b in zip(now, self.held))

    def write_back(self) -> None:
        """Make the caller's container hold what the step left in this one (its leaves for the stand-ins):
        what the eager call would have done to it."""
        def own(item: Any) -> Any:
            return self.leaves.get(id(item), item)

        if isinstance(self.original, Mapping):
            self.original.clear()  # type: ignore[attr-defined]
            self.original.update((k, own(v)) for k, v in self.container.items())  # type: ignore[attr-defined]
        else:
            self.original[:] = [own(item) for item in self.container]


def changed(made: list[Made]) -> bool:
    """Whether the step changed a list or dict ``rebuild`` made; if so, the caller's get the same changes."""
    found = [m for m in made if m.changed()]
    for m in found:
        m.write_back()
    return bool(found)
