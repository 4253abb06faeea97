"""Drawings of a pass: ``graph.to_dot()``, ``step.to_dot()`` and ``tg.draw(graph_or_step, path)``.

A drawing has one node per op application (its name, class and output shapes), one per input
and parameter (name and shape; after ``backward``, the norm of its gradient), and one per loss
computed, with edges along the data flow: input or parameter -> application -> application ...
-> loss. Parameters are the op's ``parameters()``, drawn as inputs of each application of the op.

The tape is cleared by ``backward``, so it keeps the pass it consumed until the next forward,
and then, or when it is drawn, reduces it to a ``Pass``: a light summary (``summarize``) holding
the ops, the leaf Variables (to read their gradients later) and the shapes of everything else,
never the activations (see ``Tape``). A captured step draws its record (``from_recording``) the
same way, so the two drawings of one step are the same.

``to_dot`` needs nothing; rendering to SVG or PNG uses the ``graphviz`` package (the ``draw``
extra) and Graphviz's ``dot`` program.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy import ndarray

from .errors import ArgumentError, GraphError, InputTypeError, MissingDependencyError
from .variable import Variable

if TYPE_CHECKING:
    from .capture import CapturedStep
    from .graph import Graph
    from .operation import Operation
    from .replay import Recording
    from .tape import Context

    # one application: (op, refs of its inputs, its output shapes, whether its outputs are a tuple)
    App = tuple[Operation, Sequence[Any], tuple[tuple[int, ...], ...], bool]

__all__ = ["Pass", "summarize", "from_recording", "to_dot", "draw", "FORMATS"]

#: What ``draw`` writes, by the path's extension: DOT text itself, or what ``dot`` renders.
FORMATS = {"dot": None, "gv": None, "svg": "svg", "png": "png", "pdf": "pdf"}

INSTALL = (
    "pip install 'tapegrad[draw]' (the graphviz package), and Graphviz itself for its dot program "
    "(apt-get install graphviz, brew install graphviz, conda install graphviz, ...)"
)


class Array:
    """A leaf that is an array, not a Variable: only its shape is kept (no gradient to show)."""

    __slots__ = ("shape",)

    def __init__(self, value: Any) -> None:
        self.shape = value.shape if type(value) is ndarray else tuple(np.shape(value))


# A reference to a value of a pass: an int is a leaf's index, a pair (i, k) output k of application i.
Ref = Any


class Pass:
    """What one pass did, for drawing.

    ``apps``: per application, (op, refs of its inputs, its output shapes, whether its outputs are
    a tuple); ``leaves``: the Variables (kept, to read their gradients) and ``Array``s the pass
    started from; ``losses``: per loss computed, (application, ref of its target); ``consumed``:
    backward ran on it, so gradients are shown.
    """

    __slots__ = ("apps", "consumed", "leaves", "losses")

    def __init__(
        self,
        apps: list[App],
        leaves: list[Any],
        losses: list[tuple[int, Ref]],
        consumed: bool,
    ) -> None:
        self.apps = apps
        self.leaves = leaves
        self.losses = losses
        self.consumed = consumed


def summarize(entries: Sequence[Context], losses: Sequence[Context], targets: Sequence[Any], consumed: bool = True) -> Pass:
    """The ``Pass`` of a tape's ``entries`` and computed ``losses`` (with their ``targets``):
    intermediate outputs become references (their values go with the Contexts), leaf Variables
    are kept and other leaves reduced to their shapes."""
    where: dict[int, Ref] = {}  # id(value) -> its ref (every value is alive while the tape holds it)
    leaves: list[Any] = []
    apps: list[App] = []
    for i, ctx in enumerate(entries):
        refs = []
        for x in ctx.inputs:
            ref = where.get(id(x))
            if ref is None:
                ref = where[id(x)] = len(leaves)
                leaves.append(x if isinstance(x, Variable) else Array(x))
            refs.append(ref)
        outputs = ctx.outputs
        if type(outputs) is Variable:  # the common case first
            where[id(outputs)] = (i, 0)
            apps.append((ctx.op, refs, (outputs.value.shape,), False))
        else:
            for k, o in enumerate(outputs):
                where[id(o)] = (i, k)
            apps.append((ctx.op, refs, tuple(o.value.shape for o in outputs), True))
    drawn = []
    for ctx, target in zip(losses, targets):
        ref = where.get(id(target))
        if ref is None:
            ref = where[id(target)] = len(leaves)
            leaves.append(target if isinstance(target, Variable) else Array(target))
        drawn.append((_index(entries, ctx), ref))
    return Pass(apps, leaves, drawn, consumed)


def _index(entries: Sequence[Any], ctx: Any) -> int:
    for i in range(len(entries) - 1, -1, -1):  # (Contexts compare by identity; a loss is near the end)
        if entries[i] is ctx:
            return i
    raise GraphError(f"{ctx.op.label}: a loss of an application that is not on the tape")


def from_recording(recording: Recording, arguments: Sequence[Any] = ()) -> Pass:
    """The ``Pass`` of a captured step's record: every application it made, fed as recorded.
    ``arguments`` (the array and Variable arguments of the latest call) show the gradients the
    Variables passed in have now, rather than those of the call that made the record."""
    leaves: list[Any] = []
    keys: dict[Any, int] = {}

    def ref(source: Any) -> Ref:
        if source.kind == "output":
            return (source.app, source.index)
        if source.kind == "input":
            key: Any = ("input", source.index)
            leaf = recording.leaves[source.index]
            if len(arguments) == len(recording.leaves) and isinstance(arguments[source.index], Variable):
                leaf = arguments[source.index]
            if not source.live and isinstance(leaf, Variable):
                leaf = Array(leaf.value)  # the argument's array, wrapped by a Variable made inside the step
        else:  # a Variable read live, or a constant the record froze
            key, leaf = ("object", id(source.obj)), source.obj
        if key not in keys:
            keys[key] = len(leaves)
            leaves.append(leaf if isinstance(leaf, (Variable, Array)) else Array(leaf))
        return keys[key]

    apps: list[App] = []
    for app in recording.apps:
        refs = tuple(ref(s) for s in app.sources)
        apps.append((app.op, refs, tuple(tuple(s) for s in app.output_shapes), app.outputs is not None))
    losses, consumed = [], False
    for kind, event in recording.events:
        if kind == "loss":
            app_index, source, _ = event
            losses.append((app_index, ref(source)))
        consumed = consumed or kind == "backward"
    return Pass(apps, leaves, losses, consumed)


# -- DOT text ------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape: Iterable[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(tuple(shape)) == 1 else "") + ")"


def _grad_line(variable: Variable, consumed: bool) -> str:
    """The leaf's gradient norm, once backward ran and something arrived."""
    grad = variable.peek_grad() if consumed and variable.value.dtype.kind == "f" else None
    if grad is None:
        return ""
    return f"\n|grad| = {scaled_norm(np.asarray(grad, dtype=np.float64)):.3g}"  # (NaN and infinity show as such)


def scaled_norm(values: np.ndarray) -> float:
    """The 2-norm of ``values``, computed on them divided by their largest magnitude: their squares
    may overflow where the norm does not. NaN or infinity give themselves; no values give 0.
    (Drawings show gradient norms with it; gradcheck's fast mode scales its tolerance with it.)"""
    with np.errstate(all="ignore"):
        top = float(np.max(np.abs(values))) if values.size else 0.0
        if not 0.0 < top < math.inf:
            return top
        return top * float(np.linalg.norm(values / top))


def _node(name: str, label: str, **attrs: str) -> str:
    extra = "".join(f", {k}={v}" for k, v in attrs.items())
    return f"  {name} [label={_quote(label)}{extra}];"


STYLE = {
    "app": {"shape": "box", "style": '"rounded,filled"', "fillcolor": '"#dbe9f6"'},
    "parameter": {"shape": "box", "style": "filled", "fillcolor": '"#fff2c2"'},
    "variable": {"shape": "ellipse", "style": "filled", "fillcolor": '"#e4f4de"'},
    "array": {"shape": "ellipse", "style": "dashed"},
    "loss": {"shape": "doubleoctagon", "style": "filled", "fillcolor": '"#f8d7d3"'},
}


def to_dot(summary: Pass, title: str) -> str:
    """The DOT text of ``summary``: nodes ``x<k>`` for inputs (a loss's target included), ``p<k>``
    for parameters and ``a<i>`` for applications, in the order the pass met them. An application
    whose loss was computed is drawn as a loss, its target feeding it (edge label ``target``)."""
    lines = [
        "digraph tape {",
        f"  graph [label={_quote(title)}, labelloc=t, fontname=Helvetica, fontsize=12, rankdir=TB];",
        "  node [fontname=Helvetica, fontsize=10];",
        "  edge [fontname=Helvetica, fontsize=9];",
    ]
    nodes: dict[int, str] = {}  # id(leaf) -> node name (a parameter fed as an input is one node)
    counts = {"x": 0, "p": 0}
    uses: dict[int, int] = {}
    for op, *_ in summary.apps:
        uses[id(op)] = uses.get(id(op), 0) + 1
    seen: dict[int, int] = {}
    targets = {ref for _, ref in summary.losses if isinstance(ref, int)}

    def leaf(index: int) -> str:
        value = summary.leaves[index]
        if id(value) not in nodes:
            nodes[id(value)] = name = f"x{counts['x']}"
            counts["x"] += 1
            role = "target" if index in targets else "input"
            if isinstance(value, Variable):
                label = f"{value.name or role}\n{_shape(value.shape)}{_grad_line(value, summary.consumed)}"
                lines.append(_node(name, label, **STYLE["variable"]))
            else:
                lines.append(_node(name, f"{role}\n{_shape(value.shape)}", **STYLE["array"]))
        return nodes[id(value)]

    def parameter(variable: Variable, short: str) -> str:
        if id(variable) not in nodes:
            nodes[id(variable)] = name = f"p{counts['p']}"
            counts["p"] += 1
            label = f"{variable.name or short}\n{_shape(variable.shape)}{_grad_line(variable, summary.consumed)}"
            lines.append(_node(name, label, **STYLE["parameter"]))
        return nodes[id(variable)]

    def source(ref: Ref) -> tuple[str, str]:
        """(node, edge attributes) of where a value comes from."""
        if isinstance(ref, int):
            return leaf(ref), ""
        app, k = ref
        return f"a{app}", f" [label={_quote(f'out {k}')}]" if summary.apps[app][3] else ""

    computed = {app: target for app, target in summary.losses}
    for i, (op, refs, shapes, _multi) in enumerate(summary.apps):
        edges = [source(ref) for ref in refs]
        inputs = {id(summary.leaves[r]) for r in refs if isinstance(r, int)}
        for short, variable in op.parameters().items():
            if id(variable) not in inputs:  # (a parameter passed as an input is drawn once, as an input)
                edges.append((parameter(variable, short), ""))
        seen[id(op)] = seen.get(id(op), 0) + 1
        call = f" #{seen[id(op)]}" if uses[id(op)] > 1 else ""
        outs = ", ".join(_shape(s) for s in shapes)
        label = f"{op.name or type(op).__name__}{call}\n{type(op).__name__}\n-> {outs}"
        if i in computed:  # its loss(target) was computed: the target is one more input
            edges.append((source(computed[i])[0], f" [label={_quote('target')}]"))
            lines.append(_node(f"a{i}", label + "\n-> loss", **STYLE["loss"]))
        else:
            lines.append(_node(f"a{i}", label, **STYLE["app"]))
        lines.extend(f"  {tail} -> a{i}{attrs};" for tail, attrs in edges)
    lines.append("}")
    return "\n".join(lines) + "\n"


def graph_dot(graph: Graph) -> str:
    """``graph.to_dot()``: the pass on the tape, else the last one a backward consumed."""
    tape = graph.tape
    tape.release_pass()  # (a consumed pass is drawn from its light summary)
    if tape.entries:
        summary = summarize(tape.entries, tape.losses, tape.targets, consumed=False)
        state = "in flight, before backward"
    elif tape.last_pass is not None:
        summary, state = tape.last_pass, "after backward"
    else:
        raise GraphError(
            f"Graph {graph.name!r} has no pass to draw: run a forward pass in train mode (graph.train()) first; "
            "a captured step draws its record with step.to_dot()"
        )
    return to_dot(summary, f"Graph {graph.name!r}: {len(summary.apps)} applications ({state})")


def step_dot(step: CapturedStep) -> str:
    """``step.to_dot()``: the record the step's latest call used."""
    record = step.last_record
    if record is None:
        raise GraphError(f"{step!r} has no record to draw yet: call it once first")
    summary = from_recording(record.recording, step.last_arguments)
    name = getattr(step.fn, "__qualname__", "step").rsplit("<locals>.", 1)[-1]
    return to_dot(summary, f"captured step {name} of Graph {step.graph.name!r}: {len(summary.apps)} applications (its record)")


def dot_text(what: Any) -> str:
    """The DOT text of a Graph, a captured step, or a model with a ``.graph``."""
    from .capture import CapturedStep
    from .graph import Graph

    if isinstance(what, CapturedStep):
        return step_dot(what)
    graph = what if isinstance(what, Graph) else getattr(what, "graph", None)
    if isinstance(graph, Graph):
        return graph_dot(graph)
    raise InputTypeError(f"tapegrad.draw: expected a Graph, a captured step or a model with a .graph, got {type(what).__name__}")


def draw(what: Any, path: str | Path) -> Path:
    """Draw the last pass of a Graph (or model), or a captured step's record, to ``path``.

    The format follows the extension: ``.dot``/``.gv`` write the DOT text; ``.svg``, ``.png`` and
    ``.pdf`` write the DOT text beside it (same name, ``.dot``) and render it with Graphviz. When
    the ``graphviz`` package or the ``dot`` program is missing, that raises
    ``MissingDependencyError`` saying what to install and where the DOT text went. Returns the
    path written.
    """
    target = Path(path)
    fmt = target.suffix[1:].lower()
    if fmt not in FORMATS:
        raise ArgumentError(
            f"tapegrad.draw: cannot draw to {str(path)!r}: unsupported format {fmt or '(no extension)'!r} "
            f"(supported: {', '.join('.' + f for f in FORMATS)})"
        )
    text = dot_text(what)
    renderer = FORMATS[fmt]
    dot_path = target if renderer is None else target.with_suffix(".dot")
    target.parent.mkdir(parents=True, exist_ok=True)
    dot_path.write_text(text, encoding="utf-8")
    if renderer is None:
        return target
    target.write_bytes(render(text, renderer, dot_path))
    return target


def render(text: str, fmt: str, dot_path: Path) -> bytes:
    """``text`` rendered by Graphviz as ``fmt`` bytes; ``dot_path`` (where the DOT text is) goes into
    the error when Graphviz is missing."""
    try:
        import graphviz
    except ImportError:
        raise MissingDependencyError(
            f"tapegrad.draw: rendering {fmt.upper()} needs the graphviz package, which is not installed: {INSTALL}. "
            f"The DOT text was written to {str(dot_path)!r}."
        ) from None
    try:
        return bytes(graphviz.Source(text).pipe(format=fmt))
    except graphviz.ExecutableNotFound:
        raise MissingDependencyError(
            f"tapegrad.draw: rendering {fmt.upper()} needs Graphviz's dot program, which is not on the PATH: "
            f"{INSTALL}. The DOT text was written to {str(dot_path)!r}."
        ) from None
    except Exception as exc:  # dot ran and failed (whatever the graphviz package raises for it)
        raise GraphError(
            f"tapegrad.draw: Graphviz's dot failed to render {fmt.upper()} ({type(exc).__name__}: {exc}); "
            f"the DOT text is in {str(dot_path)!r}"
        ) from exc
