"""The tape: what one forward pass recorded, and the backward walk over it.

Every op application gets a ``Context`` (what its ``forward`` saved for ``backward``). The
forward wrapper (``operation.py``) hands it to ``Tape.record`` with the op's outputs; in train
mode the tape keeps it (``graph.forward_ops`` is the tape's list). A ``Loss`` application is also
remembered as its op's latest in its mode, so ``loss(target)`` pairs with the latest application
made in the mode the graph is in (``Tape.latest_application``): a prediction in eval mode during a
pass in flight changes nothing of that pass. Eval mode leaves the tape alone. A computed loss is
queued for seeding (``Tape.add_loss``).

An op whose own code (its ``forward``, ``loss`` or ``backward``) applies other ops of its graph makes
them part of its application: while one runs (``Tape.inside``), applications are computed but not
recorded, as PyTorch runs a custom Function's forward without recording. Their gradients are the
op's business. (Ops of another graph record on their own tape.)

``Tape.backward`` seeds every queued loss with ``loss_grad`` and any output Variable with an
explicit gradient, then walks the tape in reverse: each application whose outputs received a
gradient has its op's ``backward(ctx, grad)`` called, and the input gradients it returns are
added into the input Variables with ``Variable.add_grad`` (the one accumulation rule). The tape
is cleared afterwards, whatever happened, and keeps what the pass did as plain data (``Pass``, for
drawings): the ops, how they were connected, shapes, and weak references to the leaf Variables,
never an activation or an intermediate gradient.

The tape reports what happens to ``events.observer`` (applications, losses, backward walks and the
running of each op's ``backward``) and knows nothing of who observes.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from . import events
from .errors import FLOAT_SIGNALS, BackwardError, GraphError, InputTypeError, ShapeError, TapegradError, TapeWarning
from .variable import Variable

if TYPE_CHECKING:
    from .operation import Operation

__all__ = ["AUTHOR_ERRORS", "Context", "Leaf", "Pass", "Tape", "backward_error"]

#: Exceptions from an author's numpy code that are re-raised as framework errors naming the op.
AUTHOR_ERRORS = (ValueError, TypeError, IndexError, ArithmeticError)


class Context:
    """Per-application state: what ``forward`` saved for ``backward``.

    One Context is made for every application of an op, so an op applied twice in a pass keeps
    two. Authors call ``ctx.save(*arrays)`` (or assign ``ctx.saved = (...)``) and read
    ``ctx.saved``; they may set attributes of their own (``ctx.mask = ...``).
    ``ctx.needs_input_grad`` says, per input, whether its gradient is wanted (an op may return
    None for the others, and must still accumulate its parameters' gradients); ``ctx.training`` and
    ``ctx.rng`` give the graph's mode and generator. ``ctx.inputs`` and ``ctx.outputs`` are the
    application's Variables (or constant arrays), for the tape and for tools; ops must not rely on
    them (a captured step's replay leaves them empty).
    """

    __slots__ = ("__dict__", "inputs", "needs_input_grad", "op", "outputs", "recorded", "saved")

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

    def release(self) -> None:
        """Drop what the application kept: what its code saved, the author's own attributes, and its inputs
        and outputs (backward is done with it)."""
        self.saved = self.inputs = ()
        self.outputs = None
        self.__dict__.clear()

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


# -- what a pass did, as plain data (drawings read it) ------------------------------------------
class Leaf:
    """A value a pass started from: a Variable (held weakly, so a drawing can show its gradient while
    it lives) or an array (its shape only; a shape itself may be given)."""

    __slots__ = ("name", "shape", "variable")

    variable: weakref.ref[Variable] | None
    shape: tuple[int, ...]
    name: str | None

    def __init__(self, value: Any) -> None:
        if isinstance(value, tuple):  # a shape
            self.variable, self.name, self.shape = None, None, value
        elif isinstance(value, Variable):
            self.variable, self.shape, self.name = weakref.ref(value), value.value.shape, value.name
        else:
            self.variable, self.name = None, None
            self.shape = value.shape if isinstance(value, ndarray) else tuple(np.shape(value))

    def alive(self) -> Variable | None:
        """The Variable behind this leaf, while it lives (None for an array)."""
        return None if self.variable is None else self.variable()

    def __getstate__(self) -> tuple[Any, ...]:  # (a copy or a pickle holds the Variable itself, if it lives)
        return (self.alive(), self.shape, self.name)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        variable, self.shape, self.name = state
        self.variable = None if variable is None else weakref.ref(variable)


# A reference to a value of a pass: an int is a leaf's index, a pair (i, k) output k of application i.
Ref = Any


class Pass:
    """What one pass did, for drawing, holding no activation and no gradient.

    ``apps``: per application, (op, refs of its inputs, its output shapes, whether its outputs are a
    tuple); ``leaves``: the ``Leaf`` values the pass started from; ``losses``: per loss computed,
    (application, ref of its target); ``consumed``: backward ran on it.
    """

    __slots__ = ("apps", "consumed", "leaves", "losses")

    def __init__(self, apps: list[Any], leaves: list[Leaf], losses: list[tuple[int, Ref]], consumed: bool) -> None:
        self.apps = apps
        self.leaves = leaves
        self.losses = losses
        self.consumed = consumed

    @classmethod
    def of(cls, entries: Sequence[Context], losses: Sequence[Context], targets: Sequence[Any], consumed: bool) -> Pass:
        """The pass of a tape's ``entries`` and computed ``losses`` (with their ``targets``)."""
        where: dict[int, Ref] = {}  # id(value) -> its ref (every value is alive while the entries are)
        found: list[Any] = []  # the leaf values, in the order the pass met them
        apps = []
        for i, ctx in enumerate(entries):
            refs = []
            for x in ctx.inputs:
                ref = where.get(id(x))
                if ref is None:  # (a leaf: an input no application of the pass made)
                    ref = where[id(x)] = len(found)
                    found.append(x)
                refs.append(ref)
            out = ctx.outputs
            if type(out) is tuple:
                for k, o in enumerate(out):
                    where[id(o)] = (i, k)
                apps.append((ctx.op, refs, tuple(o.value.shape for o in out), True))
            else:
                where[id(out)] = (i, 0)
                apps.append((ctx.op, refs, (out.value.shape,), False))
        drawn = []
        for ctx, target in zip(losses, targets):
            ref = where.get(id(target))
            if ref is None:
                ref = where[id(target)] = len(found)
                found.append(target)
            drawn.append((entries.index(ctx), ref))  # (Contexts compare by identity)
        leaves = [Leaf(x) for x in found]
        return cls(apps, leaves, drawn, consumed)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.apps, self.leaves, self.losses, self.consumed)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.apps, self.leaves, self.losses, self.consumed = state


class Tape:
    """The applications recorded since the last backward, and the losses queued for seeding.

    ``entries`` (a Graph's ``forward_ops``) lists the recorded Contexts in forward order;
    ``losses`` the Loss applications whose ``loss(target)`` was computed since (``targets``: what
    each loss was computed against); ``latest``/``latest_eval``: each Loss op's latest application in
    train/eval mode; ``last_pass``: what the latest backward consumed, as plain data (drawings).
    """

    #: Past this many entries without a backward, the tape warns once (see ``record``).
    WARN_ENTRIES = 50_000

    def __init__(self) -> None:
        self.entries: list[Context] = []
        self.losses: list[Context] = []
        self.targets: list[Any] = []
        # each Loss op's latest train-mode application on the tape; None once a backward consumed it
        self.latest: dict[Operation, Context | None] = {}
        self.latest_eval: dict[Operation, Context] = {}
        self.last_pass: Pass | None = None
        self.inside = 0  # how many ops' own code is running (their applications are not recorded)
        self._warned = False

    # -- recording -----------------------------------------------------------------------------
    def record(self, ctx: Context, arrays: Sequence[np.ndarray], outputs: Any, train: bool) -> None:
        """Note an application (its op received ``arrays`` and produced ``outputs``); keep it for
        backward in train mode. A growing tape that nobody differentiates warns once. An application
        made by another op's code is part of that one: not recorded (see the module docstring); a
        Loss's is still its latest, for its ``loss(target)``."""
        ctx.outputs = outputs
        op = ctx.op
        if self.inside:
            if op.is_loss:
                ctx.nested = True  # (a top-level loss() on it is refused in train mode, see add_loss)
                if train:
                    self.latest[op] = ctx
                else:
                    self.latest_eval[op] = ctx
            return
        if train:
            ctx.recorded = True
            if not self.entries:
                self.last_pass = None  # a new pass begins: the last one is superseded
            self.entries.append(ctx)
            if op.is_loss:
                self.latest[op] = ctx
            if len(self.entries) == self.WARN_ENTRIES and not self._warned:
                self._warn(ctx)
        elif op.is_loss:
            self.latest_eval[op] = ctx
        if events.observer is not None:
            events.observer.applied(ctx, arrays)

    def _warn(self, ctx: Context) -> None:
        self._warned = True
        graph = ctx.op.graph
        warnings.warn(
            f"Graph {graph.name if graph else '?'!r}: the tape holds {self.WARN_ENTRIES} applications "
            "that no backward() has consumed, and keeps growing with every forward in train mode. "
            "For inference call graph.eval() first; when training, call graph.backward() (or "
            "graph.clear()) after each pass.",
            TapeWarning,
            stacklevel=5,
        )

    def latest_application(self, op: Operation, train: bool | None = None) -> Context:
        """The most recent application of the Loss ``op`` made in train (``train``) or eval mode (by
        default: the mode its graph is in), for ``loss(target)``."""
        if train is None:
            train = bool(op.graph is not None and op.graph.train_state)
        ctx = (self.latest if train else self.latest_eval).get(op)
        if ctx is None:
            mode = "train" if train else "eval"
            if train and op in self.latest:
                raise GraphError(
                    f"{op.label}: loss() refers to a forward pass that backward() already consumed; run forward again"
                )
            raise GraphError(
                f"{op.label}: loss() needs a forward() in {mode} mode first (it pairs with the latest one)"
            )
        return ctx

    def add_loss(self, ctx: Context, target: Any, array: np.ndarray, value: float) -> float:
        """Queue a computed loss for seeding by ``backward`` (train-mode applications only) and return
        what ``loss()`` gives back. ``target`` is what ``loss(target)`` received, ``array`` its array,
        ``value`` the loss."""
        if self.inside:
            return value  # computed by another op's code: part of that application, nothing to seed
        if getattr(ctx, "nested", False) and ctx.training:
            raise GraphError(
                    f"{ctx.op.label}: loss() pairs with its latest forward, which another op's code applied "
                    "inside its own forward, loss or backward: that application is part of the other op and is "
                    "not recorded, so this loss could not be differentiated. Apply the forward outside the op, "
                "or compute the loss inside it."
            )
        if ctx.recorded and ctx not in self.losses:  # (Contexts compare by identity)
            self.losses.append(ctx)
            self.targets.append(target)  # (drawing: the loss node's input)
        if events.observer is not None:
            return events.observer.loss(ctx, target, array, value)
        return value

    def clear(self) -> None:
        """Drop the recorded applications and the queued losses."""
        self.entries = []
        self.losses = []
        self.targets = []
        self.latest = {}

    def in_flight(self) -> Pass:
        """The pass on the tape now (before backward), as plain data."""
        return Pass.of(self.entries, self.losses, self.targets, consumed=False)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # a loss pairs with a forward in flight after unpickling; eval-mode applications stay behind
        state["latest"] = {op: ctx for op, ctx in self.latest.items() if ctx is not None}
        state["latest_eval"] = {}
        state["inside"] = 0  # (a copy made while an op's code runs is not inside it)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]  # (a tape pickled by an older version lacks newer attributes)
        state.pop("consumed", None)  # (older versions kept the consumed pass's Contexts)
        self.__dict__.update(state)

    @contextlib.contextmanager
    def isolated(self) -> Iterator[None]:
        """An empty tape inside the block; what was recorded before comes back afterwards.

        The contract suite and gradcheck differentiate on a graph without touching a pass
        the user has in flight.
        """
        saved = (self.entries, self.losses, self.targets, self.latest, self.latest_eval, self.last_pass)
        self.entries, self.losses, self.targets, self.latest, self.latest_eval = [], [], [], {}, {}
        try:
            yield
        finally:
            self.entries, self.losses, self.targets, self.latest, self.latest_eval, self.last_pass = saved

    # -- backward ------------------------------------------------------------------------------
    def backward(self, grads: Mapping[Variable, Any] | None = None, loss_grad: Any = 1.0, name: str = "graph") -> None:
        """Differentiate the recorded pass, then clear the tape (see the module docstring).

        Bad arguments raise before anything changes; an error inside an op's backward names
        the op (and the tape is cleared: its gradients are partly accumulated).
        """
        seeds = self._seeds(grads, name)
        entries, losses = self.entries, self.losses
        if not losses and not seeds:
            raise BackwardError(
                f"Graph {name!r}: backward() needs a loss: call loss(target) on a Loss op after forward "
                "(in train mode), or pass grads={output: gradient}" + ("" if entries else "; the tape is empty")
            )
        observer = events.observer
        if observer is not None:
            observer.backward(self, seeds, loss_grad)
        # what the pass did, as plain data for drawings (taken while everything is alive)
        self.last_pass = Pass.of(entries, losses, self.targets, consumed=True)
        ctx: Context | None = None
        self.inside += 1  # ops an op's backward applies are part of it (see the module docstring)
        try:
            for variable, _, seed in seeds:
                variable.add_grad(seed)
            for ctx in reversed(entries):
                outputs = ctx.outputs
                grad: Any
                if ctx.op.is_loss:  # seeded if its loss was computed; its outputs are for reading
                    grad = loss_grad if ctx in losses else None  # (Contexts compare by identity)
                elif type(outputs) is tuple:
                    grad = _output_grads(outputs)
                else:
                    grad = outputs.peek_grad()
                if grad is None:
                    ctx.release()
                    continue  # nothing reached this application's outputs
                op = ctx.op
                if observer is None:
                    in_grads = op.backward(ctx, grad)
                else:
                    in_grads = observer.run("backward", op.backward, op, (ctx, grad), {})
                if type(in_grads) is ndarray and len(ctx.inputs) == 1:  # one input, one gradient
                    x = ctx.inputs[0]
                    if isinstance(x, Variable) and x.value.dtype.kind == "f":
                        try:
                            x.add_grad(in_grads)
                        except TapegradError as exc:
                            raise _gradient_error(op, 0, in_grads, x, exc) from None
                elif in_grads is not None:
                    self._route(ctx, in_grads)
                # done with it: its activations and its outputs' gradients go now, not when the walk ends
                ctx.release()
        except BackwardError:
            raise
        except (*FLOAT_SIGNALS, *AUTHOR_ERRORS, AttributeError) as exc:
            if ctx is None:
                raise
            raise backward_error(ctx.op, exc) from exc
        finally:
            self.inside -= 1
            # cleared, whatever happened (what the pass did stays as plain data, for drawings)
            self.entries, self.losses, self.targets = [], [], []
            self.latest = dict.fromkeys(self.latest)

    def _seeds(self, grads: Mapping[Variable, Any] | None, name: str) -> list[tuple[Variable, Any, np.ndarray]]:
        """``grads`` checked: (float output Variable of a recorded application, the gradient as given, it as an
        array of the output's dtype)."""
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
                raise InputTypeError(
                    f"Graph {name!r}: backward(grads=...) keys must be Variables, got {type(variable).__name__}"
                )
            if not variable.differentiable:
                continue  # integer outputs carry no gradient
            if id(variable) not in produced:
                raise BackwardError(
                    f"Graph {name!r}: backward(grads=...) got a Variable of shape {variable.shape} that no "
                    "recorded application produced: forward ran in eval mode (graph.train() records), "
                    "or backward() already consumed that pass"
                )
            try:
                seeds.append((variable, grad, _float_array(grad, variable)))
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
            f"{op.label}: backward returned a gradient of shape {np.shape(grad)} for input {index}, which has shape "
            f"{x.shape}"
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
        array = grad if isinstance(grad, ndarray) else np.asarray(grad)  # (an array is kept: a recording traces it)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"expected a numeric gradient, got {type(grad).__name__}: {exc}") from None
    if array.dtype.kind not in "fiub":
        raise InputTypeError(f"expected a real numeric gradient, got dtype {array.dtype}")
    if array.shape != like.shape:
        raise ShapeError(f"a gradient of shape {array.shape} for an output of shape {like.shape}")
    return array.astype(like.dtype, copy=False)
