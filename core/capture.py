"""``graph.capture(fn)``: check once, replay many.

The first call of a captured step for a *signature* (the shapes and dtypes of its array and
Variable arguments, the graph's train/eval mode, and its other arguments by value) runs ``fn``
eagerly, fully checked, while a ``Recording`` watches (``replay.py``); later calls with that
signature replay the record. The first replay of every record is verified against an eager run
of ``fn`` from the same state, bit for bit, and any difference raises ``CaptureError`` naming it.
Records live in a small cache (``max_records``, least recently used out first).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from . import tape as _tape
from .errors import CaptureError
from .replay import Call, Recording, Replay
from .tape import RECORDING
from .variable import Variable

if TYPE_CHECKING:
    from .graph import Graph

__all__ = ["CapturedStep", "Record"]


@dataclass
class Record:
    """One signature's record: the replay program, and whether its first replay was verified."""

    key: Any
    replay: Replay
    recording: Recording
    verified: bool
    #: A digest of each argument's value at the recording call (see ``pinned``).
    arguments: tuple[bytes, ...] = ()
    #: The arguments the record is verified for with their recorded values only: the record froze
    #: values Python made anew inside the step (``x / 16``, say), and each check so far had these
    #: arguments' recorded values, so it proves nothing about values computed from them. A call
    #: with another value of one of them is checked too; the record is free once none is left.
    pinned: tuple[int, ...] = ()

    @property
    def source(self) -> str:
        """The generated replay program, for reading."""
        return self.replay.source

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the array and Variable arguments this record was made for, in order."""
        return list(self.recording.leaf_shapes)

    @property
    def run(self) -> Callable[..., Any]:
        """The replay program: ``run(*leaves)`` (errors named as eagerly, no check)."""
        return self.replay


class CapturedStep:
    """A step function that records its first call per signature and replays later calls.

    Made by ``graph.capture(fn, check=True)``. ``records`` maps each signature to its ``Record``
    (at most ``max_records``); ``last_record`` is the one the latest call used, ``last_arguments``
    that call's array and Variable arguments.
    """

    def __init__(self, graph: Graph, fn: Callable[..., Any], *, check: bool = True, max_records: int = 8) -> None:
        if not callable(fn):
            raise CaptureError(f"graph.capture needs a function, got {type(fn).__name__}")
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 1:
            raise CaptureError(f"graph.capture: max_records must be a whole number of at least 1, got {max_records!r}")
        self.graph = graph
        self.fn = fn
        self.check = bool(check)
        self.max_records = max_records
        self.records: OrderedDict[Any, Record] = OrderedDict()
        self.last_record: Record | None = None
        self.last_arguments: list[Any] = []  # the latest call's array and Variable arguments
        functools.update_wrapper(self, fn, updated=())  # name and docstring; never fn's own attributes

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if RECORDING.get() is not None:
            return self.fn(*args, **kwargs)  # inside another step's recording: that one records these ops
        key, leaves = signature(args, kwargs, self.graph)
        record = self.records.get(key)
        tape = self.graph.tape
        if tape.entries or tape.losses:
            raise CaptureError(
                f"Graph {self.graph.name!r} has a forward pass in flight ({len(tape.entries)} applications on its "
                "tape): call graph.backward() or graph.clear() before a captured step"
            )
        if record is None:
            return self._record(key, leaves, args, kwargs)
        if record is not self.last_record:
            self.records.move_to_end(key)
            self.last_record = record
        self.last_arguments = leaves  # (drawing: the Variables passed in, with their gradients)
        if not record.verified or (record.pinned and any(_digest(leaves[i]) != record.arguments[i] for i in record.pinned)):
            return self._verify(record, leaves, args, kwargs)
        # profiling hook: the replay program's timed variant, only while a profiler runs
        function = record.replay.function if _tape.PROFILER is None else _tape.PROFILER.replay_function(record.replay)
        return record.replay.run(function, leaves)

    def __getstate__(self) -> dict[str, Any]:
        # A record's program is bound to this graph's objects: a copy (or an unpickled step)
        # records again on its first call, against its own graph.
        state = self.__dict__.copy()
        state["records"], state["last_record"], state["last_arguments"] = OrderedDict(), None, []
        return state

    def to_dot(self) -> str:
        """The record of the latest call drawn as Graphviz DOT text, as ``graph.to_dot()`` draws a
        pass (see ``tapegrad.draw``)."""
        from .draw import step_dot

        return step_dot(self)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<captured step {name} of Graph {self.graph.name!r}: {len(self.records)} record(s)>"

    # -- recording -------------------------------------------------------------------------------
    def _record(self, key: Any, leaves: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        arguments = tuple(map(_digest, leaves)) if self.check else ()  # (before fn may change them)
        recording = Recording(self.graph, leaves)
        result = self._run_recorded(recording, args, kwargs)
        self.graph.tape.release_pass()  # (drawing) replays leave the tape alone: keep no activations for it
        left = len(self.graph.tape.entries)
        if left:
            raise _after_eager(
                CaptureError(
                    f"the step left {left} applications on the tape without a backward(): a replay could not put "
                    "them there. Call graph.backward() inside the step, or capture it in eval mode (graph.eval()) "
                    "to predict."
                ),
                result,
            )
        try:
            template = recording.template(result)
        except CaptureError as exc:
            raise _after_eager(exc, result) from None
        recording.finish()
        record = Record(key, Replay(recording, template), recording, verified=not self.check, arguments=arguments)
        self.records[key] = record
        while len(self.records) > self.max_records:
            self.records.popitem(last=False)
        self.last_record, self.last_arguments = record, leaves
        return result

    def _run_recorded(self, recording: Recording, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` run eagerly while ``recording`` watches. A call that raises leaves the tape empty,
        as the step found it, so the next call can go on."""
        try:
            with recording:
                return self.fn(*args, **kwargs)
        except BaseException:
            self.graph.clear()
            raise

    # -- the first replay's check ------------------------------------------------------------------
    def _verify(self, record: Record, leaves: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        unchanged = {i for i, leaf in enumerate(leaves) if _digest(leaf) == record.arguments[i]}
        before = State(self.graph, record.recording, leaves)
        try:
            replayed = record.replay(*leaves)
            failure = None
        except Exception as exc:  # eager decides: it raises the same, or the replay was wrong
            replayed, failure = None, exc
        after = State(self.graph, record.recording, leaves)
        before.restore()
        recording = Recording(self.graph, leaves)
        result = self._run_recorded(recording, args, kwargs)
        recording.finish()
        self.graph.tape.release_pass()  # (drawing, as in _record)
        if failure is not None:
            raise _after_eager(
                CaptureError(
                    f"the first replay of this step failed ({type(failure).__name__}: {failure}) where an eager run "
                    "succeeds: " + _CAUSES + " An op whose forward or backward reads ctx.inputs or ctx.outputs fails "
                    "so too (a replay does not fill them; `tapegrad check NAME` runs check_capture on an op)."
                ),
                result,
            ) from failure
        structure = _structure_difference(record.recording, recording)
        transient, frozen = _made_inside(record.recording, recording) if not structure else (set(), None)
        problem = (
            structure
            or frozen
            or _constant_difference(record.recording, recording)
            or _value_difference("the returned value", replayed, result)
            or after.difference(State(self.graph, record.recording, leaves), ignore=transient)
        )
        if problem:
            raise _after_eager(CaptureError(f"the first replay of this step differs from an eager run: {problem}"), result)
        if transient and not record.replay.frozen:  # Variables the step makes itself, from the same values: constants
            record.replay = Replay(record.recording, record.replay.template, frozen=transient)
        # Values made anew inside the step could be computed from an argument (x / 16): a check
        # with that argument's recorded value proves nothing about them, so it stays pinned.
        pinned = set(record.pinned if record.verified else range(len(leaves))) & unchanged
        record.pinned = tuple(sorted(pinned)) if _made_anew(record.recording, recording, transient) else ()
        record.verified = True
        return result


def _digest(leaf: Any) -> bytes:
    """A digest of the value of one array or Variable argument."""
    array = np.ascontiguousarray(leaf.value if isinstance(leaf, Variable) else leaf)
    return hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def _after_eager(error: CaptureError, result: Any) -> CaptureError:
    """``error``, raised once the step ran eagerly to the end: ``error.eager_result`` holds what it
    returned (the step's effects are in place), for callers that go on eagerly."""
    error.eager_result = result
    return error


def signature(args: tuple[Any, ...], kwargs: Mapping[str, Any], graph: Graph) -> tuple[Any, list[Any]]:
    """(key, leaves): the cache key of a call, and its array and Variable arguments in order.

    The key holds the graph's mode, and how many ops it has: a layer added (or swapped in) since
    a record was made makes a new one."""
    leaves: list[Any] = []
    parts: list[Any] = [graph.train_state, len(graph.operations)]
    for index, a in enumerate(args):
        if type(a) is ndarray:  # the common case first
            leaves.append(a)
            parts.append((a.shape, a.dtype))
        else:
            parts.append(_spec(a, leaves, f"argument {index}"))
    if kwargs:
        parts.append(tuple((k, _spec(v, leaves, f"argument {k!r}")) for k, v in kwargs.items()))
    if len(leaves) > 1:
        arrays = [id(leaf.value if isinstance(leaf, Variable) else leaf) for leaf in leaves]
        if len(set(arrays)) < len(arrays):
            # one array passed twice (itself, or as a Variable's value): a record made so binds both
            # uses to it, so it is keyed apart
            first: dict[int, int] = {}
            parts.append(("aliases", tuple(first.setdefault(a, i) for i, a in enumerate(arrays))))
    return tuple(parts), leaves


def _spec(obj: Any, leaves: list[Any], where: str) -> Any:
    if isinstance(obj, ndarray):
        leaves.append(obj)
        return (obj.shape, obj.dtype)
    if isinstance(obj, Variable):
        leaves.append(obj)
        return ("Variable", obj.value.shape, obj.value.dtype)
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_spec(o, leaves, f"{where}[{i}]") for i, o in enumerate(obj)))
    if isinstance(obj, Mapping):
        return (dict, tuple((k, _spec(v, leaves, f"{where}[{k!r}]")) for k, v in obj.items()))
    try:
        hash(obj)
    except TypeError:
        raise CaptureError(
            f"the captured step's {where} is a {type(obj).__name__}, neither an array, a Variable nor "
            "hashable: a record is kept per value of such arguments. Pass arrays or Variables (lists, "
            "tuples and dicts of them are fine), or hashable values (numbers, strings, tuples)."
        ) from None
    return ("value", type(obj), obj)


class State:
    """A copy of everything a step may change: every parameter's (and input Variable's) value and
    gradient, the optimizers' state, the graph's generator, and the ops' own attributes (running
    statistics an op keeps on ``self``, say); ``restore`` puts it back."""

    def __init__(self, graph: Graph, recording: Recording, leaves: list[Any]) -> None:
        variables = {id(v): (name, v) for name, v in graph.parameter.variable_dict.items()}
        for index, leaf in enumerate(leaves):
            if isinstance(leaf, Variable):
                variables.setdefault(id(leaf), (f"step input {index}", leaf))
        optimizers = []
        for kind, event in recording.events:
            if kind == "call" and isinstance(event, Call) and hasattr(event.obj, "state_dict"):
                optimizers.append(event.obj)
                for v in getattr(event.obj, "variables", []):
                    variables.setdefault(id(v), (v.name or "a Variable of the optimizer", v))
            if kind == "apply":
                for source in recording.apps[event].sources:
                    if source.kind == "variable":
                        v = source.obj
                        variables.setdefault(id(v), (v.name or "a Variable made outside the step", v))
        self.graph = graph
        self.recording = recording
        self.variables = [
            (name, v, v.value.copy(), None if v.peek_grad() is None else np.array(v.peek_grad(), copy=True))
            for name, v in variables.values()
        ]
        self.optimizers = [(o, o.state_dict()) for o in dict.fromkeys(optimizers)]
        self.rng = graph.rng.bit_generator.state
        # The graph, its ops and its parameters are shared, never copied (the lists above restore those).
        shared = {id(graph): graph, id(graph.parameter): graph.parameter}
        shared.update({id(op): op for op in graph.operations.values()})
        shared.update({id(v): v for v in graph.parameter.variable_dict.values()})
        self.attributes = [
            (op, {k: (v, _copied(v, shared)) for k, v in vars(op).items()}) for op in graph.operations.values()
        ]

    def restore(self) -> None:
        for optimizer, state in self.optimizers:
            optimizer.load_state_dict(state)
        self.graph.rng.bit_generator.state = self.rng
        for name, v, value, grad in self.variables:
            if v.value.tobytes() != value.tobytes():  # (what did not change is not written: it may be read-only)
                try:
                    v.value[...] = value
                except ValueError as exc:
                    raise CaptureError(f"the first replay's check cannot put {name}'s value back: {exc}") from None
            v.clear_grad()
            if grad is not None:
                v.add_grad(grad.copy())
        for op, saved in self.attributes:
            attributes = vars(op)
            for key in [key for key in attributes if key not in saved]:
                del attributes[key]  # set by the run being undone
            for key, (obj, old) in saved.items():
                if old is not None and attributes.get(key) is obj:
                    obj = _put_back(obj, old)  # the same object with its old contents, where it can be
                attributes[key] = obj

    def difference(self, eager: State, ignore: set[tuple[int, int]] = frozenset()) -> str | None:  # type: ignore[assignment]
        """The first value or gradient that differs from ``eager``'s (this one is the replay's),
        leaving out the Variables of the (application, input) pairs in ``ignore``."""
        skipped = {id(self.recording.apps[i].sources[k].obj) for i, k in ignore}
        for (name, v, value, grad), (_, _, eager_value, eager_grad) in zip(self.variables, eager.variables):
            if id(v) in skipped:
                continue
            grads = _array_difference(grad, eager_grad)
            values = _array_difference(value, eager_value)
            if values and not grads:
                return (
                    f"{name}'s value {values}, though its gradient is the same. Python code inside the step "
                    "changes it (a hand-written update, say), and only tapegrad.optim optimizers' step() is "
                    "replayed: use one inside the step, or update outside the step."
                )
            if grads:
                return f"{name}'s gradient {grads}. " + _CAUSES
            if values:
                return f"{name}'s value {values}. " + _CAUSES
        for (op, saved), (_, eager_saved) in zip(self.attributes, eager.attributes):
            for key, (_, replayed) in saved.items():
                differs = _contents_difference(replayed, eager_saved.get(key, (None, None))[1])
                if differs:
                    return f"{op.label}'s attribute {key!r}{differs}. " + _CAUSES
        return None


_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, np.generic, np.dtype, type)


def _copied(obj: Any, shared: dict[int, Any]) -> Any:
    """A deep copy of an op's attribute that can change in place (an array, a container, an object
    holding them), keeping ``shared`` objects as they are; None for values that cannot change (and
    for what cannot be copied: a module, a lock)."""
    if isinstance(obj, _IMMUTABLE) or id(obj) in shared or callable(obj):
        return None
    try:
        return copy.deepcopy(obj, dict(shared))
    except Exception:
        return None


def _put_back(obj: Any, old: Any) -> Any:
    """``obj`` with the contents of ``old`` (its copy) again: in place where the type allows, so
    whoever else holds it sees them too; else ``old`` itself, to be bound instead."""
    if isinstance(obj, ndarray) and isinstance(old, ndarray):
        if obj.shape == old.shape and obj.dtype == old.dtype:
            if obj.tobytes() != old.tobytes():  # (what did not change is not written: it may be read-only)
                obj[...] = old
            return obj
        return old
    if isinstance(obj, list):
        obj[:] = old
    elif isinstance(obj, (dict, set)):
        obj.clear()
        obj.update(old)
    elif type(obj) is type(old) and hasattr(obj, "__dict__") and not isinstance(obj, tuple):
        vars(obj).clear()
        vars(obj).update(vars(old))
    else:
        return old
    return obj


def _contents_difference(replayed: Any, eager: Any, depth: int = 0) -> str | None:
    """Where the arrays in two copies of an op's attribute differ (bit for bit, containers item by
    item), in words; None when they agree. Other values are not compared (a time, a counter)."""
    if depth > 20:
        return None
    if isinstance(replayed, ndarray) and isinstance(eager, ndarray):
        differs = _array_difference(replayed, eager)
        return f" {differs}" if differs else None
    if isinstance(replayed, (list, tuple)) and isinstance(eager, (list, tuple)):
        if len(replayed) != len(eager):
            return f" has {len(replayed)} items replayed and {len(eager)} eager"
        for i, (a, b) in enumerate(zip(replayed, eager)):
            found = _contents_difference(a, b, depth + 1)
            if found:
                return f"[{i}]{found}"
        return None
    if isinstance(replayed, dict) and isinstance(eager, dict):
        for key in replayed:
            if key not in eager:
                return f" holds {key!r} replayed only"
            found = _contents_difference(replayed[key], eager[key], depth + 1)
            if found:
                return f"[{key!r}]{found}"
        return None
    if isinstance(replayed, Variable) and isinstance(eager, Variable):
        return _contents_difference(replayed.value, eager.value, depth + 1)
    if hasattr(replayed, "__dict__") and type(replayed) is type(eager) and not isinstance(replayed, type):
        return _contents_difference(vars(replayed), vars(eager), depth + 1)
    return None


_CAUSES = (
    "Something the step does depends on Python state the record cannot see: a Python branch on data "
    "or on a global, an array computed by Python inside the step, a graph.train()/eval() switch inside "
    "it. Pass such values as arguments of the step (they become part of the record's key), compute them "
    "with ops, or run the step eagerly (call the function itself, or Trainer(capture=False))."
)


def _structure_difference(recorded: Recording, now: Recording) -> str | None:
    """Where an eager run took another path than the recorded one: the first op, loss, backward or
    call that differs."""
    for position, (old, new) in enumerate(zip(recorded.events, now.events)):
        if _event_signature(recorded, old) != _event_signature(now, new):
            return (
                f"step event {position} was {_describe(recorded, old)} when recorded and is {_describe(now, new)} "
                "now: a Python branch took another way than on the first call. Capture each branch as its own "
                "step, pass the condition as an argument (it becomes part of the record's key), or run the "
                "step eagerly."
            )
    if len(recorded.events) != len(now.events):
        return (
            f"the step made {len(recorded.events)} recorded events on its first call and {len(now.events)} now: a "
            "Python loop or branch changed. Pass its count or condition as an argument of the step."
        )
    return None


def _event_signature(recording: Recording, event: tuple[str, Any]) -> Any:
    kind, body = event
    if kind == "apply":
        app = recording.apps[body]
        return (kind, id(app.op), tuple((s.kind, s.index, s.app, s.live) for s in app.sources))
    if kind == "loss":
        app, source, _ = body
        return (kind, app, source.kind, source.index, source.app)
    if kind == "backward":
        return (kind, tuple(body.apps), tuple(body.losses), body.loss_grad, len(body.seeds))
    return (kind, id(body.obj), body.function, body.args, tuple(body.kwargs.items()))


def _describe(recording: Recording, event: tuple[str, Any]) -> str:
    kind, body = event
    if kind == "apply":
        return f"an application of {recording.apps[body].op.label}"
    if kind == "loss":
        return f"the loss of {recording.apps[body[0]].op.label}"
    if kind == "backward":
        return "a backward()"
    return f"a call of {type(body.obj).__name__}.{body.function.__name__}()"


def _made_inside(recorded: Recording, now: Recording) -> tuple[set[tuple[int, int]], str | None]:
    """Variables an op received that are neither arguments, parameters nor op outputs: one that is
    the same object on both calls outlives the step (read live); one made anew by the step is a
    constant, fine while its value stays the same. Returns those made anew, or what changed."""
    transient = set()
    for i, (old, new) in enumerate(zip(recorded.apps, now.apps)):
        for k, (a, b) in enumerate(zip(old.sources, new.sources)):
            if a.kind != "variable" or a.obj is b.obj:
                continue
            differs = _array_difference(a.obj.value, b.obj.value, ("when recorded", "now"))
            if differs:
                return set(), (
                    f"{old.op.label} input {k} is a Variable the step makes from an array computed by Python inside "
                    f"the step (not an argument, a parameter or an op output), and the record froze it: its value "
                    f"{differs.replace('differs', 'changed', 1)}. Pass the array as an argument of the step, or "
                    "compute it with ops."
                )
            transient.add((i, k))
    return transient, None


def _made_anew(recorded: Recording, now: Recording, transient: set[tuple[int, int]]) -> bool:
    """Whether the record froze an array that the step made anew on each call (a constant, or the
    value of a Variable it makes), rather than one that outlives the step (a closure's zeros)."""
    for i, k in transient:
        if recorded.apps[i].sources[k].obj.value is not now.apps[i].sources[k].obj.value:
            return True
    return any(old is not new for (_, old), (_, new) in zip(recorded.constants, now.constants))


def _constant_difference(recorded: Recording, now: Recording) -> str | None:
    for (where, old), (_, new) in zip(recorded.constants, now.constants):
        differs = _array_difference(old, new, ("when recorded", "now"))
        if differs:
            return (
                f"{where} is an array computed by Python inside the step (not from an argument, a parameter or an "
                f"op), and the record froze it: it {differs.replace('differs', 'changed', 1)}. Pass it as an "
                "argument of the step, or compute it with ops."
            )
    return None


def _value_difference(what: str, replayed: Any, eager: Any) -> str | None:
    if isinstance(eager, Variable):
        differs = _array_difference(replayed.value, eager.value)
        return f"{what} (an op output) {differs}. {_CAUSES}" if differs else None
    if isinstance(eager, float):
        same = (replayed == eager and math.copysign(1.0, replayed) == math.copysign(1.0, eager)) or (
            replayed != replayed and eager != eager
        )
        return None if same else f"{what} (a loss) is {replayed!r} replayed and {eager!r} eager. {_CAUSES}"
    if isinstance(eager, Mapping):
        for key in eager:
            found = _value_difference(f"{what}[{key!r}]", replayed[key], eager[key])
            if found:
                return found
        return None
    if isinstance(eager, (tuple, list)):
        for i, (r, e) in enumerate(zip(replayed, eager)):
            found = _value_difference(f"{what}[{i}]", r, e)
            if found:
                return found
    return None


def _array_difference(
    replayed: np.ndarray | None, eager: np.ndarray | None, names: tuple[str, str] = ("replayed", "eager")
) -> str | None:
    """None when both are bit for bit the same; else what differs, in words (``names`` say which is which)."""
    first, second = names
    if replayed is None or eager is None:
        if replayed is eager:
            return None
        return f"is {'missing' if replayed is None else 'present'} {first} and {'missing' if eager is None else 'present'} {second}"
    if replayed.dtype != eager.dtype or replayed.shape != eager.shape:
        return f"differs: {replayed.dtype}{replayed.shape} {first}, {eager.dtype}{eager.shape} {second}"
    if replayed.tobytes() == eager.tobytes():
        return None
    a, b = replayed.reshape(-1), eager.reshape(-1)
    with np.errstate(invalid="ignore"):
        unequal = ~((a == b) & (np.signbit(a) == np.signbit(b)) if a.dtype.kind == "f" else (a == b))
        if a.dtype.kind == "f":
            unequal &= ~(np.isnan(a) & np.isnan(b))
    flat = int(np.argmax(unequal)) if unequal.any() else 0
    index = [int(i) for i in np.unravel_index(flat, replayed.shape)] if replayed.ndim else []
    return f"differs at {index}: {float(a[flat])!r} {first}, {float(b[flat])!r} {second}"
