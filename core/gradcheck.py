"""Central-difference gradient checking, in float64.

``gradcheck`` compares the analytic gradient of every float input and every parameter
with central differences, elementwise: ``|analytic - numeric| <= atol + rtol * |numeric|``.
``mode="full"`` perturbs one element at a time (two evaluations per element);
``mode="fast"`` compares one random projection per array (two evaluations per array,
PyTorch's fast mode); ``mode="auto"`` uses full for arrays of at most ``FULL_MODE_MAX``
elements and fast above. A fast-mode failure is re-checked in full mode, so a reported
failure always names the worst element.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .arguments import check_number
from .draw import scaled_norm
from .errors import InputTypeError
from .graph import Graph, graph_of
from .operation import Operation
from .variable import Variable

__all__ = ["gradcheck", "numerical_gradient_check", "GradcheckReport", "GradcheckEntry", "FULL_MODE_MAX"]

#: ``mode="auto"`` checks arrays up to this many elements in full mode, larger ones in fast mode.
FULL_MODE_MAX = 512


@dataclass
class GradcheckEntry:
    """The verdict for one input or parameter."""

    name: str
    kind: str  # "input" or "parameter"
    shape: tuple[int, ...]
    mode: str  # "full", "fast", or "fast->full" when a fast failure was re-checked
    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...] | None
    analytic: float
    numeric: float
    atol: float
    rtol: float

    def describe(self) -> str:
        where = f"[{', '.join(map(str, self.worst_index))}]" if self.worst_index is not None else " (projection)"
        return (
            f"{self.name}{where}: analytic {self.analytic:.6g} vs numeric {self.numeric:.6g} "
            f"(abs err {self.max_abs_error:.3g}, rel err {self.max_rel_error:.3g}; "
            f"atol {self.atol:g}, rtol {self.rtol:g}, {self.mode} mode)"
        )


class GradcheckReport:
    """Per-array results of a gradient check; ``bool(report)`` is the verdict."""

    def __init__(self, entries: list[GradcheckEntry]) -> None:
        self.entries = entries

    def __bool__(self) -> bool:
        return all(e.passed for e in self.entries)

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def failures(self) -> list[GradcheckEntry]:
        return [e for e in self.entries if not e.passed]

    def __getitem__(self, name: str) -> GradcheckEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def __iter__(self) -> Iterator[GradcheckEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __str__(self) -> str:
        header = ("name", "shape", "mode", "max abs err", "max rel err", "worst", "analytic", "numeric", "ok")
        rows = [header]
        for e in self.entries:
            rows.append(
                (
                    e.name,
                    str(e.shape),
                    e.mode,
                    f"{e.max_abs_error:.3g}",
                    f"{e.max_rel_error:.3g}",
                    "-" if e.worst_index is None else str(list(e.worst_index)),
                    f"{e.analytic:.6g}",
                    f"{e.numeric:.6g}",
                    "yes" if e.passed else "NO",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        verdict = "gradcheck passed" if self else f"gradcheck FAILED for {len(self.failures)} of {len(self.entries)}"
        return "\n".join([*lines, verdict])

    def __repr__(self) -> str:
        return f"<GradcheckReport {'passed' if self else 'FAILED'}: {len(self.entries)} arrays>"


@dataclass
class _Target:
    name: str
    kind: str
    variable: Variable
    analytic: np.ndarray | None = None


def _compare(
    target: _Target, numeric: np.ndarray, mode: str, atol: float, rtol: float
) -> GradcheckEntry:
    analytic = target.analytic
    assert analytic is not None
    # A non-finite analytic or numeric value fails whatever the tolerance (inf <= inf would pass).
    finite = np.isfinite(analytic) & np.isfinite(numeric)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        err = np.abs(analytic - numeric)
        tol = atol + rtol * np.abs(numeric)
        ratio = np.where(finite, err / np.maximum(tol, 1e-300), np.inf)
        rel = np.where(err == 0, 0.0, err / np.maximum(np.abs(numeric), 1e-300))
    bad = ~finite | ~(err <= tol)
    worst = int(np.argmax(ratio)) if ratio.size else 0
    index = tuple(int(i) for i in np.unravel_index(worst, analytic.shape)) if analytic.size else ()
    return GradcheckEntry(
        name=target.name,
        kind=target.kind,
        shape=analytic.shape,
        mode=mode,
        passed=not bool(bad.any()),
        max_abs_error=float(np.nanmax(np.where(finite, err, np.inf))) if err.size else 0.0,
        max_rel_error=float(np.nanmax(np.where(finite, rel, np.inf))) if err.size else 0.0,
        worst_index=index,
        analytic=float(analytic[index]) if analytic.size else 0.0,
        numeric=float(numeric[index]) if numeric.size else 0.0,
        atol=atol,
        rtol=rtol,
    )


def _full(evaluate: Callable[[], float], target: _Target, h: float) -> np.ndarray:
    array = target.variable.value
    numeric = np.empty(array.shape, dtype=np.float64)
    flat = numeric.reshape(-1)
    for j in range(array.size):
        original = array.flat[j]
        try:
            array.flat[j] = original + h
            plus = evaluate()
            array.flat[j] = original - h
            minus = evaluate()
        finally:
            array.flat[j] = original
        flat[j] = (plus - minus) / (2.0 * h)
    return numeric


def _fast(
    evaluate: Callable[[], float], target: _Target, h: float, atol: float, rtol: float, rng: np.random.Generator
) -> GradcheckEntry:
    array = target.variable.value
    analytic = target.analytic
    assert analytic is not None
    direction = rng.standard_normal(array.shape)
    original = array.copy()
    try:
        array[...] = original + h * direction
        plus = evaluate()
        array[...] = original - h * direction
        minus = evaluate()
    finally:
        array[...] = original
    numeric = (plus - minus) / (2.0 * h)
    projected = float(np.vdot(analytic, direction))
    # The typical size of the projected error when every element errs by atol + rtol*|g|.
    # (scaled: the squares of values near the float range overflow, and an infinite tolerance passes anything)
    tol = atol * scaled_norm(direction) + rtol * scaled_norm(direction * analytic)
    with np.errstate(over="ignore", invalid="ignore"):
        err = abs(projected - numeric)
    finite = math.isfinite(projected) and math.isfinite(numeric)
    return GradcheckEntry(
        name=target.name,
        kind=target.kind,
        shape=array.shape,
        mode="fast",
        passed=finite and bool(err <= tol),
        max_abs_error=err if finite else math.inf,
        max_rel_error=err / max(abs(numeric), 1e-300),
        worst_index=None,
        analytic=projected,
        numeric=numeric,
        atol=atol,
        rtol=rtol,
    )


def _check_arguments(h: float, atol: float, rtol: float, seed: int) -> tuple[float, float, float, int]:
    return (
        check_number("gradcheck", "h", h, low=0.0, low_inclusive=False),
        check_number("gradcheck", "atol", atol, low=0.0),
        check_number("gradcheck", "rtol", rtol, low=0.0),
        check_number("gradcheck", "seed", seed, low=0, integer=True),
    )


def _check_targets(
    evaluate: Callable[[], float],
    targets: list[_Target],
    *,
    h: float,
    atol: float,
    rtol: float,
    mode: str,
    seed: int,
) -> GradcheckReport:
    if mode not in ("auto", "full", "fast"):
        raise InputTypeError(f"gradcheck: mode must be 'auto', 'full' or 'fast', got {mode!r}")
    rng = np.random.default_rng(seed)
    entries = []
    for target in targets:
        size = target.variable.value.size
        use_fast = mode == "fast" or (mode == "auto" and size > FULL_MODE_MAX)
        if use_fast:
            entry = _fast(evaluate, target, h, atol, rtol, rng)
            if entry.passed:
                entries.append(entry)
                continue
            entry = _compare(target, _full(evaluate, target, h), "fast->full", atol, rtol)
        else:
            entry = _compare(target, _full(evaluate, target, h), "full", atol, rtol)
        entries.append(entry)
    return GradcheckReport(entries)


@contextlib.contextmanager
def _float64(variables: Sequence[Variable]) -> Iterator[None]:
    """Temporarily give every float variable a float64 value; restore the originals exactly."""
    swapped = []
    for v in variables:
        if v.value.dtype.kind == "f" and v.value.dtype != np.float64:
            swapped.append((v, v.value))
            v.value = v.value.astype(np.float64)
    try:
        yield
    finally:
        for v, original in swapped:
            grad = v.peek_grad()
            v.value = original
            v.clear_grad()
            if grad is not None:
                v.grad = grad.astype(original.dtype)


@contextlib.contextmanager
def _isolated(graph: Graph) -> Iterator[np.random.Generator]:
    """Train mode and an empty tape for every evaluation; the graph's pass in flight and its
    mode come back afterwards."""
    state = graph.train_state
    graph.train()
    try:
        with graph.tape.isolated():
            yield graph.rng
    finally:
        graph.train_state = state


def _as_variables(inputs: Sequence[Any]) -> list[Any]:
    out = []
    for x in inputs:
        if isinstance(x, Variable):
            out.append(x)
        else:
            array = np.array(x)
            if array.dtype.kind == "f":
                array = array.astype(np.float64)
            out.append(Variable(array, name=None))
    return out


def _find_graph(fn: Any, graph: Graph | None) -> Graph:
    if graph is not None:
        return graph
    for candidate in (fn, getattr(fn, "__self__", None)):
        found = graph_of(candidate)
        if found is not None:
            return found
    raise InputTypeError(
        "gradcheck: cannot tell which Graph this callable uses; pass graph=... "
        "(or check an Operation, whose graph is known)"
    )


def gradcheck(
    op_or_callable: Operation | Callable[..., Any],
    inputs: Sequence[Any],
    *,
    target: Any = None,
    graph: Graph | None = None,
    parameters: Mapping[str, Variable] | Sequence[Variable] | None = None,
    h: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    mode: str = "auto",
    seed: int = 0,
) -> GradcheckReport:
    """Check analytic gradients against central differences, in float64.

    ``op_or_callable`` is an Operation (its parameters are checked too) or a callable
    taking Variables and returning Variable(s) or a loss float. Outputs are reduced to a
    scalar by a random projection (fixed by ``seed``); a Loss is checked through
    ``loss(target)``. Every float input and every parameter is checked; integer inputs
    are held fixed. Perturbed values are restored exactly; ``.grad`` is left as the
    analytic pass set it. Returns a ``GradcheckReport``.
    """
    h, atol, rtol, seed = _check_arguments(h, atol, rtol, seed)
    if isinstance(op_or_callable, Operation):
        op: Operation | None = op_or_callable
        fn: Callable[..., Any] = op_or_callable.forward
        graph = op_or_callable.require_graph()
        params = list(op_or_callable.parameters().items()) if parameters is None else None
    else:
        op = None
        fn = op_or_callable
        graph = _find_graph(fn, graph)
        params = None
    if params is None:
        if parameters is None:
            params = []
        elif isinstance(parameters, Mapping):
            params = list(parameters.items())
        else:
            params = [(v.name or f"parameter {i}", v) for i, v in enumerate(parameters)]
    if op is not None:
        params = [(f"{op.name}.{k}", v) for k, v in params]
    variables = _as_variables(inputs)
    is_loss = op is not None and op.is_loss
    if is_loss and target is None:
        raise InputTypeError(f"gradcheck: {op.label} is a Loss: pass target=...")  # type: ignore[union-attr]
    targets = [_Target(f"input {i}", "input", v) for i, v in enumerate(variables) if v.value.dtype.kind == "f"]
    targets += [_Target(name, "parameter", v) for name, v in params if v.value.dtype.kind == "f"]
    projection_rng = np.random.default_rng(seed)
    projections: list[np.ndarray] = []

    with _float64([t.variable for t in targets]), _isolated(graph) as rng:
        rng_state = rng.bit_generator.state

        def run() -> tuple[Any, float]:
            rng.bit_generator.state = rng_state
            result = fn(*variables)
            if is_loss:
                return result, op.loss(target)  # type: ignore[union-attr]
            if isinstance(result, (float, int, np.floating)):
                return result, float(result)
            outputs = result if isinstance(result, tuple) else (result,)
            if not projections:
                projections.extend(projection_rng.standard_normal(o.shape) for o in outputs)
            return outputs, float(sum(np.vdot(p, o.value) for p, o in zip(projections, outputs)))

        def evaluate() -> float:
            try:
                return run()[1]
            finally:
                graph.clear()

        for t in targets:
            t.variable.clear_grad()
        outputs, _ = run()
        if is_loss or not isinstance(outputs, tuple):
            graph.backward()
        else:
            graph.backward(grads=dict(zip(outputs, projections)))
        for t in targets:
            t.analytic = np.array(t.variable.grad, dtype=np.float64)
        return _check_targets(evaluate, targets, h=h, atol=atol, rtol=rtol, mode=mode, seed=seed)


def numerical_gradient_check(
    model: Any,
    input_variables: Any,
    target_variable: Any,
    *,
    h: float = 1e-6,
    mode: str = "auto",
    atol: float = 1e-5,
    rtol: float = 1e-3,
    verbose: bool = True,
) -> GradcheckReport:
    """The seed's checker: every variable of ``model.graph.parameter`` against central differences.

    ``model`` has ``.graph``, ``forward(input)`` and ``loss(target) -> float`` (the seed's
    style), or is a Graph subclass with ``forward`` and ``loss``. A list or tuple of input
    Variables is passed to ``forward`` as separate arguments. When ``verbose``, prints
    ``<name> match`` or ``<name> NOT MATCH !`` with the numbers. Leaves the tape clear.
    """
    h, atol, rtol, _ = _check_arguments(h, atol, rtol, 0)
    graph = graph_of(model)
    if graph is None:
        raise InputTypeError(
            "numerical_gradient_check: expected a model with a .graph (or a Graph subclass), "
            f"got {type(model).__name__}"
        )
    inputs = tuple(input_variables) if isinstance(input_variables, (list, tuple)) else (input_variables,)

    def model_loss(*variables: Any) -> float:
        model.forward(*variables)
        value = model.loss(target_variable)
        if value is None:
            raise InputTypeError("numerical_gradient_check: model.loss(target) must return the loss value")
        return float(value)

    params = dict(graph.parameter.variable_dict)
    # Inputs are data here, not checked: pass them through as they are.
    report = gradcheck(
        lambda: model_loss(*inputs), [], graph=graph, parameters=params, h=h, atol=atol, rtol=rtol, mode=mode
    )
    graph.clear()
    if verbose:
        for entry in report:
            status = "match" if entry.passed else "NOT MATCH !"
            print(f"{entry.name} {status}  ({entry.describe()})")
    return report
