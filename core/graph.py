"""``Graph``: a named tape of forward operations, the parameter store, and backward."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray  # (a module global: numpy attribute loads are slower in hot loops)

from .errors import BackwardError, GraphError, InputTypeError
from .operation import LOSS_OUTPUT, Context, Operation, snake_name
from .parameter import Init, Parameter
from .variable import Variable, as_array

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Graph"]


class Graph:
    """A model's graph: its operations, its parameters and the tape of one forward pass.

    In train mode (the default) every op application is recorded on ``forward_ops``;
    ``backward()`` replays it in reverse and clears it. In eval mode forward and loss
    still compute, but nothing is recorded. Parameters are drawn from the graph's
    seeded generator in the graph's dtype.
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
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise InputTypeError(f"Graph {name!r}: dtype must be a float type, got {self.dtype}")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.parameter = Parameter(self.rng, self.dtype)
        self.train_state = True
        self.forward_ops: list[Context] = []
        self.operations: dict[str, Operation] = {}
        self._registry = registry
        self._pending_losses: list[Context] = []  # loss applications to seed in backward
        self._type_counts: dict[str, int] = {}

    # -- state ---------------------------------------------------------------------------
    def train(self) -> Graph:
        """Record forward passes for backward (the default)."""
        self.train_state = True
        return self

    def eval(self) -> Graph:
        """Compute without recording: for validation and inference."""
        self.train_state = False
        return self

    def clear(self) -> None:
        """Drop the tape and any computed loss without differentiating."""
        self.forward_ops.clear()
        self._pending_losses.clear()

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
        if not self._pending_losses and not grads:
            raise BackwardError(
                f"Graph {self.name!r}: backward() needs a loss: call loss(target) on a Loss op "
                "after forward (in train mode), or pass grads={output: gradient}"
                + ("" if self.forward_ops else "; the tape is empty")
            )
        tape = self.forward_ops
        pending = self._pending_losses
        ctx: Context | None = None
        try:
            if grads:
                for variable, grad in grads.items():
                    if variable.value.dtype.kind != "f":
                        continue  # integer outputs carry no gradient
                    if grad.__class__ is not ndarray or grad.dtype != variable.value.dtype:
                        grad = np.asarray(as_array(grad), dtype=variable.value.dtype)
                    variable.add_grad(grad)
            # The hot loop: kept flat on purpose (every Python call here costs ~0.1 us per op).
            for ctx in reversed(tape):
                outputs = ctx.outputs
                if outputs.__class__ is Variable:
                    grad = outputs._grad
                    if grad is None:
                        continue  # output unused: nothing flows back
                    outputs._owned = False  # the op may hand this array back as an input gradient
                elif outputs is LOSS_OUTPUT:
                    if ctx not in pending:
                        continue  # a loss forward whose loss() was never computed contributes nothing
                    grad = loss_grad
                else:
                    grad = _output_grads(outputs)
                    if grad is None:
                        continue
                op = ctx.op
                in_grads = op.backward(ctx, grad)
                x = ctx.sole_input
                if x is not None and in_grads.__class__ is ndarray:
                    # fast path: one Variable in, one array back
                    value = x.value
                    if value.dtype.kind != "f":
                        continue  # integer inputs get no gradient
                    if in_grads.shape != value.shape:
                        in_grads = _coerce_grad(op, x, in_grads)
                    if x._grad is None:  # the usual first contribution, without a call
                        x._grad = in_grads
                        x._owned = False
                    else:
                        x._accumulate(in_grads)
                    continue
                if in_grads is None:
                    continue  # no input wants a gradient (Affine on data, Embedding)
                inputs = ctx.inputs
                if in_grads.__class__ is tuple:
                    if len(in_grads) != len(inputs):
                        raise BackwardError(
                            f"{op._label()}: backward returned {len(in_grads)} gradients for {len(inputs)} inputs"
                        )
                    pairs: Any = zip(inputs, in_grads)
                elif len(inputs) == 1:
                    pairs = ((inputs[0], in_grads),)
                elif not inputs:
                    continue
                else:
                    raise BackwardError(
                        f"{op._label()}: backward returned one gradient for {len(inputs)} inputs; "
                        "return a tuple with one entry per input (None where there is none)"
                    )
                for x, g in pairs:
                    if g is None or (x.__class__ is not Variable and not isinstance(x, Variable)):
                        continue
                    value = x.value
                    if value.dtype.kind != "f":
                        continue
                    if g.__class__ is not ndarray or g.shape != value.shape:
                        g = _coerce_grad(op, x, g)
                    x._accumulate(g)
        except (ValueError, TypeError, IndexError, ArithmeticError, AttributeError) as exc:
            if isinstance(exc, BackwardError) or ctx is None:
                raise
            hint = " (set it on ctx in forward or loss before backward reads it)" if isinstance(exc, AttributeError) else ""
            raise BackwardError(f"{ctx.op._label()}: backward failed: {exc}{hint}") from exc
        finally:
            tape.clear()
            pending.clear()

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


def _output_grads(outputs: tuple[Variable, ...]) -> tuple[np.ndarray, ...] | None:
    """Gradients of a multi-output op (zeros for unused outputs), or None if none was used."""
    if all(o._grad is None for o in outputs):
        return None
    grads = tuple(np.zeros_like(o.value) if o._grad is None else o._grad for o in outputs)
    for o in outputs:
        o._owned = False
    return grads


def _coerce_grad(op: Operation, x: Variable, g: Any) -> np.ndarray:
    array = np.asarray(g)
    if array.shape != x.value.shape:
        raise BackwardError(
            f"{op._label()}: backward returned a gradient of shape {array.shape} for an input "
            f"of shape {x.value.shape}"
        )
    return array


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
