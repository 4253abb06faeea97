"""The replay engine: what one eager run of a step did (``Recording``), and a program that does
it again at numpy speed (``Replay``).

While a captured step records, the tape, the loss wrapper and every ``replayable`` method report
to the active ``Recording``: each op application (which op, fed by what), each loss computed,
each ``backward()`` and each replayable call (``Optimizer.step``/``zero_grad``,
``Parameter.clear_grads``). ``Replay`` turns that into Python source, one line per op call with
the backward walk unrolled and its gradient routes worked out once, and compiles it. A replay
calls every op's own ``forward``, ``loss`` and ``backward`` on the new values and reads
parameters, hyperparameters and the graph's generator live; what the record froze is which ops
run, in which order, fed by which inputs, and their shapes, so nothing is validated again.
This is tapegrad's one place built for speed; ``Replay.source`` shows the generated program.
While a profiler runs, captured steps use ``Replay.profiled()``: the same program with a timer
around each op call and each replayed call (on the same lines, so errors map alike).
"""

from __future__ import annotations

import linecache
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from .errors import CaptureError, TapegradError
from .operation import nonfinite_loss
from .tape import AUTHOR_ERRORS, FLOAT_SIGNALS, RECORDING, Context, Tape, backward_error
from .variable import Variable, as_array

if TYPE_CHECKING:
    from .graph import Graph
    from .operation import Operation

__all__ = ["Recording", "Replay", "Source", "Application"]


@dataclass(frozen=True)
class Source:
    """Where an op's input (or a loss's target) came from.

    ``kind`` is "input" (the step's argument ``index``), "output" (output ``index`` of
    application ``app``), "variable" (a Variable that outlives the step, a parameter say: ``obj``,
    read live) or "constant" (an array made by Python inside the step: ``obj``, frozen by the
    record). ``live``: the gradient flows back to it, as it does eagerly to a Variable the caller
    passed and to an op output Variable, but not to a bare array or a Variable the step wrapped
    around one.
    """

    kind: str
    index: int = 0
    app: int = 0
    obj: Any = None
    live: bool = False

    def describe(self) -> str:
        if self.kind == "input":
            return f"step input {self.index}"
        if self.kind == "output":
            return f"output {self.index} of application {self.app}"
        if self.kind == "variable":
            return f"Variable {self.obj.name!r}" if self.obj.name else "a Variable made outside the step"
        return f"a constant of shape {np.shape(self.obj)}"


@dataclass
class Application:
    """One recorded op application."""

    op: Operation
    sources: list[Source]
    converts: list[np.dtype | None]  # the dtype the forward wrapper converted an input to
    input_shapes: list[tuple[int, ...]]
    outputs: int | None  # None: one output (not a tuple)
    output_dtypes: list[np.dtype]
    output_shapes: list[tuple[int, ...]]
    recorded: bool  # kept on the tape (train mode)


@dataclass
class Backward:
    """One ``graph.backward()`` call: which applications it walked, which losses it seeded."""

    apps: list[int]
    losses: list[int]
    seeds: list[tuple[Source, Source, np.dtype]]  # (output seeded, gradient's source, its dtype)
    loss_grad: float


@dataclass
class Call:
    """A replayable method call: ``function(obj, *args, **kwargs)``."""

    obj: Any
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Recording:
    """Collects what the eager run of a step does (see the module docstring).

    ``leaves`` are the step's array and Variable arguments, in order. Use as a context manager
    around the eager run; ``template(result)`` then maps what the step returned onto the record.
    """

    def __init__(self, graph: Graph, leaves: list[Any]) -> None:
        self.graph = graph
        self.leaves = leaves
        #: per argument: (passed as a Variable, holding floats), and its shape
        self.leaf_kinds = [(isinstance(leaf, Variable), np.asarray(leaf).dtype.kind == "f") for leaf in leaves]
        self.leaf_shapes = [np.shape(np.asarray(leaf)) for leaf in leaves]
        self.apps: list[Application] = []
        self.events: list[tuple[str, Any]] = []
        self.constants: list[tuple[str, np.ndarray]] = []  # (where, array) of every frozen constant
        self._sources: dict[int, Source] = {}  # id(Variable or array) -> where it came from
        self._apps_by_ctx: dict[int, int] = {}
        self._losses: dict[int, int] = {}  # id(loss value) -> its index
        self._alive: list[Any] = []  # everything whose id is a key above stays alive while recording
        self._token: Any = None
        self.in_call = False  # inside a replayable call (its own nested calls are not noted)
        for index, leaf in enumerate(leaves):
            if id(leaf) not in self._sources:  # (one object passed twice: its first place; the key says so)
                self._remember(leaf, Source("input", index=index, live=isinstance(leaf, Variable)))
            if isinstance(leaf, Variable) and id(leaf.value) not in self._sources:
                self._remember(leaf.value, Source("input", index=index))

    def __enter__(self) -> Recording:
        self._token = RECORDING.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        RECORDING.reset(self._token)
        self._token = None

    def finish(self) -> None:
        """Drop what only recording needed: the first call's arrays, outputs and Contexts (their
        activations). A record keeps the ops, the sources, the constants, and the Variables passed
        as arguments (drawings show their gradients); of an array argument, its shape."""
        self.leaves = [leaf if isinstance(leaf, Variable) else _Shape(np.shape(leaf)) for leaf in self.leaves]
        self._sources.clear()
        self._apps_by_ctx.clear()
        self._losses.clear()
        self._alive.clear()

    def _remember(self, obj: Any, source: Source) -> None:
        self._sources[id(obj)] = source
        self._alive.append(obj)

    # -- what the tape and the loss wrapper report -----------------------------------------------
    def applied(self, ctx: Context, arrays: Any) -> None:
        op = ctx.op
        if op.graph is not self.graph:
            raise CaptureError(
                f"{op.label} belongs to graph {getattr(op.graph, 'name', None)!r}, not to the captured graph "
                f"{self.graph.name!r}: a captured step records the ops of its own graph"
            )
        sources, converts = [], []
        for i, (x, array) in enumerate(zip(ctx.inputs, arrays)):
            source = self._source(x, array, f"{op.label} input {i}")
            raw = x.value if isinstance(x, Variable) else x
            converts.append(array.dtype if source.kind != "constant" and array is not raw else None)
            sources.append(source)
        index = len(self.apps)
        outputs = ctx.outputs if isinstance(ctx.outputs, tuple) else (ctx.outputs,)
        for k, out in enumerate(outputs):
            self._remember(out, Source("output", index=k, app=index, live=True))
            self._remember(out.value, Source("output", index=k, app=index))
        self._apps_by_ctx[id(ctx)] = index
        self._alive.append(ctx)
        self.apps.append(
            Application(
                op=op,
                sources=sources,
                converts=converts,
                input_shapes=[np.shape(a) for a in arrays],
                outputs=len(outputs) if isinstance(ctx.outputs, tuple) else None,
                output_dtypes=[o.value.dtype for o in outputs],
                output_shapes=[o.value.shape for o in outputs],
                recorded=ctx.recorded,
            )
        )
        self.events.append(("apply", index))

    def loss(self, ctx: Context, target: Any, array: np.ndarray, value: float) -> None:
        app = self._app(ctx)
        source = self._source(target, array, f"{ctx.op.label} target")
        index = len(self._losses)
        self._losses[id(value)] = index
        self._alive.append(value)
        self.events.append(("loss", (app, source, index)))

    def backward(self, tape: Tape, seeds: list[tuple[Variable, np.ndarray]], loss_grad: float) -> None:
        apps = [self._app(ctx) for ctx in tape.entries]
        losses = [self._app(ctx) for ctx in tape.losses]
        seeded = []
        for variable, grad in seeds:
            where = self._sources.get(id(variable))
            if where is None or where.kind != "output" or not where.live:
                raise CaptureError("backward(grads=...) inside a captured step must seed op outputs of the step")
            seeded.append((where, self._source(grad, grad, "a gradient passed to backward(grads=...)"), variable.dtype))
        self.events.append(("backward", Backward(apps, losses, seeded, float(loss_grad))))

    def called(self, obj: Any, function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for value in (*args, *kwargs.values()):
            try:
                replayable = not isinstance(value, (ndarray, Variable)) and hash(value) is not None
            except TypeError:
                replayable = False
            if not replayable:
                raise CaptureError(
                    f"{type(obj).__name__}.{function.__name__}() was called with an argument a replay could not "
                    "pass again (an array or another unhashable value): replayed calls repeat their arguments "
                    "as recorded. Set such a value as an attribute instead (optimizer.lr = ...): replays read "
                    "attributes live."
                )
        self.events.append(("call", Call(obj, function, args, kwargs)))

    def _app(self, ctx: Context) -> int:
        index = self._apps_by_ctx.get(id(ctx))
        if index is None:
            raise CaptureError(
                f"{ctx.op.label}: this application was made before the captured step started (a forward pass "
                "in flight); call graph.backward() or graph.clear() before calling the step"
            )
        return index

    def _source(self, x: Any, array: np.ndarray, where: str) -> Source:
        """Where ``x`` (what an op or loss received) comes from; ``array`` is what it became."""
        if isinstance(x, (Variable, ndarray)):
            found = self._sources.get(id(x))
            if found is not None:
                return found
        if isinstance(x, Variable):
            found = self._sources.get(id(x.value))
            if found is not None:  # tg.Variable(x) made inside the step around an argument or an output
                return Source(found.kind, index=found.index, app=found.app)
            self._refuse_views(x.value, where)
            return Source("variable", obj=x)
        self._refuse_views(array, where)
        self.constants.append((where, array))
        return Source("constant", obj=array)

    def _refuse_views(self, array: np.ndarray, where: str) -> None:
        for index, leaf in enumerate(self.leaves):
            leaf_array = leaf.value if isinstance(leaf, Variable) else leaf
            if np.may_share_memory(array, leaf_array):
                raise CaptureError(
                    f"{where} is a view of step input {index} made by Python inside the step (a slice, say): "
                    "a record would keep that view of the first call's data. Pass what the op needs as an "
                    "argument of the step (a list of arrays is fine), or compute it with an op."
                )

    # -- what the step returned --------------------------------------------------------------------
    def template(self, result: Any) -> Any:
        """``result`` with every loss value and op output replaced by a reference into the record;
        anything else raises CaptureError."""
        if result is None:
            return None
        if isinstance(result, float) and id(result) in self._losses:
            return ("loss", self._losses[id(result)])
        if isinstance(result, Variable):
            found = self._sources.get(id(result))
            if found is not None and found.kind == "output" and found.live:
                return ("output", found.app, found.index)
            raise CaptureError(
                f"the step returned {result!r}, which is not an output of an op it applied; return op "
                "outputs and loss values (read other Variables outside the step)"
            )
        if isinstance(result, (tuple, list)):
            return (type(result), [self.template(r) for r in result])
        if isinstance(result, Mapping):
            return (dict, [(k, self.template(v)) for k, v in result.items()])
        what = type(result).__name__
        hint = (
            " (Python arithmetic on a loss value, say: return the loss itself and compute outside the step)"
            if isinstance(result, (int, float, np.number))
            else ""
        )
        raise CaptureError(
            f"the step returned a {what} that is neither a loss value nor an op output{hint}; a captured "
            "step returns loss values, op outputs (Variables), or tuples, lists and dicts of them"
        )


class Replay:
    """A compiled program that does what a ``Recording`` did, on new arguments.

    ``replay(*leaves)`` takes the step's array and Variable arguments in order and returns the
    values the template describes. ``source`` is the generated program, for reading.
    """

    def __init__(self, recording: Recording, template: Any, frozen: set[tuple[int, int]] | None = None) -> None:
        self.recording = recording
        #: (application, input) pairs whose Variable the step makes itself: constants, no gradient
        self.frozen = frozen or set()
        self.graph = recording.graph
        self.apps = recording.apps
        self.events = recording.events
        self.leaves = recording.leaf_kinds
        self.segments = {i: event.apps for kind, event in recording.events if kind == "backward" for i in event.apps}
        self.template = template
        self.contexts = [Context(app.op, (), ()) for app in self.apps]
        self._lines: dict[int, tuple[int, str]] = {}  # generated line -> (application, stage)
        self.source, self.function = _Program(self).compile()
        self._profiled: Callable[..., Any] | None = None

    def profiled(self, profiler: Any) -> Callable[..., Any]:
        """The profiled variant of ``function``, timed by ``profiler`` (profiling hook: compiled on
        first use; only a captured step's call selects it, while a profiler runs)."""
        function = self._profiled
        if function is None:
            function = self._profiled = _Program(self, profiled=True).compile()[1]
        timers = function.__globals__
        if timers["PROFILER"] is not profiler:  # its timers are the running profiler's own methods
            timers.update(PROFILER=profiler, BEGIN=profiler.begin, END=profiler.end, END_CALL=profiler.end_call)
        return function

    def __call__(self, *leaves: Any) -> Any:
        return self.run(self.function, leaves)

    def run(self, function: Callable[..., Any], leaves: Sequence[Any]) -> Any:
        """``function`` (this program, or its profiled variant) on ``leaves``. The program calls ops'
        own code, so ops they apply are not recorded (``Tape.inside``), as eagerly; an error is
        named the way eager names it."""
        tape = self.graph.tape
        tape.inside += 1
        try:
            return function(*leaves)
        except Exception as exc:
            error = self.error(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            tape.inside -= 1

    def error(self, exc: BaseException) -> BaseException:
        """The error a replay raised, naming the application the way eager does."""
        app, stage = None, "replay"
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename in (self._filename, self._filename + " profiled"):
                app, stage = self._lines.get(tb.tb_lineno, (None, "replay"))
            tb = tb.tb_next
        if app is None:
            return exc  # raised by a replayed call (an optimizer's step), as eagerly
        op = self.apps[app].op
        if stage == "backward":
            return backward_error(op, exc)
        if isinstance(exc, TapegradError) or not isinstance(exc, (*AUTHOR_ERRORS, *FLOAT_SIGNALS)):
            return exc  # the op's own error, or one eager lets through too
        return op.author_error(stage, exc, [_Shape(s) for s in self.apps[app].input_shapes])

    @property
    def _filename(self) -> str:
        return f"<tapegrad replay {id(self):x}>"


class _Program:
    """Writes a Replay's Python source. Names: ``a<k>`` arguments, ``o<i>`` outputs of
    application i (``o<i>_<k>`` for several), ``g<i>_<k>`` their gradients, ``l<n>`` losses."""

    def __init__(self, replay: Replay, profiled: bool = False) -> None:
        self.replay = replay
        self.profiled = profiled
        self.lines: list[str] = []
        self.names: dict[str, Any] = {
            "ndarray": ndarray,
            "Variable": Variable,
            "as_array": as_array,
            "isfinite": math.isfinite,
            "accumulate": accumulate,
            "zeros_like": np.zeros_like,
            "nonfinite": nonfinite,
            "returned": returned,
            "LATEST": replay.graph.tape.latest,
        }
        self._objects: dict[int, str] = {}
        self.slots: set[str] = set()  # gradient slots defined by some backward
        if profiled:  # (bound to the running profiler by Replay.profiled)
            self.names.update(PROFILER=None, BEGIN=None, END=None, END_CALL=None, clock=time.perf_counter)

    def timed(self, statement: str, op: str, kind: str) -> str:
        """``statement`` (one op call, ``kind`` "forward", "loss", "backward" or "call" of ``op``),
        with the profiler's timer around it in the profiled variant, on the same line."""
        if not self.profiled:
            return statement
        # (the second reading is an argument: taken before END's own call begins)
        end = f"END_CALL({op}, c, t, clock(), True)" if kind == "call" else f"END({op}, {kind!r}, c, t, clock(), True)"
        return f"c = BEGIN(); t = clock(); {statement}; {end}"

    def name(self, prefix: str, obj: Any) -> str:
        """A global of the generated program holding ``obj``."""
        key = id(obj)
        if key not in self._objects:
            self._objects[key] = f"{prefix}{len(self._objects)}"
            self.names[self._objects[key]] = obj
        return self._objects[key]

    def emit(self, line: str, depth: int = 1, app: int | None = None, stage: str = "") -> None:
        self.lines.append("    " * depth + line)
        if app is not None:
            self.replay._lines[len(self.lines) + 1] = (app, stage)  # +1: the def line comes first

    def compile(self) -> tuple[str, Callable[..., Any]]:
        replay = self.replay
        for i, ctx in enumerate(replay.contexts):
            ctx.needs_input_grad = self.needs_input_grad(i)
        for kind, event in replay.events:
            getattr(self, f"emit_{kind}")(event)
        self.emit(f"return {self.value(replay.template)}")
        arguments = ", ".join(f"a{k}" for k in range(len(replay.leaves)))
        source = f"def replay({arguments}):\n" + "\n".join(self.lines) + "\n"
        filename = replay._filename + (" profiled" if self.profiled else "")
        code = compile(source, filename, "exec")
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        namespace = dict(self.names)
        exec(code, namespace)
        return source, namespace["replay"]

    # -- values --------------------------------------------------------------------------------
    def array(self, source: Source, frozen: bool = False) -> str:
        if frozen:
            return self.name("K", source.obj.value)
        if source.kind == "input":
            return f"a{source.index}.value" if self.replay.leaves[source.index][0] else f"a{source.index}"
        if source.kind == "output":
            app = self.replay.apps[source.app]
            return f"o{source.app}" if app.outputs is None else f"o{source.app}_{source.index}"
        if source.kind == "variable":
            return f"{self.name('V', source.obj)}.value"
        return self.name("K", source.obj)

    def value(self, template: Any) -> str:
        if template is None:
            return "None"
        kind = template[0]
        if kind == "loss":
            return f"l{template[1]}"
        if kind == "output":
            _, app, index = template
            array = self.array(Source("output", index=index, app=app))
            slot = f"g{app}_{index}"
            if slot in self.slots:  # its gradient, as eagerly: what backward gave it
                return f"returned({array}, {slot})"
            return f"Variable({array})"
        if kind is dict:
            items = ", ".join(f"{self.name('KEY', key)}: {self.value(v)}" for key, v in template[1])
            return "{" + items + "}"
        parts = [self.value(t) for t in template[1]]
        if kind is tuple:
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        if kind is list:
            return "[" + ", ".join(parts) + "]"
        if hasattr(kind, "_make"):  # a namedtuple
            return f"{self.name('T', kind)}._make([" + ", ".join(parts) + "])"
        return f"{self.name('T', kind)}([" + ", ".join(parts) + "])"

    # -- forward ---------------------------------------------------------------------------------
    def emit_apply(self, i: int) -> None:
        app = self.replay.apps[i]
        op, ctx = app.op, self.replay.contexts[i]
        args = []
        for k, (source, convert) in enumerate(zip(app.sources, app.converts)):
            expr = self.array(source, (i, k) in self.replay.frozen)
            args.append(expr if convert is None else f"{expr}.astype({self.name('DT', convert)})")
        c = self.name("C", ctx)
        self.emit(f"{self.name('D', ctx.__dict__)}.clear(); {c}.saved = ()")
        call = f"{self.name('F', type(op).forward.__wrapped__)}({self.name('OP', op)}, {c}, {', '.join(args)})"  # type: ignore[attr-defined]
        outs = [f"o{i}"] if app.outputs is None else [f"o{i}_{k}" for k in range(app.outputs)]
        statement = f"{', '.join(outs)}{',' if app.outputs == 1 else ''} = {call}"
        self.emit(self.timed(statement, self.name("OP", op), "forward"), app=i, stage="forward")
        for name, shape in zip(outs, app.output_shapes):
            if shape == ():  # numpy returns scalars for shape (): the forward wrapper made them arrays
                self.emit(f"if type({name}) is not ndarray: {name} = as_array({name})", app=i, stage="forward")
        if op.is_loss:
            self.emit(f"LATEST[{self.name('OP', op)}] = {c}")

    def emit_loss(self, event: tuple[int, Source, int]) -> None:
        app, source, index = event
        op, ctx = self.replay.apps[app].op, self.replay.contexts[app]
        target = self.array(source)
        function = self.name("L", type(op).loss.__wrapped__)  # type: ignore[attr-defined]
        statement = f"l{index} = float({function}({self.name('OP', op)}, {self.name('C', ctx)}, {target}))"
        self.emit(self.timed(statement, self.name("OP", op), "loss"), app=app, stage="loss")
        self.emit(f"if not isfinite(l{index}): nonfinite({self.name('OP', op)}, l{index})")

    def emit_call(self, call: Call) -> None:
        extra = "".join(f", {self.name('ARG', a)}" for a in call.args)
        extra += "".join(f", {k}={self.name('ARG', v)}" for k, v in call.kwargs.items())
        statement = f"{self.name('M', call.function)}({self.name('OBJ', call.obj)}{extra})"
        self.emit(self.timed(statement, f"{self.name('OBJ', call.obj)}, {self.name('M', call.function)}", "call"))

    # -- backward --------------------------------------------------------------------------------
    def needs_input_grad(self, i: int) -> tuple[bool, ...]:
        """Per input of application i: does any backward route its gradient somewhere observable?"""
        return tuple(self.route(i, source, k) is not None for k, source in enumerate(self.replay.apps[i].sources))

    def route(self, i: int, source: Source, k: int) -> str | None:
        """Where the gradient of input k of application i goes: a gradient slot of the application
        that made it, or a live Variable's ``add_grad``; None when nobody could see it."""
        segment = self.replay.segments.get(i)
        if (i, k) in self.replay.frozen:
            return None
        if source.kind == "output":
            producer = self.replay.apps[source.app]
            if not source.live or segment is None or source.app not in segment or producer.op.is_loss:
                return None
            if producer.output_dtypes[source.index].kind != "f":
                return None
            return f"g{source.app}_{source.index}"
        if source.kind == "input" and source.live and self.replay.leaves[source.index][1]:
            return f"a{source.index}.add_grad" if segment is not None else None
        if source.kind == "variable" and source.obj.value.dtype.kind == "f":
            return f"{self.name('V', source.obj)}.add_grad" if segment is not None else None
        return None

    def emit_backward(self, event: Backward) -> None:
        apps = self.replay.apps
        self.contributions: dict[str, int] = {}  # gradient slot -> how many routes lead to it
        for i in event.apps:
            for k, source in enumerate(apps[i].sources):
                target = self.route(i, source, k)
                if target is not None:
                    self.contributions[target] = self.contributions.get(target, 0) + 1
        for output, _, _ in event.seeds:
            slot = f"g{output.app}_{output.index}"
            self.contributions[slot] = self.contributions.get(slot, 0) + 2  # (never the only one: seeds accumulate)
        slots = [f"g{i}_{k}" for i in event.apps for k in range(apps[i].outputs or 1) if not apps[i].op.is_loss]
        if slots:
            self.emit(" = ".join(slots) + " = None")
        self.slots.update(slots)
        for output, grad, dtype in event.seeds:
            slot = f"g{output.app}_{output.index}"
            seed = self.array(grad)
            self.emit(f"{slot} = accumulate({slot}, {seed}, {self.name('DT', dtype)})")
        for i in reversed(event.apps):
            app = apps[i]
            op, ctx = app.op, self.replay.contexts[i]
            call = f"{self.name('B', op.backward)}({self.name('C', ctx)}, "
            op_name = self.name("OP", op)
            if op.is_loss:
                if i not in event.losses:
                    continue  # a loss forward whose loss() was never computed contributes nothing
                self.emit(self.timed(f"r = {call}{event.loss_grad!r})", op_name, "backward"), app=i, stage="backward")
                self.emit_routes(i, 1)
                continue
            grads = [f"g{i}_{k}" for k in range(app.outputs or 1)]
            self.emit(f"if {' or '.join(f'{g} is not None' for g in grads)}:")
            if app.outputs is None:
                self.emit(self.timed(f"r = {call}{grads[0]})", op_name, "backward"), 2, app=i, stage="backward")
            else:
                filled = ", ".join(
                    f"({g} if {g} is not None else zeros_like(o{i}_{k}))" for k, g in enumerate(grads)
                )
                self.emit(self.timed(f"r = {call}({filled},))", op_name, "backward"), 2, app=i, stage="backward")
            self.emit_routes(i, 2)

    def emit_routes(self, i: int, depth: int) -> None:
        """Add what application i's backward returned (``r``) where each input's gradient goes."""
        app = self.replay.apps[i]
        routes = [self.route(i, source, k) for k, source in enumerate(app.sources)]
        if not any(routes):
            return
        if len(app.sources) == 1:
            self.emit("if type(r) is tuple: r = r[0]", depth, app=i, stage="backward")
            self.emit("if r is not None:", depth)
            self.emit_add(routes[0], "r", i, 0, depth + 1)
            return
        self.emit("if r is not None:", depth)
        for index, target in enumerate(routes):
            if target is None:
                continue
            self.emit(f"if r[{index}] is not None:", depth + 1, app=i, stage="backward")
            self.emit_add(target, f"r[{index}]", i, index, depth + 2)

    def emit_add(self, target: str | None, grad: str, i: int, index: int, depth: int) -> None:
        assert target is not None
        if target.endswith(".add_grad"):
            self.emit(f"{target}({grad})", depth, app=i, stage="backward")
            return
        producer, k = (int(n) for n in target[1:].split("_"))
        dtype = self.name("DT", self.replay.apps[producer].output_dtypes[k])
        if self.contributions[target] == 1:  # the only one: kept as it is when it needs no conversion
            self.emit(
                f"{target} = {grad} if type({grad}) is ndarray and {grad}.dtype is {dtype} else accumulate(None, {grad}, {dtype})",
                depth, app=i, stage="backward",
            )
        else:
            self.emit(f"{target} = accumulate({target}, {grad}, {dtype})", depth, app=i, stage="backward")


@dataclass(frozen=True)
class _Shape:
    """An input as error messages describe it (by its shape)."""

    shape: tuple[int, ...]


def accumulate(current: np.ndarray | None, grad: Any, dtype: np.dtype) -> np.ndarray:
    """``Variable.add_grad``'s rule on a replay's gradient slot, without its checks: the same
    conversions and the same additions in the same order, so the sum is bit for bit eager's."""
    if type(grad) is not ndarray:
        grad = np.asarray(grad)
    if grad.dtype is not dtype:
        grad = grad.astype(dtype)
    if current is None:
        return grad
    return np.add(current, grad, out=np.empty_like(current))


def returned(value: np.ndarray, grad: np.ndarray | None) -> Variable:
    """An op output the step returns: a new Variable holding the gradient backward gave it."""
    variable = Variable(value)
    if grad is not None:
        variable.add_grad(grad)
    return variable


def nonfinite(op: Operation, value: float) -> None:
    raise nonfinite_loss(op, value)

