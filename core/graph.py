"""``Graph``: a model's operations, its parameters, its train/eval mode and its tape."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import events
from .arguments import check_number
from .errors import GraphError, InputTypeError
from .events import replayable
from .operation import Operation, snake_name
from .parameter import Init, Parameter
from .tape import Context, Tape
from .variable import Variable

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Graph", "graph_of"]


class Graph(events.Reported):
    """A model's graph: its operations, its parameters and the tape of one forward pass.

    In train mode (the default) every op application is recorded on the tape
    (``forward_ops``); ``backward()`` walks it in reverse and clears it. In eval mode forward
    and loss still compute, but nothing is recorded. Parameters are drawn from the graph's
    seeded generator in the graph's dtype. A Graph belongs to one thread at a time.
    """

    def __init__(
        self,
        name: str = "graph",
        *,
        seed: int | None = None,
        dtype: Any = np.float64,
        registry: Registry | None = None,
    ) -> None:
        self.name = name
        self.dtype = _float_dtype(name, dtype)
        if seed is not None:
            seed = check_number(f"Graph {name!r}", "seed", seed, low=0, integer=True)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.parameter = Parameter(self.rng, self.dtype)
        self.train_state = True
        self.tape = Tape()
        self.operations: dict[str, Operation] = {}
        self._registry = registry
        self._type_counts: dict[str, int] = {}

    # -- state ---------------------------------------------------------------------------
    @replayable
    def train(self) -> Graph:
        """Record forward passes for backward (the default)."""
        self.train_state = True
        return self

    @replayable
    def eval(self) -> Graph:
        """Compute without recording: for validation and inference."""
        self.train_state = False
        return self

    @property
    def forward_ops(self) -> list[Context]:
        """The tape (the seed's name): one Context per application recorded since the last backward."""
        return self.tape.entries

    def clear(self) -> None:
        """Drop the tape and any computed loss without differentiating."""
        self.tape.clear()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from .registry import default_registry

            self._registry = default_registry()
        return self._registry

    # -- building ----------------------------------------------------------------------
    def get_variable(self, name: str, shape: Any = None, init: Init = None, *, trainable: bool = True) -> Variable:
        """Return the parameter ``name``, creating it with ``init`` if new (see ``Parameter``)."""
        return self.parameter.get_variable(name, shape, init, trainable=trainable)

    def get_operation(self, type_name: Any, args: Any = None, *, name: str | None = None, **kwargs: Any) -> Any:
        """Create an operation by registry name (``"Affine"`` or ``"plugin:Affine"``).

        ``args`` is a list/tuple of positional constructor arguments or a dict of keyword
        arguments; ``kwargs`` are keyword arguments. An Operation subclass may be given
        instead of a name. Returns an instance of the op's own class (typed ``Any``: which
        class it is depends on the registry).
        """
        if isinstance(type_name, type) and issubclass(type_name, Operation):
            cls = type_name
        elif isinstance(type_name, str):
            cls = self.registry.resolve(type_name)
        else:
            raise InputTypeError(f"get_operation: expected an operation name, got {type(type_name).__name__}")
        if args is None:
            pos: tuple[Any, ...] = ()
        elif isinstance(args, Mapping):
            pos, kwargs = (), {**args, **kwargs}
        elif isinstance(args, (list, tuple)):
            pos = tuple(args)
        else:
            pos = (args,)
        _check_arguments(cls, pos, kwargs)
        key = snake_name(cls.__name__)
        if name is None:
            count = self._type_counts.get(key, 0)
            while f"{key}_{count}" in self.operations:
                count += 1
            name = f"{key}_{count}"
            self._type_counts[key] = count + 1
        elif name in self.operations:
            raise GraphError(
                f"Graph {self.name!r} already has an operation named {name!r}; "
                "reuse that op object to share its weights"
            )
        op = cls.__new__(cls)
        op.graph = self
        op.name = name
        op.__init__(*pos, **kwargs)  # type: ignore[misc]
        self.operations[name] = op
        return op

    # -- backward ----------------------------------------------------------------------
    def backward(self, grads: Mapping[Variable, Any] | None = None, *, loss_grad: float = 1.0) -> None:
        """Differentiate the recorded pass, then clear the tape.

        Every loss computed since the last backward is seeded with ``loss_grad`` (1.0);
        ``grads`` may seed output Variables with explicit gradients as well. Gradients
        accumulate into ``.grad`` of every float Variable reached, parameters included.
        """
        self.tape.backward(grads, loss_grad, name=self.name)

    def to_dot(self) -> str:
        """The last recorded pass as Graphviz DOT text: the pass on the tape, else the one the latest
        backward consumed, with the gradient norms of its inputs and parameters (see ``tapegrad.draw``)."""
        from .draw import graph_dot

        return graph_dot(self)

    # -- captured steps --------------------------------------------------------------------
    def capture(self, fn: Callable[..., Any] | None = None, *, check: bool = True, max_records: int = 8) -> Any:
        """Capture a step function: its first call per signature runs eagerly and records it,
        later calls replay the record at numpy speed (see ``tapegrad.capture``).

        Use as ``step = graph.capture(fn)`` or as a decorator (``@graph.capture``, or
        ``@graph.capture(check=False)``). ``check`` verifies the first replay of every record
        against an eager run, bit for bit; ``max_records`` bounds the cache of records.
        """
        from .capture import CapturedStep

        if fn is None:
            return lambda f: CapturedStep(self, f, check=check, max_records=max_records)
        return CapturedStep(self, fn, check=check, max_records=max_records)

    def __getstate__(self) -> dict[str, Any]:
        # The registry holds plugin modules and is not picklable; an unpickled graph
        # looks operations up in the default registry again.
        state = self.__dict__.copy()
        state["_registry"] = None
        return state

    def __repr__(self) -> str:
        mode = "train" if self.train_state else "eval"
        return (
            f"Graph({self.name!r}, {mode}, {len(self.operations)} ops, "
            f"{len(self.parameter)} variables, tape={len(self.forward_ops)})"
        )


def graph_of(obj: Any) -> Graph | None:
    """``obj`` if it is a Graph, else its ``.graph`` (a model's, a Trainer's, a captured step's) if that is
    one; None otherwise. (Everything that accepts "a Graph or a model" finds the graph so.)"""
    if isinstance(obj, Graph):
        return obj
    found = getattr(obj, "graph", None)
    return found if isinstance(found, Graph) else None


def _float_dtype(name: str, dtype: Any) -> np.dtype:
    """``dtype`` as a numpy float dtype, or an error saying what arrived."""
    try:
        found = np.dtype(dtype)
    except (TypeError, ValueError):
        raise InputTypeError(
            f"Graph {name!r}: dtype must be a numpy float type (np.float64, np.float32, 'float32', ...), got {dtype!r}"
        ) from None
    if found.kind != "f":
        raise InputTypeError(f"Graph {name!r}: dtype must be a float type, got {found}")
    return found


def _check_arguments(cls: type[Operation], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, *args, **kwargs)
    except TypeError as exc:
        params = [p for p in list(signature.parameters)[1:] if p not in ("args", "kwargs")]
        valid = ", ".join(params) if params else "none"
        raise InputTypeError(
            f"{cls.__name__}: {exc} (valid arguments: {valid}; got args={list(args)}, "
            f"kwargs={sorted(kwargs)})"
        ) from None
