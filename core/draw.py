"""Drawings of a pass: ``graph.to_dot()``, ``step.to_dot()`` and ``tg.draw(graph_or_step, path)``.

A drawing has one node per op application (its name, class and output shapes), one per input
and parameter (name and shape; after ``backward``, the norm of its gradient), a loss application
whose loss was computed drawn as the loss (its target one more input), with edges along the data
flow: input or parameter -> application -> application ... -> loss. Parameters are the op's
``parameters()``, drawn as inputs of each application of the op.

Drawings read plain data: the tape's pass in flight, or the ``Pass`` the latest backward left
(``tape.py``: the ops, how they were connected, shapes, and weak references to the leaf Variables,
never an activation); a captured step's record (``from_recording``) the same way, so the two
drawings of one step are the same. Gradient norms are those of the Variables as they are when drawn.

``to_dot`` needs nothing; rendering to SVG or PNG uses the ``graphviz`` package (the ``draw``
extra) and Graphviz's ``dot`` program.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArgumentError, GraphError, InputTypeError, MissingDependencyError
from .tape import Leaf, Pass
from .variable import Variable

__all__ = ["FORMATS", "draw", "from_recording", "graph_dot", "scaled_norm", "step_dot", "to_dot"]

#: What ``draw`` writes, by the path's extension: DOT text itself, or what ``dot`` renders.
FORMATS = {"dot": None, "gv": None, "svg": "svg", "png": "png", "pdf": "pdf"}

INSTALL = (
    "pip install 'tapegrad[draw]' (the graphviz package), and Graphviz itself for its dot program "
    "(apt-get install graphviz, brew install graphviz, conda install graphviz, ...)"
)


def from_recording(recording: Any, arguments: Sequence[Any] = ()) -> Pass:
    """The ``Pass`` of a captured step's record: every application it made, fed as recorded.
    ``arguments`` (per argument of the latest call: the Variable passed, while it lives, or None) show
    the gradients those Variables have now."""
    leaves: list[Leaf] = []
    keys: dict[Any, int] = {}

    def ref(source: Any) -> Any:
        if source.kind == "output":
            return (source.app, source.index)
        if source.kind == "argument":
            key: Any = ("argument", source.index, source.live)
            passed = arguments[source.index] if len(arguments) == len(recording.leaf_shapes) else None
            made = (
                Leaf(passed) if source.live and passed is not None else Leaf(tuple(recording.leaf_shapes[source.index]))
            )
        else:  # a Variable read live, a constant or a number the record keeps
            key, made = ("object", id(source.obj)), Leaf(source.obj)
        if key not in keys:
            keys[key] = len(leaves)
            leaves.append(made)
        return keys[key]

    apps = []
    for app in recording.apps:
        refs = [ref(s) for s in app.sources]
        apps.append((app.op, refs, tuple(tuple(s) for s in app.output_shapes), app.outputs is not None))
    losses, consumed = [], False
    for kind, event in recording.events:
        if kind == "loss":
            losses.append((event.app, ref(event.target)))
        consumed = consumed or kind == "backward"
    return Pass(apps, leaves, losses, consumed)


# -- DOT text ------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def _quote(text: str) -> str:
    """``text`` as a DOT string: any text, NUL, control characters and lone surrogates included, comes out as
    text Graphviz accepts (those as visible escapes)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates as \udXXX
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + _CONTROL.sub(lambda m: f"\\\\x{ord(m.group()):02x}", text) + '"'


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
        variable = value.alive()
        key = id(variable) if variable is not None else id(value)
        if key not in nodes:
            nodes[key] = name = f"x{counts['x']}"
            counts["x"] += 1
            role = "target" if index in targets else "input"
            if value.variable is not None:
                grad = _grad_line(variable, summary.consumed) if variable is not None else ""
                label = f"{value.name or role}\n{_shape(value.shape)}{grad}"
                lines.append(_node(name, label, **STYLE["variable"]))
            else:
                lines.append(_node(name, f"{role}\n{_shape(value.shape)}", **STYLE["array"]))
        return nodes[key]

    def parameter(variable: Variable, short: str) -> str:
        if id(variable) not in nodes:
            nodes[id(variable)] = name = f"p{counts['p']}"
            counts["p"] += 1
            label = f"{variable.name or short}\n{_shape(variable.shape)}{_grad_line(variable, summary.consumed)}"
            lines.append(_node(name, label, **STYLE["parameter"]))
        return nodes[id(variable)]

    def source(ref: Any) -> tuple[str, str]:
        """(node, edge attributes) of where a value comes from."""
        if isinstance(ref, int):
            return leaf(ref), ""
        app, k = ref
        return f"a{app}", f" [label={_quote(f'out {k}')}]" if summary.apps[app][3] else ""

    computed = {app: target for app, target in summary.losses}
    for i, (op, refs, shapes, _multi) in enumerate(summary.apps):
        edges = [source(ref) for ref in refs]
        inputs = {id(summary.leaves[r].alive()) for r in refs if isinstance(r, int)}
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


def graph_dot(graph: Any) -> str:
    """``graph.to_dot()``: the pass on the tape, else the last one a backward consumed."""
    tape = graph.tape
    if tape.entries:
        summary, state = tape.in_flight(), "in flight, before backward"
    elif tape.last_pass is not None:
        summary, state = tape.last_pass, "after backward"
    else:
        raise GraphError(
            f"Graph {graph.name!r} has no pass to draw: run a forward pass in train mode (graph.train()) first; "
            "a captured step draws its record with step.to_dot()"
        )
    return to_dot(summary, f"Graph {graph.name!r}: {len(summary.apps)} applications ({state})")


def step_dot(step: Any) -> str:
    """``step.to_dot()``: the record the step's latest call used."""
    record = step.last_record
    if record is None:
        raise GraphError(f"{step!r} has no record to draw yet: call it once first")
    summary = from_recording(record.recording, step.last_arguments)
    name = getattr(step.fn, "__qualname__", "step").rsplit("<locals>.", 1)[-1]
    return to_dot(
        summary, f"captured step {name} of Graph {step.graph.name!r}: {len(summary.apps)} applications (its record)"
    )


def dot_text(what: Any) -> str:
    """The DOT text of a Graph, a captured step, or a model with a ``.graph`` (each draws itself: ``to_dot``)."""
    drawable = what if hasattr(what, "to_dot") else getattr(what, "graph", None)
    to_dot = getattr(drawable, "to_dot", None)
    if not callable(to_dot):
        raise InputTypeError(
            f"tapegrad.draw: expected a Graph, a captured step or a model with a .graph, got {type(what).__name__}"
        )
    return str(to_dot())


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
