"""``CapturedStep``: a step function that records its first call per signature and replays later ones."""

from __future__ import annotations

import functools
import inspect
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import events
from ..errors import CaptureError
from ..variable import Variable
from .check import CAUSES, copy_world, first_difference, refused, structure_difference
from .program import RESERVED, Program, identifier
from .recording import Recording, active, plain_result
from .signature import changed, rebuild, signature

if TYPE_CHECKING:
    from ..graph import Graph

__all__ = ["CapturedStep", "Record"]


@dataclass
class Record:
    """One signature's record: what the recording call did, the program that does it again, and whether
    its first replay was checked."""

    key: Any
    recording: Recording
    program: Program
    verified: bool
    _observed: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        #: whether some argument of this record is a Variable (the step keeps weak references to them)
        self.variables = any(is_variable for is_variable, _ in self.recording.leaf_kinds)

    @property
    def source(self) -> str:
        """The generated replay program, for reading."""
        return self.program.source

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The shapes of the array and Variable arguments this record was made for, in order."""
        return list(self.recording.leaf_shapes)

    @property
    def run(self) -> Callable[..., Any]:
        """The replay program: ``run(*leaves)`` (no check; errors are named by the step's call)."""
        return self.program.function

    def observed(self) -> Callable[..., Any]:
        """The program with every op call and replayable call going through ``events.observer``."""
        if self._observed is None:
            self._observed = self.program.observed()
        return self._observed


class CapturedStep:
    """A step function that records its first call per signature and replays later calls.

    Made by ``graph.capture(fn, check=True)``. ``records`` maps each signature to its ``Record`` (at most
    ``max_records``, the least recently used dropped first); ``last_record`` is the one the latest call
    used.
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
        self._arguments: list[Any] = []  # per leaf of the latest call: a weak reference to a Variable, or None
        functools.update_wrapper(self, fn, updated=())  # name and docstring; never fn's own attributes

    @property
    def last_arguments(self) -> list[Any]:
        """Per array or Variable argument of the latest call: the Variable passed, while it lives, else None
        (drawings show their gradients; no array of a call is kept)."""
        return [None if ref is None else ref() for ref in self._arguments]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        observer = events.observer
        if observer is not None and active() is not None:
            return self.fn(*args, **kwargs)  # inside another step's recording: that one records these ops
        key, leaves = signature(args, kwargs, self.graph)
        tape = self.graph.tape
        if tape.entries or tape.losses:
            raise CaptureError(
                f"Graph {self.graph.name!r} has a forward pass in flight ({len(tape.entries)} applications on its "
                "tape): call graph.backward() or graph.clear() before a captured step"
            )
        record = self.records.get(key)
        if record is None:
            return self._record(key, leaves, args, kwargs)
        if record is not self.last_record:
            self.records.move_to_end(key)
            self.last_record = record
        if record.variables:
            self._arguments = _references(leaves)
        if not record.verified:
            return self._check(record, leaves, args, kwargs)
        function = record.program.function if observer is None else record.observed()
        try:
            return function(*leaves)
        except Exception as exc:
            error = record.program.error(exc)
            if error is exc:
                raise
            raise error from exc

    def __getstate__(self) -> dict[str, Any]:
        # A record's program is bound to this graph's objects: a copy (or an unpickled step)
        # records again on its first call, against its own graph.
        state = self.__dict__.copy()
        state["records"], state["last_record"], state["_arguments"] = OrderedDict(), None, []
        return state

    def to_dot(self) -> str:
        """The record of the latest call drawn as Graphviz DOT text, as ``graph.to_dot()`` draws a pass
        (see ``tapegrad.draw``)."""
        from ..draw import step_dot

        return step_dot(self)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"<captured step {name} of Graph {self.graph.name!r}: {len(self.records)} record(s)>"

    # -- recording -------------------------------------------------------------------------------
    def _record(self, key: Any, leaves: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        recording, result = self._run_recorded(leaves, args, kwargs)
        template = recording.template(result)
        result = plain_result(result)
        self._refuse_left(recording, result)
        recording.finish()
        record = Record(key, recording, Program(recording, template, _argument_names(self.fn, args, kwargs, leaves)),
                        verified=not self.check)
        self.records[key] = record
        while len(self.records) > self.max_records:
            self.records.popitem(last=False)
        self.last_record = record
        self._arguments = _references(leaves)
        return result

    def _run_recorded(self, leaves: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Recording, Any]:
        """``fn`` run eagerly (on traced arguments) while a new recording watches. A call that raises leaves
        the tape empty, as the step found it, so the next call can go on."""
        recording = Recording(self.graph, leaves)
        traced_args, traced_kwargs, containers = rebuild(args, kwargs, recording.traced.__getitem__)
        try:
            with recording:
                result = self.fn(*traced_args, **traced_kwargs)
        except BaseException:
            self.graph.clear()
            raise
        if changed(containers):
            recording.refuse(
                "the step changed a list or dict it was passed (the caller's got the same changes; a replay would not "
                "change it): copy it inside the step before changing it, or change it outside"
            )
        return recording, result

    def _refuse_left(self, recording: Recording, result: Any) -> None:
        """Raise the recording's first refusal, once the run is complete (with its result)."""
        left = len(self.graph.tape.entries)
        if left:
            recording.refuse(
                f"the step left {left} applications on the tape without a backward(): a replay could not put them "
                "there. Call graph.backward() inside the step, or capture it in eval mode (graph.eval()) to predict"
            )
        if recording.refusals:
            more = len(recording.refusals) - 1
            also = f" ({more} more refusal{'s' if more > 1 else ''} after it)" if more else ""
            raise refused(f"this step cannot be captured: {recording.refusals[0]}{also}", result)

    # -- the first replay's check --------------------------------------------------------------------
    def _check(self, record: Record, leaves: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            function, copied_leaves, memo = copy_world(record.program, leaves)
            cannot = ""
        except Exception as exc:  # an op holding what cannot be copied (a lock, a file)
            function, copied_leaves, memo = None, [], {}
            cannot = f"{type(exc).__name__}: {exc}"
        replayed, failure = None, None
        if function is not None:
            try:
                replayed = function(*copied_leaves)
            except Exception as exc:  # eager decides: it raises the same, or the replay was wrong
                failure = record.program.error(exc)
        recording, result = self._run_recorded(leaves, args, kwargs)
        recording.template(result)  # (refuses what cannot be returned, as the first call did)
        result = plain_result(result)
        self._refuse_left(recording, result)
        recording.finish()
        if cannot:
            raise refused(
                "the first replay's check runs the replay on a copy of everything the step touches, and copying "
                f"failed ({cannot}): keep such objects out of ops and optimizers, or pass check=False", result
            )
        problem = structure_difference(record.recording, recording)
        if problem is None and failure is not None:
            problem = (
                f"the replay raised {type(failure).__name__} ({failure}) where the eager run did not. {CAUSES} An op "
                "whose forward or backward reads ctx.inputs or ctx.outputs fails so too (a replay does not fill them; "
                "`tapegrad check NAME` runs check_capture on an op)."
            )
        if problem is None:
            problem = first_difference(replayed, result, "the returned value")
            seen: set[tuple[int, int]] = set()
            for obj in [self.graph, *record.program.objects.values(), *leaves]:
                if problem is not None:
                    break
                if id(obj) in memo and memo[id(obj)] is not obj:
                    problem = first_difference(memo[id(obj)], obj, _root_name(obj), seen)
            if problem is not None:
                problem = f"{problem}. {CAUSES}"
        if problem is not None:
            del self.records[record.key]  # (the next call records anew)
            if self.last_record is record:
                self.last_record = None
            raise refused(f"the first replay of this step differs from an eager run: {problem}", result) from failure
        record.verified = True
        return result


def _references(leaves: list[Any]) -> list[Any]:
    return [weakref.ref(leaf) if isinstance(leaf, Variable) else None for leaf in leaves]


def _root_name(obj: Any) -> str:
    label = getattr(obj, "label", None)
    if isinstance(label, str):
        return label
    if isinstance(obj, Variable):
        return f"Variable {obj.name!r}" if obj.name else "a Variable passed in"
    name = getattr(obj, "name", None)
    return f"{type(obj).__name__} {name!r}" if isinstance(name, str) else type(obj).__name__


def _argument_names(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], leaves: list[Any]
) -> list[str]:
    """The replay program's parameter names: the step's own where each leaf is one positional argument,
    else ``arg0``, ``arg1``, ..."""
    fallback = [f"arg{k}" for k in range(len(leaves))]
    if kwargs or len(args) != len(leaves) or any(a is not leaf for a, leaf in zip(args, leaves)):
        return fallback
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fallback
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) < len(args) or any(p.kind not in positional for p in parameters[: len(args)]):
        return fallback
    names = [identifier(p.name, "arg") for p in parameters[: len(args)]]
    ours = ("d_", "loss", "result")  # (the program's own names for gradients, losses and results start so)
    if len(set(names)) != len(names) or RESERVED & set(names) or any(n.startswith(ours) for n in names):
        return fallback
    return names
