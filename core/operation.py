"""The ``Operation``/``Loss`` contract: what an op author writes, and the wrapper users call.

An author writes ``forward(self, ctx, *arrays)`` and ``backward(self, ctx, grad)`` on numpy
arrays (a Loss also ``loss(self, ctx, target)``). ``__init_subclass__`` turns that ``forward``
into the user-facing ``forward(*inputs)``: it unwraps the inputs to arrays, runs the author's
code with a fresh ``Context`` and hands the outputs to the graph's tape (``tape.py``), which
records the application in train mode.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy import ndarray

from . import events
from .errors import FLOAT_SIGNALS, GraphError, InputTypeError, NonFiniteError, OperationError, TapegradError
from .parameter import Init
from .tape import AUTHOR_ERRORS, Context
from .variable import Constant, Variable, as_array

if TYPE_CHECKING:
    from .graph import Graph

__all__ = ["Operation", "Loss", "Context", "Sample", "snake_name"]


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


def _make_forward(impl: Callable[..., Any], low: int, high: float) -> Callable[..., Any]:
    """The user-facing ``forward(*inputs)`` around an author's ``forward(self, ctx, *arrays)``."""

    one_input = low <= 1 <= high

    def forward(self: Operation, *inputs: Any) -> Any:
        if inputs and isinstance(inputs[0], Context):
            return impl(self, *inputs)  # an author's subclass calling super().forward(ctx, ...)
        graph = self.graph or self.require_graph()
        # unwrap (the fast path: one plain Variable holding a plain array of the graph's dtype, as most
        # applications in a model are)
        if (
            one_input
            and len(inputs) == 1
            and type(x := inputs[0]) is Variable
            and type(array := x.value) is ndarray
            and array.dtype == graph.dtype
        ):
            arrays: Sequence[np.ndarray] = (array,)
            ctx = Context(self, inputs, (True,))
        else:
            arrays, wanted = self._input_arrays(inputs, low, high)
            ctx = Context(self, inputs, wanted)
        # call (the hook: while nothing observes, this one test is all it costs)
        tape = graph.tape
        tape.inside += 1  # ops this code applies are part of this application (see Tape.record)
        try:
            if events.observer is None:
                out = impl(self, ctx, *arrays)
            else:
                out = events.observer.run("forward", impl, self, (self, ctx, *arrays), {})
        except TapegradError:
            raise
        except (*AUTHOR_ERRORS, *FLOAT_SIGNALS) as exc:
            raise self.author_error("forward", exc, arrays) from exc
        finally:
            tape.inside -= 1
        # record
        try:
            outputs = tuple(map(Variable, out)) if type(out) is tuple else Variable(out)
        except InputTypeError as exc:
            raise OperationError(f"{self.label}: forward must return real arrays (or a tuple of them): {exc}") from None
        tape.record(ctx, arrays, outputs, graph.train_state)
        return outputs

    forward.__doc__ = impl.__doc__
    forward.__wrapped__ = impl  # type: ignore[attr-defined]
    forward._tapegrad_wrapper = True  # type: ignore[attr-defined]
    return forward


def plain_array(op: Operation, array: np.ndarray, what: str) -> np.ndarray:
    """An instance of an ndarray subclass (``np.matrix``, a masked array, ...) as the plain ndarray an
    op computes on: a view of the same data. A masked array with masked entries is refused (its
    masked values are not data), naming the op."""
    if isinstance(array, np.ma.MaskedArray):
        if np.ma.getmaskarray(array).any():
            raise InputTypeError(
                f"{op.label} {what}: a masked array with {int(np.ma.getmaskarray(array).sum())} masked entries; ops "
                "compute on every value, so fill or drop the masked ones first (array.filled(value), "
                "array.compressed())"
            )
        array = np.ma.getdata(array)
    return array.view(ndarray)


def nonfinite_loss(op: Operation, value: float) -> NonFiniteError:
    """The error for a loss that came out NaN or infinite."""
    return NonFiniteError(
        f"{op.label}: the loss is {value}; its input holds NaN or infinite values "
        "(a diverging model: try a smaller learning rate)"
    )


def _count(low: int, high: float) -> str:
    if low == high:
        return str(low)
    return f"at least {low}" if high == math.inf else f"{low} to {int(high)}"


def _make_loss(impl: Callable[..., Any]) -> Callable[..., float]:
    """The user-facing ``loss(target)`` around an author's ``loss(self, ctx, target)``."""

    def loss(self: Operation, target: Any, *rest: Any) -> float:
        if isinstance(target, Context):
            return impl(self, target, *rest)  # type: ignore[no-any-return]  # a subclass calling super().loss(ctx, t)
        graph = self.graph or self.require_graph()
        tape = graph.tape
        ctx = tape.latest_application(self, graph.train_state)
        if type(target) is Variable and type(target.value) is ndarray:
            array = target.value
        elif type(target) is ndarray and target.dtype.kind in "fiub":
            array = target
        else:
            array = plain_array(self, as_array(target, f"{self.label} target"), "target")
        tape.inside += 1  # (as in forward)
        try:  # (the hook, as in forward)
            if events.observer is None:
                value = float(impl(self, ctx, array))
            else:
                value = float(events.observer.run("loss", impl, self, (self, ctx, array), {}))
        except TapegradError:
            raise
        except (*AUTHOR_ERRORS, *FLOAT_SIGNALS) as exc:
            raise self.author_error("loss", exc, [*ctx.saved, array]) from exc
        finally:
            tape.inside -= 1
        if not math.isfinite(value):
            raise nonfinite_loss(self, value)
        return tape.add_loss(ctx, target, array, value)

    loss.__doc__ = impl.__doc__
    loss.__wrapped__ = impl  # type: ignore[attr-defined]
    loss._tapegrad_wrapper = True  # type: ignore[attr-defined]
    return loss


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_name(name: str) -> str:
    """``SoftmaxLoss`` -> ``softmax_loss``, ``LSTMCell`` -> ``lstm_cell``."""
    return _CAMEL.sub("_", name).lower()


class Operation(events.Reported):
    """Base class of every operation.

    Subclasses write ``forward(self, ctx, *arrays) -> array | tuple`` and
    ``backward(self, ctx, grad) -> array | tuple`` (one gradient per input, ``None``
    where none exists), create trainable state in ``__init__`` with ``self.parameter``,
    and describe test cases in ``samples(cls, rng)``. Users call ``op.forward(*inputs)``
    or ``op(*inputs)``; ``graph.get_operation`` creates instances.
    """

    graph: Graph | None = None
    name: str = ""
    #: True when the output legitimately differs between train and eval mode (Dropout).
    differs_in_eval: ClassVar[bool] = False
    #: Positions of inputs that are meant to be integers (ids, indices): they stay integers.
    #: Every other integer or bool input is converted to the graph's dtype before ``forward``.
    integer_inputs: ClassVar[tuple[int, ...]] = ()
    #: True for ``Loss`` subclasses (set by the class, not by authors).
    is_loss: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        impl = cls.__dict__.get("forward")
        if impl is not None and not getattr(impl, "_tapegrad_wrapper", False):
            wrapper = _make_forward(impl, *_arity(impl))
            cls.forward = wrapper  # type: ignore[method-assign]
            cls.__call__ = wrapper  # type: ignore[method-assign]
        loss_impl = cls.__dict__.get("loss")
        if loss_impl is not None and not getattr(loss_impl, "_tapegrad_wrapper", False):
            cls.loss = _make_loss(loss_impl)  # type: ignore[attr-defined]

    # -- the author's side -------------------------------------------------------------
    # Typed loosely on purpose: authors write forward(self, ctx, *arrays) and users call
    # forward(*inputs); the wrapper installed by __init_subclass__ bridges the two.
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
        graph = self.require_graph()
        return graph.parameter.get_variable(f"{self.name}.{name}", shape, init, trainable=trainable)

    def parameters(self) -> dict[str, Variable]:
        """This op's variables, by their short name (``{"W": ..., "b": ...}``).

        A variable belongs to the op with the longest name it starts with (``enc.1.W`` is op
        ``enc.1``'s, not ``enc``'s)."""
        if self.graph is None:
            return {}
        prefix = self.name + "."
        others = tuple(name + "." for name in self.graph.operations if name.startswith(prefix))
        return {
            k[len(prefix) :]: v
            for k, v in self.graph.parameter.variable_dict.items()
            if k.startswith(prefix) and not (others and k.startswith(others))
        }

    def __call__(self, *inputs: Any) -> Any:
        return self.forward(*inputs)

    # -- what the framework and messages use -------------------------------------------------
    @property
    def label(self) -> str:
        """How messages name this op: ``"Affine (affine_0)"``, or the class name alone."""
        cls = type(self).__name__
        return f"{cls} ({self.name})" if self.name and self.name != cls else cls

    def require_graph(self) -> Graph:
        """The graph this op belongs to, or a ``GraphError`` saying how to attach it."""
        if self.graph is None:
            raise GraphError(
                f"{type(self).__name__} is not attached to a Graph: create it with "
                f"graph.get_operation({type(self).__name__!r}, ...)"
            )
        return self.graph

    def _input_arrays(
        self, inputs: tuple[Any, ...], low: int, high: float
    ) -> tuple[list[np.ndarray], tuple[bool, ...]]:
        """The arrays ``forward`` receives (Variables' values and constants, checked), and per
        input whether its gradient is wanted (a float Variable).

        Lists and scalars become arrays (floats in the graph's dtype); integer and bool arrays
        are converted to the graph's dtype unless their position is in ``integer_inputs``, and so
        are floats narrower than it (float16 in a float64 graph). Wider floats stay as they are.
        """
        if not low <= len(inputs) <= high:
            raise InputTypeError(f"{self.label}: expected {_count(low, high)} input(s), got {len(inputs)}")
        dtype = self.require_graph().dtype
        arrays, wanted = [], []
        for index, x in enumerate(inputs):
            wanted.append(isinstance(x, Variable) and x.value.dtype.kind == "f" and not isinstance(x, Constant))
            if isinstance(x, Variable):
                array = x.value
            elif isinstance(x, np.ndarray):
                array = x
            else:
                array = as_array(x, f"{self.label} input {index}")
                if array.dtype.kind == "f" and isinstance(x, (list, tuple, int, float)):  # Python data: the graph's
                    array = array.astype(dtype, copy=False)
            if type(array) is not ndarray:
                array = plain_array(self, array, f"input {index}")
            kind = array.dtype.kind
            if kind not in "fiub":
                raise InputTypeError(
                    f"{self.label} input {index}: expected a real numeric array, got dtype {array.dtype}"
                )
            narrower = kind == "f" and array.dtype.itemsize < dtype.itemsize
            if (kind != "f" and index not in self.integer_inputs) or narrower:
                array = array.astype(dtype)
            arrays.append(array)
        return arrays, tuple(wanted)

    def author_error(self, stage: str, exc: BaseException, values: Any) -> TapegradError:
        """What an exception from the author's ``stage`` becomes: the op's error naming it."""
        if isinstance(exc, FLOAT_SIGNALS):
            return NonFiniteError(
                f"{self.label}: {stage} went beyond the float range on inputs of shapes {_shapes(values)}: {exc}"
            )
        kind = InputTypeError if isinstance(exc, TypeError) else OperationError
        return kind(f"{self.label}: {stage} failed on inputs of shapes {_shapes(values)}: {exc}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>" if self.name else f"<{type(self).__name__}>"


class Loss(Operation):
    """An Operation that also computes a scalar loss.

    ``loss(self, ctx, target) -> float`` sees the Context of the op's most recent forward;
    ``backward(self, ctx, grad)`` receives the loss's gradient (a scalar, 1.0 from
    ``graph.backward()``) and returns the gradient of each input of ``forward``. What
    ``forward`` returns (probabilities, say) is for reading: gradients flow from the loss
    value, not through those outputs (use Softmax and friends to differentiate through them).
    A loss whose input holds NaN or infinity raises ``NonFiniteError`` from ``loss``.
    """

    is_loss: ClassVar[bool] = True

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        """Return the scalar loss of the most recent forward against ``target`` (override this)."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss(self, ctx, target)")


Loss.loss = _make_loss(Loss.loss)  # type: ignore[method-assign]
