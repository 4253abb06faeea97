"""Recording: the eager run of a step, watched, with the guards that refuse what a replay could not redo.

A ``Recording`` subscribes to the kernel's events (``tapegrad.events``) while the step's function
runs eagerly, and notes each op application (which op, fed by what), each loss, each ``backward()``
and each replayable call. Every value an op receives is traced to where it came from (``Source``):
an argument of the step, an op output, a Variable living outside the step, a ``tg.constant``, or a
Python number. While it records, the step's own Python is guarded:

- array arguments reach the step as ``TracedArray`` views: their shape and dtype may be read, but
  computing with their values (``x / 16``, ``x[0, 10] > 0.3``, ``x.mean()``) is refused;
- Variables the step can reach (parameters, arguments, op outputs, the optimizers' Variables) are
  ``GuardedVariable`` for the duration: reading their value or gradient, or writing them, from the
  step's Python is refused; op code, replayable calls and the kernel itself read and write freely;
- a loss value (and a float a replayable call returns) is a ``TracedFloat``: it may be returned,
  but arithmetic, comparisons and truth tests on it are refused;
- setting an attribute of an op, optimizer, scheduler or graph from the step's Python is refused.

A refusal does not stop the run: the step completes eagerly, with the true values, so nothing is
half-applied; the recording keeps the first refusal (what, where, the fix) and the step raises it
as ``CaptureError`` afterwards, carrying the eager result. Guards exist only while recording.
"""

from __future__ import annotations

import copy
import linecache
import math
import os
import sys
import threading
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from .. import events
from ..errors import CaptureError
from ..operation import Operation
from ..variable import Constant, Variable

if TYPE_CHECKING:
    from ..graph import Graph
    from ..tape import Context, Tape

__all__ = [
    "Application",
    "Backward",
    "Call",
    "GuardedVariable",
    "Loss",
    "Recording",
    "Source",
    "TracedArray",
    "TracedFloat",
    "active",
]

#: The recording running in this thread, if any.
_ACTIVE: ContextVar[Recording | None] = ContextVar("tapegrad_recording", default=None)


def active() -> Recording | None:
    """The recording running in this thread, or None."""
    return _ACTIVE.get()


# -- what a recording notes ----------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where a value an op (or a loss, or a seed) received came from.

    ``kind``: "argument" (the step's array or Variable argument ``index``), "output" (output ``index`` of
    application ``app``), "variable" (a Variable living outside the step, read live: ``obj``),
    "constant" (a ``tg.constant``, read live: ``obj``), "number" (a Python number, kept by value as the
    array ``obj``) or "refused" (nothing a replay could feed again; the recording refused it).
    ``live``: gradient flows back into it, as it does eagerly into a Variable the caller passed, an op
    output and a Variable living outside the step, but not into a Variable the step wrapped around an
    argument's array.
    """

    kind: str
    index: int = 0
    app: int = 0
    obj: Any = None
    live: bool = False


@dataclass
class Application:
    """One recorded op application."""

    op: Operation
    sources: list[Source]
    converts: list[np.dtype | None]  # the dtype the forward wrapper converted an input to
    needs_input_grad: tuple[bool, ...]  # as the eager run had it
    input_shapes: list[tuple[int, ...]]
    outputs: int | None  # None: one output (not a tuple)
    output_dtypes: list[np.dtype]
    output_shapes: list[tuple[int, ...]]
    train: bool  # kept on the tape (train mode)


@dataclass
class Loss:
    """One ``loss(target)``: of application ``app``, the step's ``index``-th loss value."""

    app: int
    target: Source
    index: int


@dataclass
class Backward:
    """One ``graph.backward()``: which applications it walked, which losses it seeded."""

    apps: list[int]
    losses: list[int]
    seeds: list[tuple[Source, Source, np.dtype]]  # (output seeded, its gradient's source, the output's dtype)
    loss_grad: Any


@dataclass
class Call:
    """A replayable call: ``function(owner, *args, **kwargs)`` (``function`` undecorated)."""

    function: Callable[..., Any]
    owner: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


# -- the guards ------------------------------------------------------------------------------------
#: Modules whose code may read and write tapegrad's values while a step records: the kernel itself.
KERNEL = frozenset(
    f"tapegrad.{name}" for name in ("variable", "tape", "operation", "graph", "parameter", "events", "broadcast")
)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMPY = os.path.dirname(os.path.abspath(np.__file__))


def _is_kernel(frame: Any) -> bool:
    """Whether ``frame`` runs the kernel's code (or capture's own)."""
    name = frame.f_globals.get("__name__", "")
    return name in KERNEL or name.startswith("tapegrad.capture")


def _user_line(frame: Any) -> str:
    """``file:line (code)`` of ``frame`` or the innermost frame outside it that is neither tapegrad's nor
    numpy's: the step's line."""
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if not (path.startswith(_PACKAGE + os.sep) or path.startswith(_NUMPY + os.sep)):
            code = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            return f"{frame.f_code.co_filename}:{frame.f_lineno}" + (f" (`{code}`)" if code else "")
        frame = frame.f_back
    return "an unknown line"


def _refuse(what: str, fix: str, subject: Any = None, depth: int = 2) -> None:
    """Note a refusal with the active recording when the code ``depth`` frames up (by default: the caller
    of the guard that calls this) is the step's own Python: not the kernel's, and not op code or a
    replayable call running. ``what`` says what it did, with ``{}`` for ``subject`` (described only when
    refusing). The run goes on either way."""
    recording = _ACTIVE.get()
    if recording is None or recording.depth or recording.thread != threading.get_ident():
        return
    frame = sys._getframe(depth)
    if not _is_kernel(frame):
        recording.refuse(f"{what.format(_describe(subject))} at {_user_line(frame)}. {fix}")


def _describe(subject: Any) -> str:
    if isinstance(subject, Variable):
        name = subject.name
        return f"Variable {name!r}" if name else f"a Variable of shape {_VALUE.__get__(subject).shape}"
    if isinstance(subject, TracedArray):
        recording = _ACTIVE.get()
        index = recording.argument_index(subject) if recording is not None else None
        return f"step argument {index}" if index is not None else "a step argument"
    if isinstance(subject, TracedFloat):
        return subject.what
    return "" if subject is None else str(subject)


_READ_FIX = (
    "A replay runs only op code and replayable calls, so what this line computes would be frozen at its "
    "first value. Compute it with ops, do it outside the step, or use a replayable utility "
    "(tapegrad.optim.clip_grad_norm, a scheduler's step())."
)
_WRITE_FIX = (
    "A replay would not run this line. Change tapegrad state with replayable calls (an optimizer's step(), a "
    "scheduler's step() for the learning rate, graph.train()/eval()), or outside the step."
)


_VALUE = Variable.__dict__["value"]  # the slot itself: what the guards read and write around


class GuardedVariable(Variable):
    """A Variable while a step records (its class is swapped back afterwards): reading its value or
    gradient, or writing them, from the step's own Python is refused (see the module docstring)."""

    __slots__ = ()

    @property  # type: ignore[override]
    def value(self) -> np.ndarray:
        _refuse("the step reads {}'s value", _READ_FIX, self)
        return _VALUE.__get__(self)  # type: ignore[no-any-return]

    @value.setter
    def value(self, new: np.ndarray) -> None:
        _refuse("the step sets {}'s value", _WRITE_FIX, self)
        _VALUE.__set__(self, new)

    @property  # type: ignore[override]
    def grad(self) -> np.ndarray | None:
        _refuse("the step reads {}'s gradient", _READ_FIX, self)
        return Variable.grad.fget(self)  # type: ignore[attr-defined,no-any-return]

    @grad.setter
    def grad(self, new: Any) -> None:
        _refuse("the step sets {}'s gradient", _WRITE_FIX, self)
        Variable.grad.fset(self, new)  # type: ignore[attr-defined]

    def peek_grad(self) -> np.ndarray | None:
        _refuse("the step reads {}'s gradient", _READ_FIX, self)
        return Variable.peek_grad(self)

    def add_grad(self, grad: Any) -> None:
        _refuse("the step adds into {}'s gradient", _WRITE_FIX, self)
        Variable.add_grad(self, grad)

    def clear_grad(self) -> None:
        _refuse("the step clears {}'s gradient", _WRITE_FIX, self)
        Variable.clear_grad(self)

    def numpy(self) -> np.ndarray:
        _refuse("the step reads {}'s value", _READ_FIX, self)
        return _VALUE.__get__(self)  # type: ignore[no-any-return]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        _refuse("the step reads {}'s value (np.asarray)", _READ_FIX, self)
        return Variable.__array__(self, dtype, copy)


_ARGUMENT_FIX = (
    "A replay runs only op code, so Python computing with a step argument's values is frozen at the first "
    "call's data. Compute it with ops (Divide, Index, ...), or do it outside the step and pass the result as "
    "an argument; a Python branch on data: pass the condition as an argument."
)
_INDEX_FIX = _ARGUMENT_FIX.replace("Divide, Index, ...", "Index, or pass the slice itself as an argument")
# numpy functions that read only shapes and dtypes
_SHAPE_FUNCTIONS = frozenset(
    {np.shape, np.ndim, np.size, np.result_type, np.can_cast, np.min_scalar_type, np.zeros_like, np.ones_like,
     np.empty_like, np.full_like}
)


class TracedArray:
    """A step's array argument while the step records: a stand-in for it, as a JAX tracer is. Its shape,
    dtype, ndim, size and length may be read; anything else the step's own Python does with it (arithmetic,
    comparisons, indexing, numpy functions, ``np.asarray``, its methods) is refused, and done anyway on the
    array it stands for, so the run goes on. The kernel reads ``array`` through ``__array__``: ops, losses
    and seeds receive the argument itself."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array  # a view of the caller's array (of its type): one object per argument

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    @property
    def size(self) -> int:
        return self.array.size

    @property
    def itemsize(self) -> int:
        return self.array.itemsize

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    def __len__(self) -> int:
        return len(self.array)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        _refuse("the step reads {}'s values (np.asarray, np.array)", _ARGUMENT_FIX, self)
        return self.array if dtype is None else self.array.astype(dtype)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _refuse(f"the step computes {ufunc.__name__} on {{}}'s values", _ARGUMENT_FIX, self)
        if "out" in kwargs:
            kwargs["out"] = tuple(_plain(kwargs["out"]))
        return getattr(ufunc, method)(*_plain(inputs), **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        if func not in _SHAPE_FUNCTIONS:
            _refuse(f"the step calls numpy's {func.__name__} on {{}}'s values", _ARGUMENT_FIX, self)
        return func(*_plain(args), **_plain(kwargs))

    def __getitem__(self, index: Any) -> Any:
        _refuse(f"the step indexes {{}} ([{index!r}])", _INDEX_FIX, self)
        return self.array[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        _refuse("the step writes into {}", _ARGUMENT_FIX, self)
        self.array[index] = value

    def __getattr__(self, name: str) -> Any:  # its methods (x.mean(), x.reshape(...), x.view(...), x.flat)
        _refuse(f"the step calls .{name} on {{}}'s values", _ARGUMENT_FIX, self)
        return getattr(self.array, name)

    def __repr__(self) -> str:
        return f"<{_describe(self)}: shape {self.shape}, {self.dtype} (its values are not read while recording)>"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: Any) -> Any:  # (a copy or pickle is of the array it stands for)
        return self.array.__reduce_ex__(protocol)

    def __buffer__(self, flags: int) -> memoryview:  # (memoryview(x), Python 3.12 and later)
        _refuse("the step reads {}'s memory (memoryview)", _ARGUMENT_FIX, self)
        return memoryview(self.array)  # type: ignore[arg-type]


def _operator(name: str, what: str) -> Callable[..., Any]:
    def refused(self: TracedArray, *args: Any) -> Any:
        _refuse(what, _ARGUMENT_FIX, self)
        return getattr(self.array, name)(*_plain(args))

    refused.__name__ = name
    return refused


# Python's operators on an argument, by the ufunc each one is (as numpy names it in the message)
_UFUNCS = {
    "add": "add", "sub": "subtract", "mul": "multiply", "truediv": "divide", "floordiv": "floor_divide",
    "mod": "remainder", "divmod": "divmod", "pow": "power", "matmul": "matmul", "and": "bitwise_and",
    "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift",
}
for _name, _ufunc in _UFUNCS.items():
    for _dunder in (f"__{_name}__", f"__r{_name}__"):
        setattr(TracedArray, _dunder, _operator(_dunder, f"the step computes {_ufunc} on {{}}'s values"))
for _dunder, _ufunc in (
    ("__neg__", "negative"), ("__pos__", "positive"), ("__abs__", "absolute"), ("__invert__", "invert"),
    ("__eq__", "equal"), ("__ne__", "not_equal"), ("__lt__", "less"), ("__le__", "less_equal"),
    ("__gt__", "greater"), ("__ge__", "greater_equal"),
):
    setattr(TracedArray, _dunder, _operator(_dunder, f"the step computes {_ufunc} on {{}}'s values"))
for _dunder, _what in (
    ("__iter__", "iterates over"), ("__bool__", "tests the truth of"), ("__float__", "converts to a float"),
    ("__int__", "converts to an int"), ("__index__", "uses as an index"), ("__complex__", "converts to complex"),
    ("__contains__", "searches"), ("__round__", "rounds"),
):
    setattr(TracedArray, _dunder, _operator(_dunder, f"the step {_what} {{}}"))
TracedArray.__hash__ = None  # type: ignore[assignment]


def _plain(value: Any) -> Any:
    """``value`` with every TracedArray in it (lists, tuples, dicts) as the array it stands for."""
    if isinstance(value, TracedArray):
        return value.array
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value) if not hasattr(value, "_fields") else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


_LOSS_FIX = (
    "A loss value may be returned by the step, but Python computing with it is frozen at the first call's "
    "value. Return it and compute outside the step, or compute with ops."
)


def _traced_float_guard(name: str) -> Callable[..., Any]:
    base = getattr(float, name)

    def guarded(self: TracedFloat, *args: Any) -> Any:
        _refuse(f"the step computes with {{}} ({name})", _LOSS_FIX, self)
        return base(float.__float__(self), *(float.__float__(a) if isinstance(a, TracedFloat) else a for a in args))

    guarded.__name__ = name
    return guarded


class TracedFloat(float):
    """A loss value (or a float a replayable call returned) while the step records: it may be returned,
    but Python arithmetic, comparisons and truth tests on it are refused (and computed anyway)."""

    what = "a loss value"

    def __hash__(self) -> int:
        return float.__hash__(self)

    def __repr__(self) -> str:
        return float.__repr__(float.__float__(self))


for _name in (
    "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
    "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__", "__divmod__", "__rdivmod__", "__pow__", "__rpow__",
    "__neg__", "__pos__", "__abs__", "__round__", "__trunc__", "__floor__", "__ceil__", "__int__", "__float__",
    "__bool__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "is_integer", "as_integer_ratio",
):
    setattr(TracedFloat, _name, _traced_float_guard(_name))


class _CallResult(TracedFloat):
    what = "a float a replayable call returned"


def plain_float(value: float) -> float:
    """A traced float as the plain float it stands for."""
    return float.__float__(value)


# -- the recording -------------------------------------------------------------------------------
class Recording(events.Observer):
    """Collects what the eager run of a step does, and guards it (see the module docstring).

    ``leaves`` are the step's array and Variable arguments, in order; ``traced`` holds what the step
    receives in their place (array leaves as ``TracedArray`` views; ``signature.rebuild`` puts them in).
    Use as a context manager around the run; ``template(result)`` then maps what the step returned onto
    the record, and ``finish()`` drops what only recording needed.
    """

    def __init__(self, graph: Graph, leaves: list[Any]) -> None:
        self.graph = graph
        self.thread = threading.get_ident()
        #: per argument: (passed as a Variable, holding floats), its shape, and its type when an ndarray subclass
        self.leaf_kinds = [(isinstance(leaf, Variable), _leaf_array(leaf).dtype.kind == "f") for leaf in leaves]
        self.leaf_shapes = [np.shape(_leaf_array(leaf)) for leaf in leaves]
        #: per argument: its type when it is an ndarray subclass (np.matrix, ...), else None
        self.leaf_types = [
            type(leaf) if isinstance(leaf, ndarray) and type(leaf) is not ndarray else None for leaf in leaves
        ]
        self.apps: list[Application] = []
        self.events: list[tuple[str, Any]] = []
        self.refusals: list[str] = []
        self.depth = 0  # op code or a replayable call is running (their reads and writes are theirs)
        self.traced: list[Any] = []  # per leaf: what the step receives (a TracedArray view, or the Variable)
        self._sources: dict[int, Source] = {}  # id(Variable or array) -> where it came from
        self._apps_by_ctx: dict[int, int] = {}
        self._made: set[int] = set()  # ids of Variables the step made
        self._returns: dict[int, tuple[str, int]] = {}  # id(traced float or call result) -> ("loss"|"call", index)
        self._alive: list[Any] = []  # everything whose id is a key above stays alive while recording
        self._guarded: list[Variable] = []
        self._token: Any = None
        self._ops = len(graph.operations)
        self._made_op = False
        self._calls = 0
        self._losses = 0
        for index, leaf in enumerate(leaves):
            if isinstance(leaf, Variable):
                traced: Any = leaf
                if id(leaf) not in self._sources:  # (one Variable passed twice: its first place; the key says so)
                    self._remember(leaf, Source("argument", index=index, live=leaf.value.dtype.kind == "f"))
            else:
                traced = TracedArray(leaf.view(type(leaf)))  # (a view of its own: one object per argument)
                self._remember(traced, Source("argument", index=index))
                self._remember(traced.array, Source("argument", index=index))
            self.traced.append(traced)

    def argument_index(self, array: Any) -> int | None:
        found = self._sources.get(id(array))
        return found.index if found is not None and found.kind == "argument" else None

    # -- entering and leaving ----------------------------------------------------------------------
    def __enter__(self) -> Recording:
        if _ACTIVE.get() is not None:
            raise CaptureError("a captured step cannot record while another one records in the same thread")
        self._token = _ACTIVE.set(self)
        for variable in self.graph.parameter.variable_dict.values():
            self._guard(variable)
        for traced in self.traced:
            if isinstance(traced, Variable):
                self._guard(traced)
        events.subscribe(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        events.unsubscribe(self)
        _ACTIVE.reset(self._token)
        self._token = None
        for variable in self._guarded:
            if type(variable) is GuardedVariable:
                variable.__class__ = Variable  # type: ignore[assignment]
        self._guarded.clear()
        if len(self.graph.operations) != self._ops and not self._made_op:
            self.refuse(
                f"the step created {len(self.graph.operations) - self._ops} op(s) (graph.get_operation): every call "
                "would record anew. Create the ops once, before the step (unroll over time with one Unstack, or "
                "Index ops made up front)"
            )

    def _guard(self, variable: Any) -> None:
        if type(variable) is Variable:
            variable.__class__ = GuardedVariable
            self._guarded.append(variable)

    def _remember(self, obj: Any, source: Source) -> None:
        self._sources[id(obj)] = source
        self._alive.append(obj)

    def refuse(self, message: str) -> None:
        """Note what a replay could not redo (the step still runs to the end, eagerly)."""
        self.refusals.append(message)

    def _ours(self) -> bool:
        return threading.get_ident() == self.thread

    # -- the kernel's events ------------------------------------------------------------------------
    def created(self, variable: Any) -> None:
        if self._ours() and not self.depth:
            self._made.add(id(variable))
            self._alive.append(variable)

    def run(
        self, kind: str, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
        replayed: bool = False,
    ) -> Any:
        if self.depth or not self._ours():  # part of op code or of another call: theirs
            return function(*args, **kwargs)
        call = None
        if kind == "call":
            call = self._call(events.underlying(function), owner, args[1:], kwargs)
        self.depth += 1
        try:
            result = function(*args, **kwargs)
        finally:
            self.depth -= 1
        if call is not None:
            index = self._calls
            self._calls += 1
            self.events.append(("call", call))
            if isinstance(result, float) and not isinstance(result, TracedFloat):
                result = _CallResult(result)
            if isinstance(result, (float, Variable)):
                self._returns[id(result)] = ("call", index)
                self._alive.append(result)
            variables = getattr(owner, "variables", None)
            if isinstance(variables, list):  # an optimizer's: the step must not read them either
                for variable in variables:
                    self._guard(variable)
        return result

    def _call(self, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        of = "" if isinstance(owner, (list, tuple)) else f"{type(owner).__name__}."
        name = f"{of}{function.__name__}()"
        for value in (owner, *args, *kwargs.values()):
            problem = _unreplayable(value)
            if problem:
                self.refuse(
                    f"{name} was called with {problem} at {_user_line(sys._getframe(3))}: a replay repeats a call's "
                    "arguments as "
                    "recorded. Pass numbers, strings, Variables or lists of Variables; set values that change as an "
                    "attribute through a replayable call (a scheduler sets the optimizer's lr)"
                )
        if isinstance(owner, (list, tuple)):
            for variable in owner:
                self._guard(variable)
        return Call(function, owner, args, dict(kwargs))

    def applied(self, ctx: Context, arrays: Any) -> None:
        if not self._ours():
            return
        op = ctx.op
        if op.graph is not self.graph:
            self.refuse(
                f"{op.label} belongs to graph {getattr(op.graph, 'name', None)!r}, not to the captured graph "
                f"{self.graph.name!r}: a captured step records the ops of its own graph"
            )
        sources, converts = [], []
        for i, (x, array) in enumerate(zip(ctx.inputs, arrays)):
            source = self._source(x, array, f"{op.label} input {i}")
            raw = _VALUE.__get__(x) if isinstance(x, Variable) else x.array if isinstance(x, TracedArray) else x
            same = isinstance(raw, ndarray) and array.dtype == raw.dtype
            converts.append(None if same or source.kind == "number" else array.dtype)
            sources.append(source)
        index = len(self.apps)
        outputs = ctx.outputs if isinstance(ctx.outputs, tuple) else (ctx.outputs,)
        for k, out in enumerate(outputs):
            self._remember(out, Source("output", index=k, app=index, live=True))
            self._remember(_VALUE.__get__(out), Source("output", index=k, app=index))
            self._guard(out)
        self._apps_by_ctx[id(ctx)] = index
        self._alive.append(ctx)
        self.apps.append(
            Application(
                op=op,
                sources=sources,
                converts=converts,
                needs_input_grad=tuple(ctx.needs_input_grad),
                input_shapes=[np.shape(a) for a in arrays],
                outputs=len(outputs) if isinstance(ctx.outputs, tuple) else None,
                output_dtypes=[_VALUE.__get__(o).dtype for o in outputs],
                output_shapes=[_VALUE.__get__(o).shape for o in outputs],
                train=ctx.recorded,
            )
        )
        self.events.append(("apply", index))

    def loss(self, ctx: Context, target: Any, array: Any, value: float) -> float:
        if not self._ours():
            return value
        app = self._app(ctx)
        source = self._source(target, array, f"{ctx.op.label} target")
        index = self._losses
        self._losses += 1
        self.events.append(("loss", Loss(app, source, index)))
        traced = TracedFloat(value)
        self._returns[id(traced)] = ("loss", index)
        self._alive.append(traced)
        return traced

    def backward(self, tape: Tape, seeds: list[Any], loss_grad: Any) -> None:
        if not self._ours():
            return
        apps = [self._app(ctx) for ctx in tape.entries]
        losses = [self._app(ctx) for ctx in tape.losses]
        seeded = []
        for variable, given, grad in seeds:
            where = self._sources.get(id(variable))
            if where is None or where.kind != "output" or not where.live:
                self.refuse("backward(grads=...) inside a captured step must seed op outputs the step made")
                where = Source("refused")
            source = self._source(given, grad, "a gradient passed to backward(grads=...)")
            seeded.append((where, source, variable.dtype))
        if isinstance(loss_grad, TracedFloat) or _unreplayable(loss_grad):
            self.refuse(f"backward(loss_grad=...) got {type(loss_grad).__name__}: pass a number")
        self.events.append(("backward", Backward(apps, losses, seeded, loss_grad)))

    def setting(self, obj: Any, name: str) -> None:
        if not self._ours() or self.depth:
            return
        frame = sys._getframe(1)
        hook = ("tapegrad.events", "tapegrad.capture")
        while frame is not None and frame.f_globals.get("__name__", "").startswith(hook):
            frame = frame.f_back  # type: ignore[assignment]  # (the hook's own frames: to whoever set it)
        if isinstance(obj, Operation) and (obj.graph is None or obj.graph.operations.get(obj.name) is not obj):
            if name == "graph":  # (the first attribute graph.get_operation sets on an op it makes)
                self._made_op = True
                self.refuse(
                    f"the step creates an op ({type(obj).__name__}) at {_user_line(frame)}: every call would record "
                    "anew. Create the ops once, before the step (unroll over time with one Unstack, or Index ops made "
                    "up front)"
                )
            return
        if frame is None or _is_kernel(frame):
            return
        if isinstance(obj, Operation):
            what = obj.label
        else:
            what = f"graph {obj.name!r}" if obj is self.graph else type(obj).__name__
        self.refuse(f"the step sets {what}'s attribute {name!r} at {_user_line(frame)}. {_WRITE_FIX}")

    # -- tracing ------------------------------------------------------------------------------------
    def _app(self, ctx: Context) -> int:
        index = self._apps_by_ctx.get(id(ctx))
        if index is None:
            self.refuse(
                f"{ctx.op.label}: an application made before the captured step started (a forward pass in flight) "
                "was used inside it; call graph.backward() or graph.clear() before calling the step"
            )
            return -1
        return index

    def _source(self, x: Any, array: Any, where: str) -> Source:
        """Where ``x`` (what an op, a loss or a seed received) comes from; ``array`` is what it became."""
        found = self._sources.get(id(x))
        if found is not None:  # an argument, an op output
            return found
        if isinstance(x, Variable):
            if isinstance(x, Constant):
                return Source("constant", obj=x)
            value = _VALUE.__get__(x)
            found = self._sources.get(id(value))
            if found is not None:  # tg.Variable(x) made inside the step around an argument or an output
                return Source(found.kind, index=found.index, app=found.app)
            if id(x) in self._made:
                self._refuse_made(f"{where} is a Variable the step made around {self._made_of(value)}")
                return Source("refused")
            self._guard(x)
            return Source("variable", obj=x, live=value.dtype.kind == "f")
        if isinstance(x, ndarray):
            self._refuse_made(f"{where} is {self._made_of(x)}")
            return Source("refused")
        if isinstance(x, TracedFloat):
            self.refuse(
                f"{where} is {x.what}, at {_user_line(sys._getframe(1))}: a replay would keep the first call's. "
                "Compute with the op's output itself (ops take Variables), or pass the value as an argument"
            )
            return Source("refused")
        if isinstance(x, (int, float, np.bool_, np.integer, np.floating)):  # (bools too) a number: kept by value
            return Source("number", obj=array)
        self._refuse_made(f"{where} is a {type(x).__name__}")
        return Source("refused")

    def _made_of(self, array: np.ndarray) -> str:
        """How a message names an array a replay could not feed again."""
        for index, traced in enumerate(self.traced):
            if isinstance(traced, TracedArray) and np.may_share_memory(array, traced.array):
                return f"a view of step argument {index} made by Python (a slice, say)"
        return "an array made by Python"

    def _refuse_made(self, what: str) -> None:
        self.refuse(
            f"{what} inside the step, at {_user_line(sys._getframe(2))}: a replay would keep the first call's. Pass "
            "it as an argument of the step (a list of arrays is fine), compute it with ops, or make it once with "
            "tg.constant(array), outside the step (data that does not change between calls)"
        )

    # -- what the step returned ----------------------------------------------------------------------
    def template(self, result: Any) -> Any:
        """``result`` with every loss value, op output and replayable call's result replaced by a reference
        into the record; anything else is refused (and None returned for it)."""
        if result is None:
            return None
        found = self._returns.get(id(result))
        if found is not None:
            return found
        if isinstance(result, Variable):
            source = self._sources.get(id(result))
            if source is not None and source.kind == "output" and source.live:
                return ("output", source.app, source.index)
            self.refuse(
                f"the step returned {result!r}, which is not an output of an op it applied; return op outputs, loss "
                "values and what replayable calls returned (read other Variables outside the step)"
            )
            return None
        if type(result) is tuple:
            return (tuple, [self.template(r) for r in result])
        if isinstance(result, (tuple, list)):
            return (type(result), [self.template(r) for r in result])
        if isinstance(result, Mapping):
            empty: Any = copy.copy(result)  # of its type (an OrderedDict, a defaultdict with its factory, a subclass)
            empty.clear()
            return (Mapping, empty, [(k, self.template(v)) for k, v in result.items()])
        what = type(result).__name__
        hint = (
            " (Python arithmetic on a loss value, say: return the loss itself and compute outside the step)"
            if isinstance(result, (int, float, np.number))
            else ""
        )
        self.refuse(
            f"the step returned a {what} that is neither a loss value, an op output nor what a replayable call "
            f"returned{hint}; a captured step returns those, or tuples, lists and dicts of them"
        )
        return None

    def finish(self) -> None:
        """Drop what only recording needed: the first call's arrays, outputs and Contexts."""
        self.traced = []
        self._sources.clear()
        self._apps_by_ctx.clear()
        self._made.clear()
        self._returns.clear()
        self._alive.clear()


def plain_result(result: Any) -> Any:
    """What the step returned, as its caller gets it: traced floats as plain floats, containers alike."""
    if isinstance(result, TracedFloat):
        return plain_float(result)
    if isinstance(result, tuple):
        if hasattr(result, "_fields"):
            return type(result)._make(plain_result(r) for r in result)  # type: ignore[attr-defined]
        plain = tuple(map(plain_result, result))
        return plain if type(result) is tuple else type(result)(plain)
    if isinstance(result, list):
        items = [plain_result(r) for r in result]
        if type(result) is list:
            return items
        result[:] = items
        return result
    if isinstance(result, dict):
        for key, value in result.items():
            result[key] = plain_result(value)
        return result
    return result


def _leaf_array(leaf: Any) -> np.ndarray:
    return _VALUE.__get__(leaf) if isinstance(leaf, Variable) else leaf


def _unreplayable(value: Any) -> str:
    """Why a replay could not pass ``value`` to a replayable call again as recorded ("" when it can)."""
    if isinstance(value, TracedFloat):
        return f"{value.what}"
    if isinstance(value, (ndarray, TracedArray)):
        return "an array"
    if isinstance(value, Variable):
        return ""
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, Variable) for v in value):
            return ""
        for v in value:
            problem = _unreplayable(v)
            if problem:
                return problem
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    try:
        hash(value)
    except TypeError:
        return f"an unhashable {type(value).__name__}"
    return ""
