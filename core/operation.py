"""The ``Operation``/``Loss`` contract: what an op author writes, and the wrapper users call.

An author writes ``forward(self, ctx, *arrays)`` and ``backward(self, ctx, grad)`` on numpy
arrays. ``__init_subclass__`` turns that ``forward`` into the user-facing
``forward(*variables)``, which unwraps Variables, runs the author's code with a fresh
``Context`` and records it on the graph's tape (train mode only).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy import ndarray  # (a module global: numpy attribute loads are slower in hot loops)

from .errors import (
    GraphError,
    InputTypeError,
    NonFiniteError,
    OperationError,
    TapegradError,
)
from .parameter import Init
from .variable import Variable, as_array

if TYPE_CHECKING:
    from .graph import Graph

__all__ = ["Operation", "Loss", "Context", "Sample"]

_new = object.__new__
#: ``ctx.outputs`` of a recorded Loss application (its outputs are never differentiated).
LOSS_OUTPUT = object()

# Exceptions from an author's numpy code that are re-raised as framework errors naming the op.
_WRAPPED = (ValueError, TypeError, IndexError, ArithmeticError)


@dataclass
class Sample:
    """One case the contract suite checks an op on.

    ``args``/``kwargs`` go to the op's constructor, ``inputs`` (arrays) to ``forward``,
    ``target`` to ``loss`` (losses only); ``name`` shows in test ids.
    """

    inputs: list[Any] = field(default_factory=list)
    args: tuple[Any, ...] | list[Any] = ()
    kwargs: dict[str, Any] | None = None
    target: Any = None
    name: str = ""


class Context:
    """Per-application state: what ``forward`` saved for ``backward``.

    One Context is made for every application of an op, so an op applied twice in a
    pass keeps two. Authors call ``ctx.save(*arrays)`` and read ``ctx.saved`` (assigning
    ``ctx.saved = (...)`` is the same without the call; the first-party ops do that); they
    may also set attributes of their own (``ctx.mask = ...``). ``ctx.inputs`` holds what
    forward received (Variables, or arrays used as constants); ``ctx.sole_input`` is the
    input Variable of a one-input application (None for a constant). The graph's tape
    (``graph.forward_ops``) is a list of Contexts.
    """

    # Filled in by the forward wrapper (no __init__: a Python call would cost every op application).
    __slots__ = ("__dict__", "inputs", "op", "outputs", "saved", "sole_input")
    op: Operation
    inputs: tuple[Any, ...]
    outputs: Any
    saved: tuple[Any, ...]
    sole_input: Variable | None

    # No runtime __getattr__/__setattr__: either would slow every ctx attribute access
    # (CPython does not specialise attribute loads on classes that define them). Authors'
    # own attributes still type-check:
    if TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def save(self, *arrays: Any) -> None:
        """Keep ``arrays`` for ``backward`` (read back as ``ctx.saved``)."""
        self.saved = arrays

    @property
    def needs_input_grad(self) -> tuple[bool, ...]:
        """For each input: does it want a gradient (a float Variable, not a constant)?"""
        return tuple(isinstance(x, Variable) and x.value.dtype.kind == "f" for x in self.inputs)

    @property
    def training(self) -> bool:
        graph = self.op.graph
        return bool(graph is not None and graph.train_state)

    @property
    def rng(self) -> np.random.Generator:
        """The graph's seeded generator (for stochastic ops such as Dropout)."""
        return self.op._require_graph().rng

    def __repr__(self) -> str:
        return f"<Context of {self.op.name or type(self.op).__name__}>"


def _shapes(values: Any) -> str:
    return ", ".join(str(getattr(v, "shape", type(v).__name__)) for v in values) or "no inputs"


def _arity(func: Callable[..., Any]) -> tuple[int, float]:
    """(min, max) number of arrays ``forward(self, ctx, ...)`` accepts."""
    params = list(inspect.signature(func).parameters.values())[2:]
    low, high = 0, 0.0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            high = math.inf
        elif p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            high += 1
            if p.default is p.empty:
                low += 1
    return low, high


def _make_forward(impl: Callable[..., Any], low: int, high: float, is_loss: bool) -> Callable[..., Any]:
    """The user-facing ``forward(*variables)`` around an author's ``forward(self, ctx, *arrays)``."""
    one_input = low <= 1 <= high
    two_inputs = low <= 2 <= high

    def forward(self: Operation, *inputs: Any) -> Any:
        # The hot path of every op: kept flat on purpose (each Python step costs ~30-80 ns, and
        # a training step of a small model makes a few dozen of them).
        # One and two inputs get their own paths: impl(self, ctx, x) costs far less than
        # impl(self, ctx, *values) (CPython does not specialise calls that unpack arguments).
        sole = None
        values: Any = None
        n = len(inputs)
        if n == 1 and one_input:
            x = inputs[0]
            if x.__class__ is Variable:
                sole = x  # backward's fast path: one Variable in
                x = x.value
            elif x.__class__ is Context:
                return impl(self, x)  # an author's subclass calling super().forward(ctx)
            elif x.__class__ is not ndarray or x.dtype.kind not in "fiub":
                x = self._constant(x, 0)
        elif n == 2 and two_inputs:
            x, y = inputs
            if x.__class__ is Variable:
                x = x.value
            elif x.__class__ is Context:
                return impl(self, *inputs)  # an author's subclass calling super().forward(ctx, x)
            else:
                x = self._constant(x, 0)
            y = y.value if y.__class__ is Variable else self._constant(y, 1)
        elif n and inputs[0].__class__ is Context:
            return impl(self, *inputs)  # an author's subclass calling super().forward(ctx, ...)
        else:
            values = _unwrap(self, inputs, low, high)
        graph = self.graph
        if graph is None:
            self._require_graph()
        ctx = Context()  # (a type call: cheaper than object.__new__(Context) here)
        ctx.op = self
        ctx.inputs = inputs
        ctx.sole_input = sole
        ctx.saved = ()
        try:
            if values is not None:
                out = impl(self, ctx, *values)
            elif n == 1:
                out = impl(self, ctx, x)
            else:
                out = impl(self, ctx, x, y)
        except TapegradError:
            raise
        except _WRAPPED as exc:
            if values is None:
                values = (x,) if n == 1 else (x, y)
            raise self._wrap_error("forward", exc, values) from exc
        if out.__class__ is ndarray:
            outputs: Any = _new(Variable)
            outputs.value = out
            outputs._grad = None
            outputs._owned = False
            outputs.name = None
            outputs.trainable = True
        elif out.__class__ is tuple:
            outputs = tuple(Variable._wrap(o if o.__class__ is ndarray else np.asarray(o)) for o in out)
        else:
            outputs = Variable._wrap(np.asarray(out))
        if graph.train_state:  # type: ignore[union-attr]
            # A loss's own outputs are not differentiated through: backward seeds its loss.
            ctx.outputs = LOSS_OUTPUT if is_loss else outputs
            graph.forward_ops.append(ctx)  # type: ignore[union-attr]
        else:
            ctx.outputs = None  # not recorded: nothing is kept for backward
        if is_loss:
            self._last_ctx = ctx
        return outputs

    forward.__doc__ = impl.__doc__
    forward.__wrapped__ = impl  # type: ignore[attr-defined]
    forward._tapegrad_wrapper = True  # type: ignore[attr-defined]
    return forward


def _unwrap(op: Operation, inputs: tuple[Any, ...], low: int, high: float) -> Any:
    """The arrays behind ``inputs`` (Variables, or constants checked and converted), for an
    application the wrapper has no path of its own for (other than one or two inputs)."""
    n = len(inputs)
    if n < low or n > high:
        expected = str(low) if low == high else (f"at least {low}" if high == math.inf else f"{low} to {int(high)}")
        raise InputTypeError(f"{op._label()}: expected {expected} input(s), got {n}")
    return [x.value if x.__class__ is Variable else op._constant(x, i) for i, x in enumerate(inputs)]


def _make_loss(impl: Callable[..., Any]) -> Callable[..., float]:
    def loss(self: Operation, target: Any, *rest: Any) -> float:
        if target.__class__ is ndarray:
            t = target
        elif target.__class__ is Context:
            return impl(self, target, *rest)  # type: ignore[no-any-return]
        else:
            t = target.value if isinstance(target, Variable) else as_array(target, f"{self._label()} target")
        ctx = self._last_ctx
        if ctx is None:
            raise GraphError(f"{self._label()}: loss() needs a forward() first")
        try:
            value = float(impl(self, ctx, t))
        except TapegradError:
            raise
        except _WRAPPED as exc:
            raise self._wrap_error("loss", exc, [*ctx.saved, t]) from exc
        if not math.isfinite(value):
            raise NonFiniteError(
                f"{self._label()}: the loss is {value}; its input holds NaN or infinite values "
                "(a diverging model: try a smaller learning rate)"
            )
        if ctx.outputs is not None:  # recorded in train mode
            graph: Any = self.graph
            tape = graph.forward_ops
            # (usually the last entry: the loss ends the pass)
            if not (tape and tape[-1] is ctx) and not any(entry is ctx for entry in tape):
                raise GraphError(
                    f"{self._label()}: loss() refers to a forward pass that backward() already "
                    "consumed (or clear() dropped); run forward again"
                )
            pending = graph._pending_losses
            if ctx not in pending:
                pending.append(ctx)
        return value

    loss.__doc__ = impl.__doc__
    loss.__wrapped__ = impl  # type: ignore[attr-defined]
    loss._tapegrad_wrapper = True  # type: ignore[attr-defined]
    return loss


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_name(name: str) -> str:
    """``SoftmaxLoss`` -> ``softmax_loss``, ``LSTMCell`` -> ``lstm_cell``."""
    return _CAMEL.sub("_", name).lower()


class Operation:
    """Base class of every operation.

    Subclasses write ``forward(self, ctx, *arrays) -> array | tuple`` and
    ``backward(self, ctx, grad) -> array | tuple`` (one gradient per input, ``None``
    where none exists), create trainable state in ``__init__`` with ``self.parameter``,
    and describe test cases in ``samples(cls, rng)``. Users call ``op.forward(*variables)``
    or ``op(*variables)``; ``graph.get_operation`` creates instances.
    """

    graph: Graph | None = None
    name: str = ""
    #: True when the output legitimately differs between train and eval mode (Dropout).
    differs_in_eval: ClassVar[bool] = False
    _is_loss: ClassVar[bool] = False
    _last_ctx: Context | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("forward")
        if impl is not None and not getattr(impl, "_tapegrad_wrapper", False):
            low, high = _arity(impl)
            wrapper = _make_forward(impl, low, high, bool(cls._is_loss))
            cls.forward = wrapper  # type: ignore[method-assign]
            cls.__call__ = wrapper  # type: ignore[method-assign]
        loss_impl = cls.__dict__.get("loss")
        if loss_impl is not None and not getattr(loss_impl, "_tapegrad_wrapper", False):
            cls.loss = _make_loss(loss_impl)  # type: ignore[attr-defined]

    # -- the author's side -------------------------------------------------------------
    # Typed loosely on purpose: authors write forward(self, ctx, *arrays) and users call
    # forward(*variables); the wrapper installed by __init_subclass__ bridges the two.
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the output arrays from the input arrays (override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward(self, ctx, ...)")

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        """Return the gradient of each input given the output's gradient (override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not define backward(self, ctx, grad)")

    @classmethod
    def samples(cls, rng: np.random.Generator) -> Iterator[Sample]:
        """Yield the ``Sample`` cases the contract suite checks this op on."""
        return iter(())

    def parameter(self, name: str, shape: Any, init: Init = None, *, trainable: bool = True) -> Variable:
        """Create (or fetch) the trainable variable ``<op name>.<name>`` in the graph's store."""
        graph = self._require_graph()
        return graph.parameter.get_variable(f"{self.name}.{name}", shape, init, trainable=trainable)

    def parameters(self) -> dict[str, Variable]:
        """This op's variables, by their short name (``{"W": ..., "b": ...}``)."""
        if self.graph is None:
            return {}
        prefix = self.name + "."
        return {k[len(prefix):]: v for k, v in self.graph.parameter.variable_dict.items() if k.startswith(prefix)}

    def __call__(self, *variables: Any) -> Any:
        return self.forward(*variables)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_last_ctx", None)  # per-call state of the last forward: not part of the model
        return state

    # -- helpers -------------------------------------------------------------------------
    def _label(self) -> str:
        cls = type(self).__name__
        return f"{cls} ({self.name})" if self.name and self.name != cls else cls

    def _require_graph(self) -> Graph:
        if self.graph is None:
            raise GraphError(
                f"{type(self).__name__} is not attached to a Graph: create it with "
                f"graph.get_operation({type(self).__name__!r}, ...)"
            )
        return self.graph

    def _constant(self, value: Any, index: int) -> np.ndarray:
        if isinstance(value, Variable):
            return value.value
        array = as_array(value, f"{self._label()} input {index}")
        graph = self.graph
        if not isinstance(value, np.ndarray) and array.dtype.kind == "f" and graph is not None:
            array = array.astype(graph.dtype, copy=False)
        return array

    def _wrap_error(self, stage: str, exc: BaseException, values: Any) -> TapegradError:
        kind = InputTypeError if isinstance(exc, TypeError) else OperationError
        return kind(f"{self._label()}: {stage} failed on inputs of shapes {_shapes(values)}: {exc}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>" if self.name else f"<{type(self).__name__}>"


class Loss(Operation):
    """An Operation that also computes a scalar loss.

    ``loss(self, ctx, target) -> float`` sees the Context of the most recent forward;
    ``backward(self, ctx, grad)`` receives the loss's gradient (a scalar, 1.0 from
    ``graph.backward()``) and returns the gradient of each input of ``forward``. What
    ``forward`` returns (probabilities, say) is for reading: gradients flow from the loss
    value, not through those outputs (use Softmax and friends to differentiate through them).
    A loss whose input holds NaN or infinity raises ``NonFiniteError`` from ``loss``.
    """

    _is_loss: ClassVar[bool] = True

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        """Return the scalar loss of the most recent forward against ``target`` (override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss(self, ctx, target)")


Loss.loss = _make_loss(Loss.loss)  # type: ignore[method-assign]
