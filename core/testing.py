"""The generic operation contract: every registered op, checked on each of its samples.

Each check is a named function taking an ``OperationCase`` (one op on one sample) and
raising ``ContractError`` (an AssertionError) with a message that names the op, its
plugin, the sample, the check, the input or parameter, the worst element with both
values and the tolerances, and a one-line reproducer. Reached three ways:
``check_operation`` / ``parametrize_operations`` (Python), ``tapegrad check`` (CLI) and
``pytest --tapegrad-contract[=PLUGIN]`` (the pytest plugin).

A check that needs another to have passed on the same case says so with ``@requires``
(every check that runs ``backward`` needs ``check_gradient_structure``); when that one failed,
it raises ``ContractSkip`` instead of repeating the failure: a skip everywhere (``"skipped"``
in reports, ``skip`` in the CLI table, a pytest skip), while the failed check fails the run.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ContractError, ContractSkip, TapegradError, UnknownOperationError
from .gradcheck import GradcheckReport, gradcheck
from .graph import Graph
from .operation import Loss, Operation, Sample
from .registry import OperationInfo, Registry, default_registry
from .variable import Variable

__all__ = [
    "ContractError",
    "ContractSkip",
    "ContractReport",
    "ContractResult",
    "OperationCase",
    "Sample",
    "ALL_CHECKS",
    "LOSS_CHECKS",
    "check_operation",
    "collect_cases",
    "parametrize_operations",
    "prerequisite",
    "requires",
    "run_cases",
    "summary",
    "check_has_samples",
    "check_forward_dtype_and_finite",
    "check_forward_deterministic",
    "check_inputs_not_mutated",
    "check_gradient_inputs",
    "check_gradient_parameters",
    "check_gradient_structure",
    "check_accumulates",
    "check_fan_out",
    "check_reuse_in_one_pass",
    "check_linear_in_upstream_gradient",
    "check_eval_mode",
    "check_capture",
    "check_loss_scalar",
]

SEED = 0
ATOL, RTOL = 1e-5, 1e-3
#: More samples than this fail check_has_samples (an endless ``samples()`` must not hang a run).
MAX_SAMPLES = 100
#: What an op's code may raise that fails a check rather than ending the run: ``sys.exit()`` in an
#: op's ``samples``, constructor, ``forward`` or ``backward`` is the op's fault, reported as such.
OP_FAULTS = (Exception, SystemExit)


# -- the case: one op on one sample ---------------------------------------------------------
@dataclass
class OperationCase:
    """One operation on one of its samples (``sample`` is None for an op without samples)."""

    info: OperationInfo
    sample: Sample | None
    index: int = 0
    fast: bool = False
    _report: GradcheckReport | None = field(default=None, repr=False)
    _samples: list[Sample] | None = field(default=None, repr=False)
    _verdicts: dict[str, BaseException | None] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def sample_name(self) -> str:
        if self.sample is None:
            return "no samples"
        return self.sample.name or f"sample{self.index}"

    @property
    def id(self) -> str:
        return self.name if self.sample is None else f"{self.name}[{self.sample_name}]"

    @property
    def is_loss(self) -> bool:
        return issubclass(self.info.cls, Loss)

    def __str__(self) -> str:
        return self.id

    # -- building blocks used by the checks --------------------------------------------
    def build(self, dtype: Any = np.float64, seed: int = SEED) -> tuple[Graph, Operation]:
        """A fresh graph (own empty registry) holding the op, built with the sample's arguments."""
        sample = self._need_sample()
        graph = Graph(f"contract:{self.name}", seed=seed, dtype=dtype, registry=Registry(entry_points=False))
        op = graph.get_operation(self.info.cls, list(sample.args), **(sample.kwargs or {}))
        return graph, op

    def inputs(self, dtype: Any = np.float64, scale: float = 1.0) -> list[Variable]:
        """Fresh Variables holding the sample's inputs (floats cast to ``dtype``)."""
        return [Variable(a, name=f"input {i}") for i, a in enumerate(_arrays(self._need_sample(), dtype, scale))]

    def samples(self) -> list[Sample]:
        """Every sample the op yields (the case's own among them), drawn once per case."""
        if self._samples is None:
            self._samples = [s for s in _usable_samples(self.info.cls) if isinstance(s, Sample)]
        return self._samples

    def verdict(self, check: Callable[[OperationCase], None]) -> BaseException | None:
        """Run ``check`` on this case once and keep its verdict: None, or what it raised."""
        name = check.__name__
        if name not in self._verdicts:
            try:
                check(self)
            except OP_FAULTS as exc:
                self._verdicts[name] = exc
            else:
                self._verdicts[name] = None
        return self._verdicts[name]

    def target(self) -> Any:
        return self._need_sample().target

    def _need_sample(self) -> Sample:
        if self.sample is None:
            raise ContractError(self.message("check_has_samples", "the op has no samples"))
        return self.sample

    def message(self, check: str, detail: str) -> str:
        dist = f", {self.info.distribution}=={self.info.version}" if self.info.distribution else ""
        return (
            f"{self.name} (plugin {self.info.plugin!r}{dist}) [sample {self.sample_name!r}] {check} failed:\n"
            f"  {detail}\n"
            f"  reproduce: {self.reproducer}"
        )

    @property
    def reproducer(self) -> str:
        if self.info.plugin == "unregistered":
            return f"check_operation({self.name}) (register it to run `tapegrad check {self.name}`)"
        return f"tapegrad check {self.name} --plugin {self.info.plugin}"

    def fail(self, check: str, detail: str) -> ContractError:
        return ContractError(self.message(check, detail))

    def gradcheck_report(self) -> GradcheckReport:
        """Central differences for every float input and parameter (cached per case)."""
        if self._report is None:
            graph, op = self.build()
            self._report = gradcheck(
                op, self.inputs(), target=self.target(), atol=ATOL, rtol=RTOL, mode="fast" if self.fast else "auto"
            )
        return self._report


def _arrays(sample: Sample, dtype: Any = np.float64, scale: float = 1.0) -> list[np.ndarray]:
    """Copies of a sample's inputs; floats scaled and cast to ``dtype`` (shape ``()`` included)."""
    out = []
    for x in sample.inputs:
        array = np.array(x.value if isinstance(x, Variable) else x)
        if array.dtype.kind == "f":
            array = np.asarray(array * scale, dtype=dtype)
        out.append(array)
    return out


def _outputs(result: Any) -> tuple[Variable, ...]:
    return result if isinstance(result, tuple) else (result,)


def _float_outputs(result: Any) -> list[Variable]:
    return [o for o in _outputs(result) if o.value.dtype.kind == "f"]


def _seeds(outputs: Iterable[Variable], scale: float = 1.0, seed: int = SEED + 1) -> dict[Variable, np.ndarray]:
    """Upstream gradients for ``outputs``: arrays (never numpy scalars, so shape ``()`` is
    passed by reference like any other) of each output's shape and dtype."""
    rng = np.random.default_rng(seed)
    return {o: np.asarray(rng.standard_normal(o.shape) * scale, dtype=o.dtype) for o in outputs}


def _run(case: OperationCase, graph: Graph, op: Operation, inputs: list[Variable], scale: float = 1.0) -> Any:
    """Forward, (loss), backward with a fixed upstream gradient times ``scale``."""
    result = op.forward(*inputs)
    if case.is_loss:
        op.loss(case.target())  # type: ignore[attr-defined]
        graph.backward(loss_grad=scale)
    else:
        graph.backward(grads=_seeds(_float_outputs(result), scale))
    return result


def _grads(case: OperationCase, op: Operation, inputs: list[Variable]) -> dict[str, np.ndarray | None]:
    grads: dict[str, np.ndarray | None] = {v.name or f"input {i}": v.grad for i, v in enumerate(inputs)}
    for name, p in op.parameters().items():
        grads[f"{op.name}.{name}"] = p.grad
    return grads


def _guarded(case: OperationCase, check: str, func: Callable[[], Any], numeric: bool = True) -> Any:
    """Run ``func`` with numpy overflow/invalid raising (unless ``numeric`` is False: then such
    values pass silently, for checks about something else); turn any error into a ContractError."""
    errors = np.errstate(over="raise", invalid="raise", divide="raise") if numeric else np.errstate(all="ignore")
    try:
        with errors, warnings.catch_warnings():
            warnings.simplefilter("error" if numeric else "ignore", RuntimeWarning)
            return func()
    except ContractError:
        raise
    except OP_FAULTS as exc:
        raise case.fail(check, f"raised {type(exc).__name__}: {exc}") from exc


def _draw_samples(cls: type[Operation]) -> list[Any]:
    """What ``cls.samples(rng)`` yields (seeded), at most ``MAX_SAMPLES + 1`` of them."""
    return list(itertools.islice(cls.samples(np.random.default_rng(SEED)), MAX_SAMPLES + 1))


def _usable_samples(cls: type[Operation]) -> list[Any]:
    """What ``cls.samples(rng)`` yields; nothing when it raises or yields more than ``MAX_SAMPLES``
    (check_has_samples reports both)."""
    try:
        drawn = _draw_samples(cls)
    except OP_FAULTS:
        return []
    return drawn if len(drawn) <= MAX_SAMPLES else []


def _report_failures(case: OperationCase, check: str, report: GradcheckReport, kind: str) -> None:
    bad = [e for e in report.failures if e.kind == kind]
    if bad:
        raise case.fail(check, "\n  ".join(e.describe() for e in bad))


def _close(a: np.ndarray | None, b: np.ndarray | None) -> tuple[bool, str]:
    if a is None or b is None:
        return a is None and b is None, f"{a!r} vs {b!r}"
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    err = np.abs(a - b)
    tol = 1e-9 + 1e-7 * np.abs(b)
    if (err <= tol).all():
        return True, ""
    worst = np.unravel_index(int(np.argmax(err - tol)), a.shape) if a.size else ()
    index = tuple(int(i) for i in worst)
    return False, f"at {list(index)}: {a[index]:.6g} vs expected {b[index]:.6g} (atol 1e-9, rtol 1e-7)"


# -- dependencies between checks -----------------------------------------------------------
Check = Callable[[OperationCase], None]


def prerequisite(check: Check) -> Check:
    """Mark a check that others ``@requires``: it runs once per case (however many checks
    need it, in whatever order) and its verdict is kept on the case."""

    @functools.wraps(check)
    def once(case: OperationCase) -> None:
        error = case.verdict(check)
        if error is not None:
            raise error

    return once


def requires(*needed: Check) -> Callable[[Check], Check]:
    """Make a check run only after every check in ``needed`` passed on the same case.

    Otherwise it raises ``ContractSkip`` naming the failed one, so one fault is reported once,
    by the check that names it. The needed checks are ``@prerequisite`` (run once per case);
    the decorated check lists them in ``.requires``.
    """

    def decorate(check: Check) -> Check:
        @functools.wraps(check)
        def guarded(case: OperationCase) -> None:
            for other in needed:
                try:
                    other(case)
                except OP_FAULTS as exc:
                    raise ContractSkip(_skip_reason(case, check.__name__, other.__name__, exc), other.__name__, exc) from None
            check(case)

        guarded.requires = needed  # type: ignore[attr-defined]
        return guarded

    return decorate


def _skip_reason(case: OperationCase, check: str, failed: str, error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # A ContractError reads "<op> ... failed:", the detail, "reproduce: ..."; keep the first detail line.
    detail = lines[1] if len(lines) > 1 and isinstance(error, ContractError) else (lines[0] if lines else type(error).__name__)
    return f"{case.id}: {check} cannot run because {failed} failed ({detail})"


# -- the checks -----------------------------------------------------------------------------
def check_has_samples(case: OperationCase) -> None:
    """The op yields at least one ``tg.Sample`` from ``samples(cls, rng)`` and can be built from it."""
    cls = case.info.cls
    try:
        samples = _draw_samples(cls)
    except OP_FAULTS as exc:
        raise case.fail("check_has_samples", f"samples() raised {type(exc).__name__}: {exc}") from exc
    if len(samples) > MAX_SAMPLES:
        raise case.fail(
            "check_has_samples", f"samples() yielded more than {MAX_SAMPLES} samples (an endless generator?); yield a few"
        )
    if not samples:
        raise case.fail(
            "check_has_samples",
            f"{cls.__name__} has no samples, so nothing can be checked. Add\n"
            "      @classmethod\n"
            "      def samples(cls, rng):\n"
            "          yield tg.Sample(args=[...constructor args...], inputs=[rng.standard_normal((4, 3))])",
        )
    bad = [s for s in samples if not isinstance(s, Sample)]
    if bad:
        raise case.fail("check_has_samples", f"samples() must yield tg.Sample objects, got {bad[0]!r}")
    if issubclass(cls, Loss) and any(s.target is None for s in samples):
        raise case.fail("check_has_samples", "a Loss needs a target in every sample (Sample(target=...))")


@prerequisite
def check_gradient_structure(case: OperationCase) -> None:
    """``backward`` returns one gradient per input, each of its input's shape and float dtype,
    and None for integer inputs. Checked first: the checks that run backward require it, and
    are skipped when it fails (the values are other checks' business: NaN passes here)."""
    check = "check_gradient_structure"
    graph, op = case.build()
    inputs = case.inputs()
    result = _guarded(case, check, lambda: op.forward(*inputs), numeric=False)
    ctx = next(c for c in reversed(graph.forward_ops) if c.op is op)
    if case.is_loss:
        _guarded(case, check, lambda: op.loss(case.target()), numeric=False)  # type: ignore[attr-defined]
        upstream: Any = 1.0
    else:
        outs = _outputs(result)
        seeds = _seeds(outs)
        upstream = seeds[outs[0]] if len(outs) == 1 else tuple(seeds[o] for o in outs)
    raw = _guarded(case, check, lambda: op.backward(ctx, upstream), numeric=False)
    graph.clear()
    grads = raw if isinstance(raw, tuple) else (raw,)
    if len(grads) != len(inputs):
        raise case.fail(check, f"backward returned {len(grads)} gradient(s) for {len(inputs)} input(s)")
    for i, (g, x) in enumerate(zip(grads, inputs)):
        if x.value.dtype.kind != "f":
            if g is not None:
                raise case.fail(check, f"input {i} is an integer array (dtype {x.value.dtype}); its gradient must be None")
            continue
        if g is None:
            continue
        shape = np.shape(g)
        if shape != x.shape:
            raise case.fail(check, f"gradient of input {i} has shape {shape}, the input has shape {x.shape}")
        if np.asarray(g).dtype.kind != "f":
            raise case.fail(check, f"gradient of input {i} has dtype {np.asarray(g).dtype}, expected a float dtype")


@requires(check_gradient_structure)
def check_forward_dtype_and_finite(case: OperationCase) -> None:
    """float64 in gives float64 out; in a float32 graph, float32 in gives float32 outputs and
    gradients; finite inputs give finite outputs, losses and gradients, with no overflow."""
    check = "check_forward_dtype_and_finite"
    for dtype in (np.float64, np.float32):
        graph, op = case.build(dtype)
        inputs = case.inputs(dtype)
        result = _guarded(case, check, lambda: _run(case, graph, op, inputs))  # noqa: B023 - called at once
        for i, out in enumerate(_outputs(result)):
            if not isinstance(out, Variable):
                raise case.fail(check, f"output {i} is {type(out).__name__}, expected a Variable")
            if out.value.dtype.kind == "f" and out.value.dtype != np.dtype(dtype):
                raise case.fail(check, f"output {i} has dtype {out.value.dtype} for {np.dtype(dtype)} inputs in a {np.dtype(dtype)} graph")
            if out.value.dtype.kind in "fc" and not np.isfinite(out.value).all():
                bad = np.argwhere(~np.isfinite(out.value))[0]
                raise case.fail(check, f"output {i} is {out.value[tuple(bad)]} at {bad.tolist()} for finite inputs ({np.dtype(dtype)})")
        for name, grad in _grads(case, op, inputs).items():
            if grad is None:
                continue
            if grad.dtype != np.dtype(dtype):
                raise case.fail(check, f"gradient of {name} has dtype {grad.dtype} in a {np.dtype(dtype)} graph")
            if not np.isfinite(grad).all():
                raise case.fail(check, f"gradient of {name} is not finite ({np.dtype(dtype)})")


def check_forward_deterministic(case: OperationCase) -> None:
    """Two forward passes on graphs with the same seed give identical outputs (and losses)."""
    check = "check_forward_deterministic"
    results = []
    for _ in range(2):
        graph, op = case.build()

        def forward(op: Operation = op) -> Any:
            out = op.forward(*case.inputs())
            loss = op.loss(case.target()) if case.is_loss else None  # type: ignore[attr-defined]
            return [o.value for o in _outputs(out)], loss

        results.append(_guarded(case, check, forward))
    (first, loss1), (second, loss2) = results
    for i, (a, b) in enumerate(zip(first, second)):
        if not np.array_equal(a, b, equal_nan=True):
            raise case.fail(check, f"output {i} differs between two runs with the same seed")
    if loss1 != loss2 and not (loss1 != loss1 and loss2 != loss2):
        raise case.fail(check, f"loss differs between two runs with the same seed: {loss1} vs {loss2}")


@requires(check_gradient_structure)
def check_inputs_not_mutated(case: OperationCase) -> None:
    """Neither forward nor backward writes into the input arrays or the upstream gradient."""
    check = "check_inputs_not_mutated"
    graph, op = case.build()
    inputs = case.inputs()
    before = [v.value.copy() for v in inputs]
    result = _guarded(case, check, lambda: op.forward(*inputs))
    for i, (v, b) in enumerate(zip(inputs, before)):
        if not np.array_equal(v.value, b, equal_nan=True):
            raise case.fail(check, f"forward changed input {i}")
    if case.is_loss:

        def loss_backward() -> None:
            op.loss(case.target())  # type: ignore[attr-defined]
            graph.backward()

        _guarded(case, check, loss_backward)
    else:
        seeds = _seeds(_float_outputs(result))
        seed_copies = {k: s.copy() for k, s in seeds.items()}
        _guarded(case, check, lambda: graph.backward(grads=seeds))
        for k, s in seeds.items():
            if not np.array_equal(s, seed_copies[k]):
                raise case.fail(check, "backward wrote into the upstream gradient array")
    for i, (v, b) in enumerate(zip(inputs, before)):
        if not np.array_equal(v.value, b, equal_nan=True):
            raise case.fail(check, f"backward changed input {i}")


@requires(check_gradient_structure)
def check_gradient_inputs(case: OperationCase) -> None:
    """Every float input's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = _guarded(case, "check_gradient_inputs", case.gradcheck_report)
    _report_failures(case, "check_gradient_inputs", report, "input")


@requires(check_gradient_structure)
def check_gradient_parameters(case: OperationCase) -> None:
    """Every parameter's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = _guarded(case, "check_gradient_parameters", case.gradcheck_report)
    _report_failures(case, "check_gradient_parameters", report, "parameter")


@requires(check_gradient_structure)
def check_accumulates(case: OperationCase) -> None:
    """Gradients already in inputs and parameters are added to, never overwritten."""
    check = "check_accumulates"
    clean_graph, clean_op = case.build()
    clean_inputs = case.inputs()
    _guarded(case, check, lambda: _run(case, clean_graph, clean_op, clean_inputs))
    expected_only = _grads(case, clean_op, clean_inputs)

    graph, op = case.build()
    inputs = case.inputs()
    rng = np.random.default_rng(SEED + 2)
    prefilled: dict[str, np.ndarray] = {}
    variables = {v.name or "": v for v in inputs}
    variables.update({f"{op.name}.{k}": p for k, p in op.parameters().items()})
    for name, v in variables.items():
        if v.value.dtype.kind == "f":
            prefilled[name] = rng.standard_normal(v.shape)
            v.grad = prefilled[name]
    _guarded(case, check, lambda: _run(case, graph, op, inputs))
    got = _grads(case, op, inputs)
    for name, start in prefilled.items():
        only = expected_only.get(name)
        expected = start if only is None else start + only
        ok, detail = _close(got[name], expected)
        if not ok:
            overwritten = only is not None and _close(got[name], only)[0]
            why = " (the pre-filled gradient was overwritten, not added to)" if overwritten else ""
            raise case.fail(check, f"{name}: gradient {detail}{why}")


# -- several applications in one pass (check_fan_out, check_reuse_in_one_pass) -------------------
#: How many applications check_fan_out feeds the same input Variables to. Gradient accumulation
#: treats the first contribution (kept by reference), the second (added into a new array) and the
#: later ones (added in place) differently: three reach every path.
FAN_OUT = 3


STATE_HINT = (
    "Per-call state (masks, shapes, inputs) must live in ctx, not on self: one application's "
    "backward saw what another application left there"
)


@dataclass
class _Application:
    """One application in a pass of several: its input arrays, the Variable each goes to
    (applications naming the same slot share that Variable), its target, how messages name it."""

    inputs: list[np.ndarray]
    slots: list[str]
    target: Any
    label: str


@dataclass
class _Pass:
    """What one pass left: every input slot's and parameter's gradient, the graph generator's
    state before each application, whether the outputs were finite, and any array that backward
    received or returned and that was changed afterwards."""

    grads: dict[str, np.ndarray]
    rng_states: list[Mapping[str, Any]]
    finite: bool = True
    changed: str | None = None


def _apply(
    case: OperationCase,
    apps: Sequence[tuple[int, _Application]],
    rng_states: Sequence[Mapping[str, Any]] | None = None,
    watch: bool = False,
) -> _Pass:
    """A fresh op applied once per entry of ``apps`` (in order), then one backward.

    Application ``index`` gets upstream gradients drawn from its index (a loss, its loss), so a
    pass of one application reproduces that application's contribution; ``rng_states`` replays
    the generator (Dropout's masks). With ``watch``, every array backward is handed or returns
    is compared, after the pass, with a copy taken at that moment.
    """
    graph, op = case.build()
    variables: dict[str, Variable] = {}
    for _, app in apps:
        for slot, array in zip(app.slots, app.inputs):
            variables.setdefault(slot, Variable(array.copy(), name=slot))
    seeds: dict[Variable, np.ndarray] = {}
    states: list[Mapping[str, Any]] = []
    owners: dict[int, str] = {}
    finite = True
    for n, (index, app) in enumerate(apps):
        if rng_states is not None:
            graph.rng.bit_generator.state = rng_states[n]
        states.append(graph.rng.bit_generator.state)
        result = op.forward(*(variables[slot] for slot in app.slots))
        for ctx in graph.forward_ops:
            if ctx.op is op:
                owners.setdefault(id(ctx), app.label)
        finite = finite and all(np.isfinite(o.value).all() for o in _float_outputs(result))
        if case.is_loss:
            value = op.loss(app.target)  # type: ignore[attr-defined]
            finite = finite and math.isfinite(value)
        else:
            seeds.update(_seeds(_float_outputs(result), seed=SEED + 10 + index))
    if not case.is_loss and not seeds:
        graph.clear()
        return _Pass({}, states, finite)  # no float output: nothing to differentiate
    records: list[tuple[str, np.ndarray, np.ndarray]] = []
    if watch:
        op.backward = _watched(op.backward, owners, records)  # type: ignore[method-assign]
    graph.backward(grads=seeds)
    changed = next((what for what, array, copy in records if not np.array_equal(array, copy, equal_nan=True)), None)
    grads = {name: v.grad for name, v in variables.items() if v.differentiable}
    grads.update({f"{op.name}.{k}": p.grad for k, p in op.parameters().items() if p.differentiable})
    kept = {name: g for name, g in grads.items() if g is not None}
    finite = finite and all(np.isfinite(g).all() for g in kept.values())
    return _Pass(kept, states, finite, changed)


def _watched(backward: Callable[..., Any], owners: dict[int, str], records: list[tuple[str, np.ndarray, np.ndarray]]) -> Callable[..., Any]:
    """``backward``, noting (with a copy) each array it is handed and each array it returns."""

    def watched(ctx: Any, grad: Any) -> Any:
        who = owners.get(id(ctx), "an application")
        for g in grad if isinstance(grad, tuple) else (grad,):
            if isinstance(g, np.ndarray):
                records.append((f"the upstream gradient handed to backward for {who}", g, g.copy()))
        out = backward(ctx, grad)
        for i, g in enumerate(out if isinstance(out, tuple) else (out,)):
            if isinstance(g, np.ndarray):
                records.append((f"the gradient of input {i} that backward returned for {who}", g, g.copy()))
        return out

    return watched


def _usable(case: OperationCase, app: _Application) -> bool:
    """Does one application on these inputs run, forward and backward, with finite results
    (and no overflow)? Inputs the op cannot take are not used, rather than reported."""
    try:
        return bool(_guarded(case, "", lambda: _apply(case, [(0, app)])).finite)
    except ContractError:
        return False


def _mismatch(whole: _Pass, parts: list[_Pass]) -> tuple[str, np.ndarray, list[np.ndarray], tuple[int, ...]] | None:
    """The first gradient of ``whole`` that is not the sum of its contributions in ``parts``:
    (name, gradient, contributions, worst index); None when every one matches."""
    for name, got in whole.grads.items():
        contributions = [p.grads[name] for p in parts if name in p.grads]
        expected = np.sum(contributions, axis=0) if contributions else np.zeros_like(got)
        # Summing in another order differs by rounding only, relative to the contributions' size.
        tol = 1e-9 + 1e-7 * np.sum(np.abs(contributions), axis=0) if contributions else 1e-9
        err = np.abs(got - expected)
        if not (err <= tol).all():
            worst = np.unravel_index(int(np.argmax(err - tol)), got.shape) if got.ndim else ()
            return name, got, contributions, tuple(int(i) for i in worst)
    return None


def _run_applications(case: OperationCase, check: str, apps: list[_Application]) -> tuple[_Pass, list[_Pass]]:
    """All of ``apps`` in one pass (watched), then each alone on a fresh op with the generator
    where that pass had it: the whole, and the parts its gradients must add up to."""
    try:
        whole = _guarded(case, check, lambda: _apply(case, list(enumerate(apps)), watch=True))
    except ContractError as exc:
        cause = exc.__cause__
        if cause is None or not all(_usable(case, app) for app in {id(app.inputs): app for app in apps}.values()):
            raise
        labels = ", ".join(app.label for app in apps)
        raise case.fail(
            check,
            f"{len(apps)} applications in one pass ({labels}) raised {type(cause).__name__}: {cause}; each "
            f"application alone runs. {STATE_HINT}",
        ) from cause
    if whole.changed:
        raise case.fail(
            check,
            f"{whole.changed} was written into later in the same backward pass (by another backward, or by "
            "the gradient accumulation): gradients are accumulated by reference, so no array that backward "
            "receives or returns may be written into afterwards; return a new array (or the upstream "
            "gradient itself) on every call",
        )
    parts = [
        _guarded(case, check, lambda k=k: _apply(case, [(k, apps[k])], rng_states=[whole.rng_states[k]]))  # type: ignore[misc]
        for k in range(len(apps))
    ]
    return whole, parts


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _at(array: np.ndarray, index: tuple[int, ...]) -> str:
    return f"{float(array[index]):.6g}"


@requires(check_gradient_structure)
def check_fan_out(case: OperationCase) -> None:
    """The same input Variables fed to three applications in one pass receive the sum of the
    three gradients, each computed alone (parameters likewise): no contribution lost or
    overwritten, at any shape including ``()``; and no array backward was handed or returned
    is written into afterwards."""
    check = "check_fan_out"
    sample = case._need_sample()
    arrays = _arrays(sample)
    slots = [f"input {i}" for i in range(len(arrays))]
    apps = [_Application(arrays, slots, sample.target, f"application {k + 1}") for k in range(FAN_OUT)]
    whole, parts = _run_applications(case, check, apps)
    found = _mismatch(whole, parts)
    if found is None:
        return
    name, got, contributions, index = found
    total = np.sum(contributions, axis=0)
    why = ""
    for k, c in enumerate(contributions):
        for expected, what in ((total - c, "was lost"), (c, "was the only one kept (the others were overwritten)")):
            if np.allclose(got, expected, rtol=1e-7, atol=1e-9):
                # backward runs in reverse, so the last application's contribution arrives first
                why = f": application {k + 1}'s contribution (arriving {_ordinal(len(contributions) - k)}) {what}"
                break
        if why:
            break
    each = ", ".join(_at(c, index) for c in contributions)
    raise case.fail(
        check,
        f"{name} fed to {FAN_OUT} applications: gradient {_at(got, index)} at {list(index)}, but the applications' "
        f"gradients computed alone ({each}) sum to {_at(total, index)}{why}",
    )


def _other_values(arrays: list[np.ndarray]) -> Iterator[tuple[list[np.ndarray], str]]:
    """Inputs of the same shapes holding other values, and how to name them: first negated and
    shifted by one element (other signs in other places; integers only shifted), then only
    shifted, then shifted and doubled, for ops whose inputs must keep their signs."""

    def shifted(a: np.ndarray) -> np.ndarray:
        return np.roll(a.reshape(-1), 1).reshape(a.shape)

    changes: tuple[tuple[Callable[[np.ndarray], np.ndarray], str], ...] = (
        (lambda a: -shifted(a), "other values and signs"),
        (shifted, "values shifted"),
        (lambda a: 2.0 * shifted(a), "values shifted and doubled"),
    )
    for change, what in changes:
        candidate = [change(a) if a.dtype.kind == "f" else shifted(a) for a in arrays]
        if any(not np.array_equal(a, c) for a, c in zip(arrays, candidate)):
            yield candidate, f"same shapes, {what}"


def _same_arguments(a: Sample, b: Sample) -> bool:
    try:
        return bool(list(a.args) == list(b.args) and dict(a.kwargs or {}) == dict(b.kwargs or {}))
    except Exception:  # arguments that do not compare (arrays): treat as different
        return False


def _other_shapes(case: OperationCase, arrays: list[np.ndarray]) -> Iterator[tuple[list[np.ndarray], Any, str]]:
    """Inputs of other shapes for the same op instance: the op's other samples with the same
    constructor arguments, then this sample with its batch doubled (axis 0, new values), then
    with its shapes reversed (as many elements: for ops that fix the size, such as Reshape)."""
    sample = case._need_sample()
    shapes = [a.shape for a in arrays]
    samples = case.samples()
    start = next((i for i, s in enumerate(samples) if s is sample), len(samples))
    for other in samples[start + 1:] + samples[:start]:
        if other is sample or len(other.inputs) != len(arrays) or not _same_arguments(sample, other):
            continue
        candidate = _arrays(other)
        if [c.shape for c in candidate] != shapes and all(
            (c.dtype.kind == "f") == (a.dtype.kind == "f") for c, a in zip(candidate, arrays)
        ):
            yield candidate, other.target, f"sample {other.name or 'another sample'!r}"
    if not any(a.ndim for a in arrays):
        return
    target = sample.target
    if isinstance(target, np.ndarray) and target.ndim:
        target = np.concatenate([target, target])
    for values, _ in _other_values(arrays):
        doubled = [np.concatenate([a, v]) if a.ndim else a for a, v in zip(arrays, values)]
        yield doubled, target, f"sample {case.sample_name!r} with its batch doubled"
    reversed_shapes = [a.reshape(a.shape[::-1]) for a in arrays]
    if [a.shape for a in reversed_shapes] != shapes:
        yield reversed_shapes, sample.target, f"sample {case.sample_name!r} with its shapes reversed"


@requires(check_gradient_structure)
def check_reuse_in_one_pass(case: OperationCase) -> None:
    """The op applied three times in one pass, on independent inputs: the sample; the same
    shapes with other values and signs; other shapes (another sample with the same constructor
    arguments, else this one with its batch doubled). Each application's gradients equal those
    of the same application run alone: per-call state (masks, shapes) lives in ctx, not on self."""
    check = "check_reuse_in_one_pass"
    sample = case._need_sample()
    arrays = _arrays(sample)
    n = len(arrays)
    apps = [_Application(arrays, [f"input {i}" for i in range(n)], sample.target, f"application 1 (sample {case.sample_name!r})")]

    def add(inputs: list[np.ndarray], target: Any, what: str) -> bool:
        k = len(apps) + 1
        app = _Application(inputs, [f"input {i} of application {k}" for i in range(n)], target, f"application {k} ({what})")
        if _usable(case, app):
            apps.append(app)
            return True
        return False

    # Other shapes last: each earlier application's backward then meets the last forward's state
    # of another shape, and a buffer kept on self per shape is reused (and overwritten) in between.
    any(add(inputs, sample.target, what) for inputs, what in _other_values(arrays))
    any(add(inputs, target, what) for inputs, target, what in _other_shapes(case, arrays))
    whole, parts = _run_applications(case, check, apps)
    found = _mismatch(whole, parts)
    if found is None:
        return
    name, got, contributions, index = found
    labels = ", ".join(app.label for app in apps)
    owner = next((k for k, app in enumerate(apps) if name in app.slots), None)
    if owner is not None:
        detail = (
            f"{name}: gradient {_at(got, index)} at {list(index)} in one pass with {labels}; "
            f"{_at(contributions[0], index)} when application {owner + 1} runs alone"
        )
    else:
        detail = (
            f"{name}: gradient {_at(got, index)} at {list(index)} in one pass with {labels}; the applications' "
            f"contributions computed alone sum to {_at(np.sum(contributions, axis=0), index)}"
        )
    raise case.fail(check, f"{detail}. {STATE_HINT}")


@requires(check_gradient_structure)
def check_linear_in_upstream_gradient(case: OperationCase) -> None:
    """A zero upstream gradient gives zero gradients; doubling it doubles every gradient."""
    check = "check_linear_in_upstream_gradient"
    runs = {}
    for scale in (0.0, 1.0, 2.0):
        graph, op = case.build()
        inputs = case.inputs()
        _guarded(case, check, lambda: _run(case, graph, op, inputs, scale))  # noqa: B023 - called at once
        runs[scale] = _grads(case, op, inputs)
    for name, zero in runs[0.0].items():
        if zero is not None and np.any(zero != 0):
            raise case.fail(check, f"{name}: a zero upstream gradient gave a non-zero gradient (max |g| {np.abs(zero).max():.3g})")
        one, two = runs[1.0][name], runs[2.0][name]
        if one is None:
            continue
        ok, detail = _close(two, 2.0 * one)
        if not ok:
            raise case.fail(check, f"{name}: doubling the upstream gradient did not double the gradient: {detail}")


def check_eval_mode(case: OperationCase) -> None:
    """In eval mode nothing is recorded on the tape, backward has nothing to run, and the
    output (and loss) equals train mode unless the op declares ``differs_in_eval``."""
    check = "check_eval_mode"
    train_graph, train_op = case.build()
    train_out = _guarded(case, check, lambda: train_op.forward(*case.inputs()))
    train_loss = _guarded(case, check, lambda: train_op.loss(case.target())) if case.is_loss else None  # type: ignore[attr-defined]
    graph, op = case.build()
    graph.eval()
    out = _guarded(case, check, lambda: op.forward(*case.inputs()))
    loss = _guarded(case, check, lambda: op.loss(case.target())) if case.is_loss else None  # type: ignore[attr-defined]
    if graph.forward_ops:
        raise case.fail(check, f"eval mode recorded {len(graph.forward_ops)} tape entries")
    if graph.tape.losses:
        raise case.fail(check, "a loss computed in eval mode was queued for backward")
    if case.info.cls.differs_in_eval:
        return
    for i, (a, b) in enumerate(zip(_outputs(out), _outputs(train_out))):
        if not np.array_equal(a.value, b.value, equal_nan=True):
            raise case.fail(check, f"output {i} differs between eval and train mode (set differs_in_eval = True if intended)")
    if case.is_loss and not _same_loss(loss, train_loss):
        raise case.fail(check, f"loss differs between eval ({loss}) and train ({train_loss}) mode")


def _same_loss(a: Any, b: Any) -> bool:
    return bool(a == b or (math.isnan(a) and math.isnan(b)))


@requires(check_gradient_structure)
def check_loss_scalar(case: OperationCase) -> None:
    """A loss returns a finite Python float, and its gradient with respect to every float
    input matches central differences."""
    check = "check_loss_scalar"
    graph, op = case.build()
    value = _guarded(case, check, lambda: (op.forward(*case.inputs()), op.loss(case.target()))[1])  # type: ignore[attr-defined]
    if not isinstance(value, float) or not math.isfinite(value):
        raise case.fail(check, f"loss returned {value!r}, expected a finite float")
    report = _guarded(case, check, case.gradcheck_report)
    _report_failures(case, check, report, "input")


def _captured_step(case: OperationCase) -> tuple[Graph, Operation, Callable[..., Any]]:
    """A fresh op and the step ``check_capture`` captures: clear the gradients, forward, the loss
    (against ``extra[0]``) or the output gradients ``extra``, backward; it returns the outputs (and the
    loss). The target and the gradients are arguments: a captured step computes nothing in Python."""
    graph, op = case.build()

    def step(inputs: list[Variable], extra: list[Any]) -> Any:
        graph.parameter.clear_grads()
        result = op.forward(*inputs)
        if case.is_loss:
            value = op.loss(extra[0])  # type: ignore[attr-defined]
            graph.backward()
            return (*_outputs(result), value)
        floats = [o for o in _outputs(result) if o.dtype.kind == "f"]
        graph.backward(grads=dict(zip(floats, extra)))
        return _outputs(result)

    return graph, op, step


def _bitwise(a: Any, b: Any) -> bool:
    if isinstance(a, Variable):
        a, b = a.value, b.value
    if isinstance(a, float) or isinstance(b, float):
        return bool(a == b)
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@requires(check_gradient_structure)
def check_capture(case: OperationCase) -> None:
    """A captured step of the op (forward, loss, backward), recorded on the sample and replayed
    on a second input of the same shapes with other values, equals eager bit for bit: outputs,
    loss, and every input's and parameter's gradient. An op is safe to replay when its backward
    depends on nothing but ``ctx`` (what forward saved, ``needs_input_grad``) and its parameters,
    and forward keeps nothing on ``self`` (``ctx.inputs`` is empty during a replay)."""
    check = "check_capture"
    first = _arrays(case._need_sample())
    seconds = [values for values, _ in _other_values(first)]
    slots = [f"input {i}" for i in range(len(first))]
    second = next((v for v in seconds if _usable(case, _Application(v, slots, case.target(), "second input"))), first)

    def run() -> str | None:
        captured_graph, captured_op, captured = _captured_step(case)
        eager_graph, eager_op, eager = _captured_step(case)
        extra = [case.target()] if case.is_loss else list(_seeds(_float_outputs(eager_op.forward(*map(Variable, first)))).values())
        eager_graph.clear()
        step = captured_graph.capture(captured, check=False)
        step([Variable(a) for a in first], extra)  # records (eager)
        got_inputs = [Variable(a) for a in second]
        try:
            got = step(got_inputs, extra)  # replays
        except OP_FAULTS as exc:
            return f"the replay raised {type(exc).__name__}: {exc}"
        eager([Variable(a) for a in first], extra)
        want_inputs = [Variable(a) for a in second]
        want = eager(want_inputs, extra)
    problem = _guarded(case, check, run)
    if problem:
        raise case.fail(
            check,
            f"recorded on the sample and replayed on a second input, {problem}. The op keeps per-call state "
            "outside ctx, or reads something forward did not save (ctx.inputs is empty during a replay: "
            "save what backward needs with ctx.save)",
        )


# check_gradient_structure first: most checks require it (``@requires``), and its verdict is
# kept on the case, so it runs once per case whatever the order.
ALL_CHECKS: tuple[Callable[[OperationCase], None], ...] = (
    check_gradient_structure,
    check_forward_dtype_and_finite,
    check_forward_deterministic,
    check_inputs_not_mutated,
    check_gradient_inputs,
    check_gradient_parameters,
    check_accumulates,
    check_fan_out,
    check_reuse_in_one_pass,
    check_linear_in_upstream_gradient,
    check_eval_mode,
    check_capture,
)
LOSS_CHECKS: tuple[Callable[[OperationCase], None], ...] = (check_loss_scalar,)


# -- collecting and running -----------------------------------------------------------------
def _infos(names: Iterable[Any], plugin: str | Iterable[str] | None, registry: Registry | None) -> list[OperationInfo]:
    """The named ops (default: all, or all of ``plugin``). A named plugin that is not installed,
    failed to load or is blocked raises ``PluginUnavailableError``: asked-for checks never
    silently shrink to fewer."""
    registry = registry or default_registry()
    names = list(names)
    plugins = None if plugin is None else ({plugin} if isinstance(plugin, str) else set(plugin))
    if plugins is not None:
        registry.require(sorted(plugins))
    if not names:
        return registry.operations(plugin=plugins)
    infos = []
    for name in names:
        if isinstance(name, OperationInfo):
            infos.append(name)
        elif isinstance(name, type) and issubclass(name, Operation):
            found = [r for r in registry.operations() if r.cls is name]
            infos.append(found[0] if found else OperationInfo(name.__name__, name, "unregistered"))
        elif isinstance(name, Operation):
            infos.extend(_infos([type(name)], None, registry))
        else:
            info = registry.lookup(str(name))
            if plugins is not None and info.plugin not in plugins and info.distribution not in plugins:
                raise UnknownOperationError(f"operation {name!r} is not provided by plugin(s) {sorted(plugins)}")
            infos.append(info)
    return infos


def collect_cases(
    *names: Any, plugin: str | Iterable[str] | None = None, registry: Registry | None = None, fast: bool = False
) -> list[tuple[OperationCase, Callable[[OperationCase], None]]]:
    """(case, check) pairs for the named ops (default: every registered op, or every op of
    ``plugin``, which must be installed and loaded: else ``PluginUnavailableError``)."""
    pairs: list[tuple[OperationCase, Callable[[OperationCase], None]]] = []
    for info in _infos(names, plugin, registry):
        samples = _usable_samples(info.cls)
        valid = [s for s in samples if isinstance(s, Sample)]
        pairs.append((OperationCase(info, samples[0] if samples else None, 0, fast, _samples=valid), check_has_samples))
        checks = ALL_CHECKS + (LOSS_CHECKS if issubclass(info.cls, Loss) else ())
        for index, sample in enumerate(samples):
            if not isinstance(sample, Sample):
                continue
            case = OperationCase(info, sample, index, fast, _samples=valid)
            pairs.extend((case, check) for check in checks)
    return pairs


def case_id(case: OperationCase, check: Callable[..., Any]) -> str:
    if check is check_has_samples:
        return f"{case.name}-{check.__name__}"
    return f"{case.id}-{check.__name__}"


def _expected(expected_failures: Mapping[str, str] | None, case: OperationCase, check: Callable[..., Any]) -> str | None:
    if not expected_failures:
        return None
    for key in (case_id(case, check), f"{case.name}-{check.__name__}", check.__name__, case.name):
        if key in expected_failures:
            reason = expected_failures[key]
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"expected_failures[{key!r}] needs a written reason")
            return reason
    return None


@dataclass
class ContractResult:
    """One (case, check) outcome: "passed", "failed", "xfailed", "xpassed" (a strict failure) or
    "skipped" (a check it requires failed; ``message`` says which). ``ok``: not a failure."""

    id: str
    operation: str
    sample: str
    check: str
    outcome: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("passed", "xfailed", "skipped")


class ContractReport:
    """What ``check_operation`` found; ``.passed`` is the verdict."""

    def __init__(self, results: list[ContractResult]) -> None:
        self.results = results

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.results)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def failures(self) -> list[ContractResult]:
        return [r for r in self.results if not r.ok]

    @property
    def skipped(self) -> list[ContractResult]:
        return [r for r in self.results if r.outcome == "skipped"]

    def __str__(self) -> str:
        lines = [f"{r.outcome.upper():8} {r.id}" for r in self.results]
        lines += [f"\n{r.message}" for r in self.failures]
        lines.append(f"\n{summary(self.results)}")
        return "\n".join(lines)


def summary(results: Sequence[ContractResult]) -> str:
    """``"N passed, M failed"``, and ``", K skipped"`` when checks were skipped."""
    failed = sum(not r.ok for r in results)
    skipped = sum(r.outcome == "skipped" for r in results)
    text = f"{len(results) - failed - skipped} passed, {failed} failed"
    return text + (f", {skipped} skipped" if skipped else "")


def run_cases(
    pairs: Iterable[tuple[OperationCase, Callable[[OperationCase], None]]],
    expected_failures: Mapping[str, str] | None = None,
) -> Iterator[ContractResult]:
    """Run each (case, check), yielding its result. A check skipped because a check it requires
    failed is "skipped" when that check is part of the run (which then fails by it), and
    "failed", with that check's message, when it is not: a run never passes on skips alone."""
    pairs = list(pairs)
    running = {(id(case), check.__name__) for case, check in pairs}
    for case, check in pairs:
        reason = _expected(expected_failures, case, check)
        try:
            check(case)
        except ContractSkip as exc:
            if (id(case), exc.prerequisite) in running:
                outcome, message = "skipped", str(exc)
            else:
                error = exc.error
                detail = str(error) if isinstance(error, ContractError) else case.message(exc.prerequisite, str(error))
                outcome = "xfailed" if reason else "failed"
                message = f"{case_id(case, check)} cannot run: {exc.prerequisite} (not part of this run) failed:\n{detail}"
        except AssertionError as exc:
            outcome, message = ("xfailed", f"expected: {reason}\n{exc}") if reason else ("failed", str(exc))
        except TapegradError as exc:
            outcome, message = ("xfailed", str(exc)) if reason else ("failed", case.message(check.__name__, str(exc)))
        except SystemExit as exc:  # the op's own code called sys.exit(): its failure, not the run's end
            detail = f"the op's code raised SystemExit({exc.code!r}) (sys.exit)"
            outcome, message = ("xfailed", detail) if reason else ("failed", case.message(check.__name__, detail))
        else:
            outcome, message = ("xpassed", f"{case_id(case, check)} passed but was expected to fail: {reason}") if reason else ("passed", "")
        yield ContractResult(case_id(case, check), case.name, case.sample_name, check.__name__, outcome, message)


def check_operation(
    op_or_name: Any,
    *,
    checks: Iterable[Callable[[OperationCase], None] | str] | None = None,
    expected_failures: Mapping[str, str] | None = None,
    raise_on_failure: bool = True,
    registry: Registry | None = None,
    fast: bool = False,
) -> ContractReport:
    """Run the contract on one op (a registry name, an Operation class or instance).

    ``checks`` limits it to some checks (functions or names); ``expected_failures`` maps a
    check name or test id to a written reason (strict: an expected failure that passes is a
    failure). Raises ``ContractError`` listing every failure unless ``raise_on_failure=False``.
    """
    pairs = collect_cases(op_or_name, registry=registry, fast=fast)
    if checks is not None:
        wanted = {c if isinstance(c, str) else c.__name__ for c in checks}
        pairs = [(case, check) for case, check in pairs if check.__name__ in wanted]
    report = ContractReport(list(run_cases(pairs, expected_failures)))
    if raise_on_failure and not report.passed:
        raise ContractError("\n\n".join(r.message for r in report.failures))
    return report


def parametrize_operations(
    *names: Any,
    plugin: str | Iterable[str] | None = None,
    expected_failures: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> Any:
    """A ``pytest.mark.parametrize("operation, check", ...)`` over every (op sample, check).

    Use as::

        @parametrize_operations(plugin="myops")
        def test_contract(operation, check):
            check(operation)

    Test ids read ``Affine[batch1]-check_gradient_parameters``. ``expected_failures`` maps a
    check name or id to a reason; such tests are strict xfails. A check whose prerequisite
    failed raises ``ContractSkip`` (a ``unittest.SkipTest``): pytest reports it as skipped, and
    the prerequisite's own test fails. A named plugin that is not installed, failed to load
    or is blocked raises ``PluginUnavailableError`` naming it.
    """
    import pytest

    pairs = collect_cases(*names, plugin=plugin, registry=registry)
    if not pairs:
        raise UnknownOperationError(
            f"parametrize_operations: no operation matched (names={list(names)}, plugin={plugin!r})"
        )
    params = []
    for case, check in pairs:
        reason = _expected(expected_failures, case, check)
        marks = [pytest.mark.xfail(reason=reason, strict=True, raises=AssertionError)] if reason else []
        params.append(pytest.param(case, check, id=case_id(case, check), marks=marks))
    return pytest.mark.parametrize("operation, check", params)
