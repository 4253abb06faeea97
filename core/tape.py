"""The tape: what one forward pass recorded, and the backward walk over it.

Every op application gets a ``Context`` (what its ``forward`` saved for ``backward``). The
forward wrapper (``operation.py``) hands it to ``Tape.record`` with the op's outputs; in train
mode the tape keeps it (``graph.forward_ops`` is the tape's list). A ``Loss`` application is also
remembered as its op's latest, in either mode, so ``loss(target)`` can pair with it
(``Tape.latest``); a computed loss is queued for seeding (``Tape.add_loss``).

An op whose own code (its ``forward``, ``loss`` or ``backward``) applies other ops of its graph makes
them part of its application: while one runs (``Tape.inside``), applications are computed but not
recorded, as PyTorch runs a custom Function's forward without recording. Their gradients are the
op's business. (Ops of another graph record on their own tape.)

``Tape.backward`` seeds every queued loss with ``loss_grad`` and any output Variable with an
explicit gradient, then walks the tape in reverse: each application whose outputs received a
gradient has its op's ``backward(ctx, grad)`` called, and the input gradients it returns are
added into the input Variables with ``Variable.add_grad`` (the one accumulation rule). The tape
is cleared afterwards, whatever happened.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from .draw import Pass, summarize
from .errors import BackwardError, GraphError, InputTypeError, ShapeError, TapegradError, TapeWarning
from .variable import Variable

if TYPE_CHECKING:
    from .operation import Operation

__all__ = ["Context", "Tape", "RECORDING", "PROFILER", "backward_error", "replayable"]

#: The recording in progress in this thread, if any (a captured step's first call): the tape,
#: the loss wrapper and every ``replayable`` method report to it (see ``replay.Recording``).
RECORDING: ContextVar[Any] = ContextVar("tapegrad_recording", default=None)

#: The running profiler (``profile.Profile``), or None. Profiling hook: the forward and loss
#: wrappers, ``Tape.backward``'s call of an op's backward, ``replayable`` and a captured step
#: test this one global and do nothing else while it is None, so profiling off costs one test.
PROFILER: Any = None


def replayable(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a method that a captured step replays (``Optimizer.step``, ``Parameter.clear_grads``):
    while a step records, each call is noted; a replay calls the undecorated method again."""

    @functools.wraps(method)
    def noted(self: Any, *args: Any, **kwargs: Any) -> Any:
        recording = RECORDING.get()
        if recording is None or recording.in_call:  # (a call made by a noted call is replayed by it)
            return method(self, *args, **kwargs) if PROFILER is None else PROFILER.call(method, self, args, kwargs)
        recording.called(self, method, args, kwargs)
        recording.in_call = True
        try:
            return method(self, *args, **kwargs) if PROFILER is None else PROFILER.call(method, self, args, kwargs)
        finally:
            recording.in_call = False

    return noted

# Exceptions from an author's numpy code that are re-raised as framework errors naming the op.
AUTHOR_ERRORS = (ValueError, TypeError, IndexError, ArithmeticError)
# numpy's floating-point signals, raised when the caller asked for them: np.errstate(over="raise")
# raises FloatingPointError (the Trainer trains so), a warnings filter turns the RuntimeWarning into
# an exception (pytest configured so). They become NonFiniteError (BackwardError in backward).
FLOAT_SIGNALS = (FloatingPointError, RuntimeWarning)


class Context:
    """Per-application state: what ``forward`` saved for ``backward``.

    One Context is made for every application of an op, so an op applied twice in a pass keeps
    two. Authors call ``ctx.save(*arrays)`` (or assign ``ctx.saved = (...)``) and read
    ``ctx.saved``; they may set attributes of their own (``ctx.mask = ...``).
    ``ctx.needs_input_grad`` says, per input, whether its gradient is wanted (an op may return
    None for the others); ``ctx.training`` and ``ctx.rng`` give the graph's mode and generator.
    ``ctx.inputs`` and ``ctx.outputs`` are the application's Variables (or constant arrays), for
    the tape and for tools; ops must not rely on them.
    """

    __slots__ = ("__dict__", "inputs", "needs_input_grad", "nested", "op", "outputs", "recorded", "saved")

    op: Operation
    inputs: tuple[Any, ...]
    outputs: Any
    saved: tuple[Any, ...]
    needs_input_grad: tuple[bool, ...]
    recorded: bool

    def __init__(self, op: Operation, inputs: tuple[Any, ...], needs_input_grad: tuple[bool, ...]) -> None:
        self.op = op
        self.inputs = inputs
        self.needs_input_grad = needs_input_grad
        self.outputs = None
        self.saved = ()
        self.recorded = False

    if TYPE_CHECKING:  # authors' own attributes type-check

        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...

    def save(self, *arrays: Any) -> None:
        """Keep ``arrays`` for ``backward`` (read back as ``ctx.saved``)."""
        self.saved = arrays

    @property
    def training(self) -> bool:
        """True when the graph is in train mode."""
        graph = self.op.graph
        return bool(graph is not None and graph.train_state)

    @property
    def rng(self) -> np.random.Generator:
        """The graph's seeded generator (for stochastic ops such as Dropout)."""
        return self.op.require_graph().rng

    def __repr__(self) -> str:
        return f"<Context of {self.op.label}>"


class Tape:
    """The applications recorded since the last backward, and the losses queued for seeding.

    ``entries`` (a Graph's ``forward_ops``) lists the recorded Contexts in forward order;
    ``losses`` the Loss applications whose ``loss(target)`` was computed since (``targets``: what
    each loss was computed against).

    For drawing (``draw.py``), the pass the latest backward consumed is kept as it was
    (``consumed``: its Contexts, so backward pays nothing for it) until the next forward. If that
    one records, the new pass supersedes it; otherwise (eval mode), or when it is drawn, it is
    reduced to a light summary (``last_pass``) that keeps no activations (``release_pass``).
    """

    #: Past this many entries without a backward, the tape warns once (see ``record``).
    WARN_ENTRIES = 50_000

    def __init__(self) -> None:
        self.entries: list[Context] = []
        self.losses: list[Context] = []
        self.latest: dict[Operation, Context] = {}  # each Loss op's most recent application
        self.targets: list[Any] = []  # (drawing) per queued loss, its target
        self.consumed: tuple[list[Context], list[Context], list[Any]] | None = None  # (drawing)
        self.last_pass: Pass | None = None  # (drawing)
        self.inside = 0  # how many ops' own code is running (their applications are not recorded)
        self._warned = False

    # -- recording -----------------------------------------------------------------------------
    def record(self, ctx: Context, arrays: Sequence[np.ndarray], outputs: Any, keep: bool) -> None:
        """Note an application (its op received ``arrays`` and produced ``outputs``); keep it for
        backward when ``keep`` (train mode). A growing tape that nobody differentiates warns once.
        An application made by another op's code is part of that one: not recorded (see the module
        docstring); a Loss's is still its latest, for its ``loss(target)``."""
        ctx.outputs = outputs
        if self.inside:
            if ctx.op.is_loss:
                ctx.nested = True  # (set here only: a top-level loss() on it is refused, see add_loss)
                self.latest[ctx.op] = ctx
            return
        if self.consumed is not None:  # (drawing) the first application after a backward
            if keep:
                self.consumed = self.last_pass = None  # the new pass supersedes the consumed one
            else:
                self.release_pass()
        if ctx.op.is_loss:
            self.latest[ctx.op] = ctx
        if keep:
            ctx.recorded = True
            self.entries.append(ctx)
        recording = RECORDING.get()
        if recording is not None:
            recording.applied(ctx, arrays)
        if keep and len(self.entries) == self.WARN_ENTRIES and not self._warned:
            self._warned = True
            graph = ctx.op.graph
            warnings.warn(
                f"Graph {graph.name if graph else '?'!r}: the tape holds {self.WARN_ENTRIES} applications "
                "that no backward() has consumed, and keeps growing with every forward in train mode. "
                "For inference call graph.eval() first; when training, call graph.backward() (or "
                "graph.clear()) after each pass.",
                TapeWarning,
                stacklevel=4,
            )

    def latest_application(self, op: Operation) -> Context:
        """The most recent application of the Loss ``op``, for ``loss(target)``."""
        ctx = self.latest.get(op)
        if ctx is None:
            raise GraphError(f"{op.label}: loss() needs a forward() first")
        return ctx

    def add_loss(self, ctx: Context, target: Any, array: np.ndarray, value: float) -> None:
        """Queue a computed loss for seeding by ``backward`` (recorded applications only).
        ``target`` is what ``loss(target)`` received, ``array`` its array, ``value`` the loss."""
        if self.inside:
            return  # computed by another op's code: part of that application, nothing to seed
        graph = ctx.op.graph
        if getattr(ctx, "nested", False) and graph is not None and graph.train_state:
            raise GraphError(
                f"{ctx.op.label}: loss() pairs with its latest forward, which another op's code applied "
                "inside its own forward, loss or backward: that application is part of the other op and is "
                "not recorded, so this loss could not be differentiated. Apply the forward outside the op, "
                "or compute the loss inside it."
            )
        if ctx.recorded and not any(entry is ctx for entry in reversed(self.entries)):
            raise GraphError(
                f"{ctx.op.label}: loss() refers to a forward pass that backward() already consumed "
                "(or clear() dropped); run forward again"
            )
        recording = RECORDING.get()
        if recording is not None:
            recording.loss(ctx, target, array, value)
        if not ctx.recorded:
            return  # eval mode: a loss for reading, nothing to differentiate
        if ctx not in self.losses:  # (Contexts compare by identity)
            self.losses.append(ctx)
            self.targets.append(target)  # (drawing: the loss node's input)

    def release_pass(self, summary: bool = True) -> None:
        """Let go of the consumed pass's Contexts, and so of its activations: keep its light
        summary for drawing (``summary``), or nothing (a new pass on the tape supersedes it)."""
        consumed, self.consumed = self.consumed, None
        if consumed is not None:
            self.last_pass = summarize(*consumed) if summary else None

    def __getstate__(self) -> dict[str, Any]:
        # (drawing) a copy or a pickle keeps the consumed pass as its light summary, not its activations
        state = self.__dict__.copy()
        if self.consumed is not None:
            state["consumed"], state["last_pass"] = None, summarize(*self.consumed)
        # a loss pairs with a forward in flight after unpickling; an eval-mode one's arrays stay behind
        state["latest"] = {op: ctx for op, ctx in self.latest.items() if any(e is ctx for e in self.entries)}
        state["inside"] = 0  # (a copy made while an op's code runs is not inside it)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]  # (a tape pickled before drawings existed lacks their attributes)
        self.__dict__.update(state)

    def clear(self) -> None:
        """Drop the recorded applications and the queued losses."""
        self.entries.clear()
        self.losses.clear()
        self.targets.clear()

    @contextlib.contextmanager
    def isolated(self) -> Iterator[None]:
        """An empty tape inside the block; what was recorded before comes back afterwards.

        The contract suite and gradcheck differentiate on a graph without touching a pass
        the user has in flight.
        """
        entries, losses, targets = list(self.entries), list(self.losses), list(self.targets)
        latest = dict(self.latest)  # the user's losses pair with the user's forwards afterwards
        drawn = self.consumed, self.last_pass  # (drawing: the user's last pass, not the checker's)
        self.clear()
        try:
            yield
        finally:
            self.clear()
            self.entries.extend(entries)
            self.losses.extend(losses)
            self.targets.extend(targets)
            self.latest = latest
            self.consumed, self.last_pass = drawn

    # -- backward ------------------------------------------------------------------------------
    def backward(self, grads: Mapping[Variable, Any] | None = None, loss_grad: float = 1.0, name: str = "graph") -> None:
        """Differentiate the recorded pass, then clear the tape (see the module docstring).

        Bad arguments raise before anything changes; an error inside an op's backward names
        the op (and the tape is cleared: its gradients are partly accumulated).
        """
        seeds = self._seeds(grads, name)
        if not self.losses and not seeds:
            raise BackwardError(
                f"Graph {name!r}: backward() needs a loss: call loss(target) on a Loss op after forward "
                "(in train mode), or pass grads={output: gradient}" + ("" if self.entries else "; the tape is empty")
            )
        recording = RECORDING.get()
        if recording is not None:
            recording.backward(self, seeds, loss_grad)
        ctx: Context | None = None
        self.inside += 1  # ops an op's backward applies are part of it (see the module docstring)
        try:
            for variable, seed in seeds:
                variable.add_grad(seed)
            for ctx in reversed(self.entries):
                outputs = ctx.outputs
                grad: Any
                if ctx.op.is_loss:  # seeded if its loss was computed; its outputs are for reading
                    grad = loss_grad if ctx in self.losses else None  # (Contexts compare by identity)
                elif type(outputs) is Variable:
                    grad = outputs.peek_grad()
                else:
                    grad = _output_grads(outputs)
                if grad is None:
                    continue  # nothing reached this application's outputs
                # profiling hook (one global test): the op's own backward, timed
                in_grads = ctx.op.backward(ctx, grad) if PROFILER is None else PROFILER.backward(ctx.op, ctx, grad)
                if type(in_grads) is ndarray and len(ctx.inputs) == 1:  # one input, one gradient
                    x = ctx.inputs[0]
                    if isinstance(x, Variable) and x.value.dtype.kind == "f":
                        try:
                            x.add_grad(in_grads)
                        except TapegradError as exc:
                            raise _gradient_error(ctx.op, 0, in_grads, x, exc) from None
                elif in_grads is not None:
                    self._route(ctx, in_grads)
        except BackwardError:
            raise
        except (*FLOAT_SIGNALS, *AUTHOR_ERRORS, AttributeError) as exc:
            if ctx is None:
                raise
            raise backward_error(ctx.op, exc) from exc
        finally:
            self.inside -= 1
            # cleared, whatever happened; the lists are kept as the consumed pass, for drawing (see the class docstring)
            self.consumed, self.last_pass = (self.entries, self.losses, self.targets), None
            self.entries, self.losses, self.targets = [], [], []

    def _seeds(self, grads: Mapping[Variable, Any] | None, name: str) -> list[tuple[Variable, np.ndarray]]:
        """``grads`` checked: float output Variables of recorded applications, and their gradients."""
        if not grads:
            return []
        if not isinstance(grads, Mapping):
            raise InputTypeError(
                f"Graph {name!r}: backward(grads=...) takes a dict {{output Variable: gradient}}, "
                f"got {type(grads).__name__}"
            )
        produced = {id(o) for ctx in self.entries for o in _as_tuple(ctx.outputs)}
        seeds = []
        for variable, grad in grads.items():
            if not isinstance(variable, Variable):
                raise InputTypeError(f"Graph {name!r}: backward(grads=...) keys must be Variables, got {type(variable).__name__}")
            if not variable.differentiable:
                continue  # integer outputs carry no gradient
            if id(variable) not in produced:
                raise BackwardError(
                    f"Graph {name!r}: backward(grads=...) got a Variable of shape {variable.shape} that no "
                    "recorded application produced: forward ran in eval mode (graph.train() records), "
                    "or backward() already consumed that pass"
                )
            try:
                seeds.append((variable, _float_array(grad, variable)))
            except TapegradError as exc:
                raise type(exc)(f"Graph {name!r}: backward(grads=...): {exc}") from None
        return seeds

    @staticmethod
    def _route(ctx: Context, in_grads: Any) -> None:
        """Add the gradients an op's backward returned into its input Variables."""
        op, inputs = ctx.op, ctx.inputs
        if type(in_grads) is not tuple:
            if len(inputs) != 1:
                raise BackwardError(
                    f"{op.label}: backward returned one gradient for {len(inputs)} inputs; "
                    "return a tuple with one entry per input (None where there is none)"
                )
            in_grads = (in_grads,)
        elif len(in_grads) != len(inputs):
            raise BackwardError(f"{op.label}: backward returned {len(in_grads)} gradients for {len(inputs)} inputs")
        for index, (x, grad) in enumerate(zip(inputs, in_grads)):
            if grad is None or not isinstance(x, Variable) or x.value.dtype.kind != "f":
                continue  # no gradient, a constant, or an integer input
            try:
                x.add_grad(grad)
            except TapegradError as exc:
                raise _gradient_error(op, index, grad, x, exc) from None


def _gradient_error(op: Operation, index: int, grad: Any, x: Variable, exc: TapegradError) -> BackwardError:
    """The error for a gradient an op's backward returned that its input cannot take."""
    if isinstance(exc, ShapeError):
        return BackwardError(
            f"{op.label}: backward returned a gradient of shape {np.shape(grad)} for input {index}, which has shape {x.shape}"
        )
    return BackwardError(f"{op.label}: backward's gradient for input {index}: {exc}")


def backward_error(op: Operation, exc: BaseException) -> BackwardError:
    """What an exception raised by an op's backward becomes (eagerly and in a replay)."""
    if isinstance(exc, BackwardError):
        return exc
    if isinstance(exc, FLOAT_SIGNALS):
        return BackwardError(f"{op.label}: backward went beyond the float range: {exc}")
    hint = " (set it on ctx in forward or loss before backward reads it)" if isinstance(exc, AttributeError) else ""
    return BackwardError(f"{op.label}: backward failed: {exc}{hint}")


def _output_grads(outputs: tuple[Variable, ...]) -> tuple[np.ndarray, ...] | None:
    """What flows into a multi-output op's backward: one gradient per output, zeros for unused
    ones; None when no output received a gradient."""
    grads = [o.peek_grad() for o in outputs]
    if all(g is None for g in grads):
        return None
    return tuple(np.zeros_like(o.value) if g is None else g for o, g in zip(outputs, grads))


def _as_tuple(outputs: Any) -> tuple[Any, ...]:
    if outputs is None:
        return ()
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _float_array(grad: Any, like: Variable) -> np.ndarray:
    """An explicit seed gradient as an array of the Variable's dtype."""
    if isinstance(grad, Variable):
        grad = grad.value
    try:
        array = np.asarray(grad)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"expected a numeric gradient, got {type(grad).__name__}: {exc}") from None
    if array.dtype.kind not in "fiub":
        raise InputTypeError(f"expected a real numeric gradient, got dtype {array.dtype}")
    if array.shape != like.shape:
        raise ShapeError(f"a gradient of shape {array.shape} for an output of shape {like.shape}")
    return array.astype(like.dtype, copy=False)
