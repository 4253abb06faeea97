"""The program: a record turned into Python source that does the step again, at numpy speed.

One line per op call, named after the ops (``affine_0_out = affine_0_forward(affine_0_ctx, x)  # Affine``),
the backward walk unrolled with its gradient routes worked out once, the replayable calls
(``sgd_step()``), and the return. A replay calls every op's own ``forward``, ``loss`` and ``backward`` on
the new values and reads parameters, hyperparameters and the graph's generator live; what the record
froze is which ops run, in which order, fed by which inputs, and their shapes, so nothing is validated
again. It reuses one Context per application and releases what they saved before it returns, so no
array of a batch outlives its call. This is tapegrad's one place built for speed.

``Program.bind(resolve)`` makes the function over other objects than those recorded (the first replay's
check runs it over copies); ``Program.observed()`` is the same program with every op call and replayable
call going through ``events.observer`` (a profiler sees replayed calls so), compiled on first use.
"""

from __future__ import annotations

import builtins
import copy
import keyword
import linecache
import math
import re
from collections.abc import Callable, Mapping
from types import MethodType
from typing import Any

import numpy as np
from numpy import ndarray

from .. import events
from ..errors import FLOAT_SIGNALS, TapegradError
from ..operation import nonfinite_loss, plain_array
from ..tape import AUTHOR_ERRORS, Context, backward_error
from ..variable import Variable, add_to, as_array
from .recording import Application, Backward, Call, Loss, Recording, Source

__all__ = ["RESERVED", "Program", "accumulate", "identifier", "returned"]


def accumulate(total: np.ndarray | None, grad: Any, dtype: np.dtype) -> np.ndarray:
    """``Variable.add_grad``'s rule on a replay's gradient slot, without its checks: the same conversions,
    the first contribution kept by reference, later ones summed with ``add_to`` in the same order."""
    if type(grad) is not ndarray:
        grad = np.asarray(grad)
    if grad.dtype is not dtype:
        grad = grad.astype(dtype)
    return grad if total is None else add_to(total, grad, owned=False)


def returned(value: np.ndarray, grad: np.ndarray | None) -> Variable:
    """An op output the step returns: a new Variable holding the gradient its backward gave it."""
    variable = Variable(value)
    if grad is not None:
        variable.add_grad(grad)
    return variable


def release(contexts: tuple[Context, ...]) -> None:
    """Drop what the replay's Contexts saved: no array of the batch outlives the call."""
    for ctx in contexts:
        ctx.saved = ()
        ctx.__dict__.clear()


def _observe(kind: str, function: Callable[..., Any], owner: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    observer = events.observer
    if observer is None:
        return function(*args, **kwargs)
    return observer.run(kind, function, owner, args, kwargs, True)


_NOT_WORD = re.compile(r"\W+")


def identifier(text: str, fallback: str) -> str:
    """``text`` as a Python identifier (``affine_0.W`` -> ``affine_0_W``)."""
    name = _NOT_WORD.sub("_", text).strip("_").lower() or fallback
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"{fallback}_{name}"
    return name


class Program:
    """A record's replay: ``source`` (for reading), ``function`` (bound to the recorded objects),
    ``bind(resolve)`` (the same program over other objects) and ``observed()`` (with the hook)."""

    def __init__(self, recording: Recording, template: Any, argument_names: list[str]) -> None:
        self.recording = recording
        self.graph = recording.graph
        self.template = template
        self.argument_names = argument_names
        #: global name -> the recorded object it stands for (resolved again by bind)
        self.objects: dict[str, Any] = {}
        #: global name -> (function, global name of the object it is bound to)
        self.methods: dict[str, tuple[Callable[..., Any], str]] = {}
        #: per application: its Context's global name, and its op's
        self.contexts: list[str] = []
        self.context_ops: list[str] = []
        #: the Contexts a replay releases before it returns (all but those a later loss() pairs with)
        self.released: list[str] = []
        #: generated line -> (application, stage), for naming an op in a replay's errors
        self.lines: dict[int, tuple[int, str]] = {}
        self.filename = f"<tapegrad replay {id(self):x}>"
        self.source, observed = _Writer(self).write()
        self.code = self._compile(self.source, self.filename)
        self._observed_source = observed
        self._observed: Any = None
        self.function = self.bind(lambda obj: obj)

    def _compile(self, source: str, filename: str) -> Any:
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        return compile(source, filename, "exec")

    def bind(self, resolve: Callable[[Any], Any], observed: bool = False) -> Callable[..., Any]:
        """The program as a function over ``resolve(obj)`` for every recorded object, with fresh Contexts."""
        namespace: dict[str, Any] = dict(_HELPERS)
        for name, obj in self.objects.items():
            namespace[name] = resolve(obj)
        for name, (function, owner) in self.methods.items():
            namespace[name] = MethodType(function, namespace[owner])
        for name, op, app in zip(self.contexts, self.context_ops, self.recording.apps):
            namespace[name] = Context(namespace[op], (), app.needs_input_grad)
        namespace["released"] = tuple(namespace[name] for name in self.released)
        if observed:
            if self._observed is None:
                self._observed = self._compile(self._observed_source, self.filename + " observed")
            code = self._observed
        else:
            code = self.code
        exec(code, namespace)
        return namespace["replay"]  # type: ignore[no-any-return]

    def observed(self) -> Callable[..., Any]:
        """The program with every op call and replayable call going through ``events.observer``."""
        return self.bind(lambda obj: obj, observed=True)

    def error(self, exc: BaseException) -> BaseException:
        """The error a replay raised, naming the application the way eager does."""
        app, stage = None, "replay"
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename.startswith(self.filename):
                app, stage = self.lines.get(tb.tb_lineno, (None, "replay"))
            tb = tb.tb_next
        if app is None:
            return exc  # raised by a replayed call (an optimizer's step), as eagerly
        application = self.recording.apps[app]
        op = application.op
        if stage == "backward":
            return backward_error(op, exc)
        if isinstance(exc, TapegradError) or not isinstance(exc, (*AUTHOR_ERRORS, *FLOAT_SIGNALS)):
            return exc  # the op's own error, or one eager lets through too
        return op.author_error(stage, exc, [_Shape(s) for s in application.input_shapes])


_HELPERS = {
    "ndarray": ndarray,
    "Variable": Variable,
    "as_array": as_array,
    "plain_array": plain_array,
    "isfinite": math.isfinite,
    "accumulate": accumulate,
    "zeros_like": np.zeros_like,
    "nonfinite_loss": lambda op, value: _raise(nonfinite_loss(op, value)),
    "returned": returned,
    "filled": lambda empty, pairs: _filled(empty, pairs),
    "release": release,
    "observe": _observe,
}


#: Names a replay program uses for itself: never an argument's or an object's.
RESERVED = frozenset(_HELPERS) | {"replay", "released", "r"} | frozenset(dir(builtins))


def _raise(error: BaseException) -> None:
    raise error


def _filled(empty: Any, pairs: dict[Any, Any]) -> Any:
    """A mapping of ``empty``'s type (an OrderedDict, a defaultdict and its factory) holding ``pairs``."""
    made = copy.copy(empty)
    made.update(pairs)
    return made


class _Shape:
    """An input as error messages describe it (by its shape)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


class _Writer:
    """Writes a Program's source twice over: plain, and observed (every op call and replayable call
    through the hook); names its globals in ``program``."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.recording = program.recording
        self.apps = self.recording.apps
        self.lines: list[str] = []
        self.calls: list[tuple[str, str]] = []  # per call marker: (plain, observed)
        self.used: set[str] = set(RESERVED) | set(program.argument_names)
        self.names: dict[Any, str] = {}  # id(object), or (id(function), id(owner)) -> its global name
        self.out_names: list[list[str]] = []
        self.returned_outputs: set[tuple[int, int]] = set()
        self.returned_calls: set[int] = set()
        self._find_returned(program.template)
        self.slotted: set[tuple[int, int]] = set()
        self.call_count = 0

    # -- names -----------------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        name, n = base, 2
        while name in self.used:
            name = f"{base}_{n}"
            n += 1
        self.used.add(name)
        return name

    def global_(self, obj: Any, base: str) -> str:
        """The global name standing for ``obj`` (bound again by ``Program.bind``)."""
        if id(obj) not in self.names:
            name = self.unique(base)
            self.names[id(obj)] = name
            self.program.objects[name] = obj
        return self.names[id(obj)]

    def method(self, owner: Any, owner_base: str, function: Callable[..., Any], suffix: str) -> str:
        owner_name = self.global_(owner, owner_base)
        key = (id(function), id(owner))
        if key not in self.names:
            name = self.unique(f"{owner_name}_{suffix}")
            self.names[key] = name
            self.program.methods[name] = (function, owner_name)
        return self.names[key]

    def constant(self, value: Any, base: str) -> str:
        """``value`` in the program: itself when its repr reads back exactly, else a global."""
        return repr(value) if _literal(value) else self.global_(value, base)

    def op_name(self, app: Application) -> str:
        return self.global_(app.op, identifier(app.op.name or type(app.op).__name__, "op"))

    def dtype(self, dtype: np.dtype) -> str:
        return self.global_(np.dtype(dtype), identifier(str(np.dtype(dtype)), "dtype"))

    def emit(self, line: str, depth: int = 2, app: int | None = None, stage: str = "") -> None:
        self.lines.append("    " * depth + line)
        if app is not None:
            self.program.lines[len(self.lines) + 3] = (app, stage)  # (the def, inside and try lines come first)

    def call(self, kind: str, function: str, owner: str, args: list[str]) -> str:
        """A call of an op's code or of a replayable call: a marker standing for it plain or observed."""
        packed = "(" + "".join(f"{a}, " for a in args) + ")"
        self.calls.append((f"{function}({', '.join(args)})", f"observe({kind!r}, {function}, {owner}, {packed}, {{}})"))
        return f"\x00{len(self.calls) - 1}\x00"

    # -- the program ------------------------------------------------------------------------------
    def write(self) -> tuple[str, str]:
        """(the plain source, the observed source)."""
        program = self.program
        self.plan_slots()
        for i, app in enumerate(self.apps):
            op = self.op_name(app)
            count = sum(1 for a in self.apps[:i] if a.op is app.op)
            base = op if count == 0 else f"{op}_{count + 1}"
            program.contexts.append(self.unique(f"{base}_ctx"))
            program.context_ops.append(op)
            outs = [f"{base}_out"] if app.outputs is None else [f"{base}_out{k}" for k in range(app.outputs)]
            self.out_names.append([self.unique(o) for o in outs])
        published = self.published_contexts()
        program.released = [c for i, c in enumerate(program.contexts) if i not in published]
        for kind, event in self.recording.events:
            getattr(self, f"write_{kind}")(event)
        for i in sorted(published):  # eval-mode losses the step did not consume: a later loss() pairs with these
            tape = self.global_(program.graph.tape, "tape")
            self.emit(f"{tape}.latest_eval[{self.op_name(self.apps[i])}] = {program.contexts[i]}")
        for producer, index in sorted(self.returned_outputs):  # (one Variable each, however often it is returned)
            out = self.out_names[producer][index]
            made = f"returned({out}, d_{out})" if (producer, index) in self.slotted else f"Variable({out})"
            self.emit(f"{out}_variable = {made}")
        self.emit(f"return {self.value(program.template)}")
        arguments = ", ".join(program.argument_names)
        body = "\n".join(self.lines)
        tape = self.global_(program.graph.tape, "tape")
        # (while it runs, ops an op's code applies are part of that op, as eagerly: see Tape.record)
        source = (
            f"def replay({arguments}):\n    {tape}.inside += 1\n    try:\n{body}\n"
            f"    finally:\n        {tape}.inside -= 1\n        release(released)\n"
        )
        parts = source.split("\x00")
        plain = "".join(self.calls[int(p)][0] if k % 2 else p for k, p in enumerate(parts))
        observed = "".join(self.calls[int(p)][1] if k % 2 else p for k, p in enumerate(parts))
        return plain, observed

    def published_contexts(self) -> set[int]:
        latest: dict[int, int] = {}
        for i, app in enumerate(self.apps):
            if app.op.is_loss and not app.train:
                latest[id(app.op)] = i
        return set(latest.values())

    # -- values -------------------------------------------------------------------------------------
    def array(self, source: Source) -> str:
        if source.kind == "argument":
            name = self.program.argument_names[source.index]
            return f"{name}.value" if self.recording.leaf_kinds[source.index][0] else name
        if source.kind == "output":
            return self.out_names[source.app][source.index]
        if source.kind in ("variable", "constant"):
            return f"{self.global_(source.obj, identifier(source.obj.name or source.kind, source.kind))}.value"
        return self.global_(source.obj, "number")

    def value(self, template: Any) -> str:
        if template is None:
            return "None"
        kind = template[0]
        if kind == "loss":
            return f"loss{template[1]}"
        if kind == "call":
            return f"result{template[1]}"
        if kind == "output":
            _, app, index = template
            return f"{self.out_names[app][index]}_variable"
        if kind is Mapping:
            _, empty, items = template
            pairs = "{" + ", ".join(f"{self.constant(k, 'key')}: {self.value(v)}" for k, v in items) + "}"
            if type(empty) is dict:
                return pairs
            return f"filled({self.global_(empty, 'empty_' + identifier(type(empty).__name__, 'mapping'))}, {pairs})"
        parts = [self.value(t) for t in template[1]]
        if kind is tuple:
            return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        if kind is list:
            return "[" + ", ".join(parts) + "]"
        made = self.global_(kind, identifier(kind.__name__, "type"))
        if hasattr(kind, "_make"):  # a namedtuple
            return f"{made}._make([" + ", ".join(parts) + "])"
        return f"{made}([" + ", ".join(parts) + "])"

    def _find_returned(self, template: Any) -> None:
        if template is None:
            return
        if template[0] == "output":
            self.returned_outputs.add((template[1], template[2]))
        elif template[0] is Mapping:
            for _, value in template[2]:
                self._find_returned(value)
        elif template[0] == "call":
            self.returned_calls.add(template[1])
        elif template[0] != "loss":
            for value in template[1]:
                self._find_returned(value)

    # -- forward ----------------------------------------------------------------------------------
    def write_apply(self, i: int) -> None:
        app = self.apps[i]
        args = []
        for source, convert in zip(app.sources, app.converts):
            expr = self.array(source)
            if source.kind == "argument" and self.recording.leaf_types[source.index] is not None:
                expr = f"plain_array({self.op_name(app)}, {expr}, 'input')"
            args.append(expr if convert is None else f"{expr}.astype({self.dtype(convert)})")
        op = self.op_name(app)
        forward = self.method(app.op, op, type(app.op).forward.__wrapped__, "forward")  # type: ignore[attr-defined]
        ctx = self.program.contexts[i]
        outs = self.out_names[i]
        target = ", ".join(outs) + ("," if app.outputs == 1 else "")
        call = self.call("forward", forward, op, [ctx, *args])
        self.emit(f"{target} = {call}  # {type(app.op).__name__}", app=i, stage="forward")
        for name, shape in zip(outs, app.output_shapes):
            if shape == ():  # numpy returns scalars for shape (): the forward wrapper made them arrays
                self.emit(f"if type({name}) is not ndarray: {name} = as_array({name})", app=i, stage="forward")
        for k, name in enumerate(outs):
            if (i, k) in self.slotted:
                self.emit(f"d_{name} = None")

    def write_loss(self, event: Loss) -> None:
        app = self.apps[event.app]
        op = self.op_name(app)
        loss = self.method(app.op, op, type(app.op).loss.__wrapped__, "loss")  # type: ignore[attr-defined]
        target = self.array(event.target)
        if event.target.kind == "argument" and self.recording.leaf_types[event.target.index] is not None:
            target = f"plain_array({op}, {target}, 'target')"
        call = self.call("loss", loss, op, [self.program.contexts[event.app], target])
        self.emit(f"loss{event.index} = float({call})  # {type(app.op).__name__}", app=event.app, stage="loss")
        self.emit(f"if not isfinite(loss{event.index}): nonfinite_loss({op}, loss{event.index})")

    def write_call(self, call: Call) -> None:
        index = self.call_count
        self.call_count += 1
        args = [self.constant(a, _base(a)) for a in call.args]
        args += [f"{k}={self.constant(v, _base(v))}" for k, v in call.kwargs.items()]
        owner_base = _base(call.owner)
        owner = self.global_(call.owner, owner_base)
        wrapper = getattr(type(call.owner), call.function.__name__, None)
        if getattr(wrapper, "__wrapped__", None) is call.function:  # a method of the owner's class
            function = self.method(call.owner, owner_base, call.function, call.function.__name__)
            statement = self.call("call", function, owner, args)
        else:  # a function of its first argument (clip_grad_norm(variables, ...))
            function = self.global_(call.function, identifier(call.function.__name__, "function"))
            statement = self.call("call", function, owner, [owner, *args])
        self.emit(f"result{index} = {statement}" if index in self.returned_calls else statement)

    # -- backward ----------------------------------------------------------------------------------
    def plan_slots(self) -> None:
        """Which outputs get a gradient slot: those a route can reach, those seeded, those returned."""
        self.slotted = set(self.returned_outputs)
        self.contributions: dict[tuple[int, int], int] = {}  # how many additions reach each slot, in all passes
        for kind, event in self.recording.events:
            if kind != "backward":
                continue
            for output, _, _ in event.seeds:
                if output.kind == "output":
                    self.slotted.add((output.app, output.index))
                    self.contributions[(output.app, output.index)] = 2  # (never the only one: seeds accumulate)
            for i in event.apps:
                for source in self.apps[i].sources:
                    target = self.route(event, i, source)
                    if target is not None and target[0] == "slot":
                        self.slotted.add(target[1])
                        self.contributions[target[1]] = self.contributions.get(target[1], 0) + 1

    def route(self, event: Backward, i: int, source: Source) -> tuple[str, Any] | None:
        """Where the gradient of an input of application i goes in ``event``: an output's gradient slot,
        or a live Variable's ``add_grad``; None when nothing could see it."""
        if source.kind == "output" and source.live:
            producer = self.apps[source.app]
            if producer.output_dtypes[source.index].kind != "f":
                return None
            walked = source.app in event.apps and not producer.op.is_loss
            if walked or (source.app, source.index) in self.returned_outputs:
                return ("slot", (source.app, source.index))
            return None
        if source.kind == "argument" and source.live and self.recording.leaf_kinds[source.index][1]:
            return ("add", f"{self.program.argument_names[source.index]}.add_grad")
        if source.kind == "variable" and source.live:
            variable = self.global_(source.obj, identifier(source.obj.name or "variable", "variable"))
            return ("add", f"{variable}.add_grad")
        return None

    def write_backward(self, event: Backward) -> None:
        self.emit("# backward()")
        for output, given, dtype in event.seeds:
            if output.kind != "output":
                continue
            slot = f"d_{self.out_names[output.app][output.index]}"
            self.emit(f"{slot} = accumulate({slot}, {self.array(given)}, {self.dtype(dtype)})")
        loss_grad = self.constant(event.loss_grad, "loss_grad")
        for i in reversed(event.apps):
            app = self.apps[i]
            op = self.op_name(app)
            backward = self.method(app.op, op, type(app.op).backward, "backward")
            ctx = self.program.contexts[i]
            if app.op.is_loss:
                if i not in event.losses:
                    continue  # a loss forward whose loss() was never computed contributes nothing
                call = self.call("backward", backward, op, [ctx, loss_grad])
                self.emit(f"r = {call}  # {type(app.op).__name__}", app=i, stage="backward")
                self.write_routes(event, i, 2)
                self.write_done(i)
                continue
            slots = [f"d_{name}" for k, name in enumerate(self.out_names[i]) if (i, k) in self.slotted]
            if not slots:
                continue  # no route reaches its outputs: nothing flows into its backward
            self.emit(f"if {' or '.join(f'{s} is not None' for s in slots)}:")
            if app.outputs is None:
                grad = slots[0]
            else:
                grad = "(" + "".join(
                    f"d_{name} if d_{name} is not None else zeros_like({name}), " if (i, k) in self.slotted
                    else f"zeros_like({name}), "
                    for k, name in enumerate(self.out_names[i])
                ) + ")"
            call = self.call("backward", backward, op, [ctx, grad])
            self.emit(f"r = {call}  # {type(app.op).__name__}", 3, app=i, stage="backward")
            self.write_routes(event, i, 3)
            self.write_done(i)

    def write_done(self, i: int) -> None:
        """Application i's backward is done: what it saved, its outputs and their gradients go now, not when
        the replay returns (a returned output stays)."""
        names = []
        for k, out in enumerate(self.out_names[i]):
            if (i, k) not in self.returned_outputs:
                names += [out, f"d_{out}"] if (i, k) in self.slotted else [out]
        dropped = f"; {' = '.join(names)} = None" if names else ""
        self.emit(f"{self.program.contexts[i]}.saved = (){dropped}")

    def write_routes(self, event: Backward, i: int, depth: int) -> None:
        """Add what application i's backward returned (``r``) where each input's gradient goes."""
        app = self.apps[i]
        routes = [self.route(event, i, source) for source in app.sources]
        if not any(routes):
            return
        if len(app.sources) == 1:
            self.emit("if type(r) is tuple: r = r[0]", depth, app=i, stage="backward")
            self.emit("if r is not None:", depth)
            self.write_add(routes[0], "r", i, depth + 1)
            return
        self.emit("if r is not None:", depth)
        for index, target in enumerate(routes):
            if target is None:
                continue
            self.emit(f"if r[{index}] is not None:", depth + 1, app=i, stage="backward")
            self.write_add(target, f"r[{index}]", i, depth + 2)

    def write_add(self, target: Any, grad: str, i: int, depth: int) -> None:
        kind, where = target
        if kind == "add":
            self.emit(f"{where}({grad})", depth, app=i, stage="backward")
            return
        app, k = where
        slot = f"d_{self.out_names[app][k]}"
        dtype = self.dtype(self.apps[app].output_dtypes[k])
        if self.contributions[(app, k)] == 1:  # the only one: kept as it is when it needs no conversion (speed)
            kept = f"{grad} if type({grad}) is ndarray and {grad}.dtype is {dtype}"
            self.emit(f"{slot} = {kept} else accumulate(None, {grad}, {dtype})", depth, app=i, stage="backward")
        else:
            self.emit(f"{slot} = accumulate({slot}, {grad}, {dtype})", depth, app=i, stage="backward")


def _literal(value: Any) -> bool:
    """Whether ``value`` is written into the program as itself (its repr reads back exactly)."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) in (int, bool, str) or value is None


def _base(obj: Any) -> str:
    """The base of a global's name for an object a replayable call uses."""
    if isinstance(obj, (list, tuple)):
        return "variables"
    if isinstance(obj, Variable):
        return identifier(obj.name or "variable", "variable")
    graph_name = getattr(obj, "parameter", None) is not None and getattr(obj, "tape", None) is not None
    if graph_name:
        return "graph"
    return identifier(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", type(obj).__name__), "value")
