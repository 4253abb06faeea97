"""The generic operation contract: every registered op, checked on each of its samples.

Each check is a named function taking an ``OperationCase`` (one op on one sample) and
raising ``ContractError`` (an AssertionError) with a message that names the op, its
plugin, the sample, the check, the input or parameter, the worst element with both
values and the tolerances, and a one-line reproducer. Reached three ways:
``check_operation`` / ``parametrize_operations`` (Python), ``tapegrad check`` (CLI) and
``pytest --tapegrad-contract[=PLUGIN]`` (the pytest plugin).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import TapegradError, UnknownOperationError
from .gradcheck import GradcheckReport, gradcheck
from .graph import Graph
from .operation import Loss, Operation, Sample
from .registry import OperationInfo, Registry, default_registry
from .variable import Variable

__all__ = [
    "ContractError",
    "ContractReport",
    "ContractResult",
    "OperationCase",
    "Sample",
    "ALL_CHECKS",
    "LOSS_CHECKS",
    "check_operation",
    "collect_cases",
    "parametrize_operations",
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
    "check_loss_scalar",
]

SEED = 0
ATOL, RTOL = 1e-5, 1e-3


class ContractError(AssertionError):
    """An operation broke its contract; the message says where and how."""


# -- the case: one op on one sample ---------------------------------------------------------
@dataclass
class OperationCase:
    """One operation on one of its samples (``sample`` is None for an op without samples)."""

    info: OperationInfo
    sample: Sample | None
    index: int = 0
    fast: bool = False
    _report: GradcheckReport | None = field(default=None, repr=False)

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
        out = []
        for i, x in enumerate(self._need_sample().inputs):
            array = np.array(x.value if isinstance(x, Variable) else x)
            if array.dtype.kind == "f":
                array = (array * scale).astype(dtype)
            out.append(Variable(array, name=f"input {i}"))
        return out

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


def _outputs(result: Any) -> tuple[Variable, ...]:
    return result if isinstance(result, tuple) else (result,)


def _float_outputs(result: Any) -> list[Variable]:
    return [o for o in _outputs(result) if o.value.dtype.kind == "f"]


def _seeds(outputs: Iterable[Variable], scale: float = 1.0) -> dict[Variable, np.ndarray]:
    rng = np.random.default_rng(SEED + 1)
    return {o: (rng.standard_normal(o.shape) * scale).astype(o.dtype) for o in outputs}


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


def _guarded(case: OperationCase, check: str, func: Callable[[], Any]) -> Any:
    """Run ``func`` with numpy overflow/invalid raising; turn any error into a ContractError."""
    try:
        with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            return func()
    except ContractError:
        raise
    except Exception as exc:
        raise case.fail(check, f"raised {type(exc).__name__}: {exc}") from exc


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


# -- the checks -----------------------------------------------------------------------------
def check_has_samples(case: OperationCase) -> None:
    """The op yields at least one ``tg.Sample`` from ``samples(cls, rng)`` and can be built from it."""
    cls = case.info.cls
    try:
        samples = list(cls.samples(np.random.default_rng(SEED)))
    except Exception as exc:
        raise case.fail("check_has_samples", f"samples() raised {type(exc).__name__}: {exc}") from exc
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


def check_gradient_inputs(case: OperationCase) -> None:
    """Every float input's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = _guarded(case, "check_gradient_inputs", case.gradcheck_report)
    _report_failures(case, "check_gradient_inputs", report, "input")


def check_gradient_parameters(case: OperationCase) -> None:
    """Every parameter's gradient matches central differences (float64, atol 1e-5, rtol 1e-3)."""
    report = _guarded(case, "check_gradient_parameters", case.gradcheck_report)
    _report_failures(case, "check_gradient_parameters", report, "parameter")


def check_gradient_structure(case: OperationCase) -> None:
    """``backward`` returns one gradient per input, each of its input's shape and float dtype,
    and None for integer inputs."""
    check = "check_gradient_structure"
    graph, op = case.build()
    inputs = case.inputs()
    result = _guarded(case, check, lambda: op.forward(*inputs))
    ctx = graph.forward_ops[-1]
    if case.is_loss:
        _guarded(case, check, lambda: op.loss(case.target()))  # type: ignore[attr-defined]
        upstream: Any = 1.0
    else:
        outs = _outputs(result)
        seeds = _seeds(outs)
        upstream = seeds[outs[0]] if len(outs) == 1 else tuple(seeds[o] for o in outs)
    raw = _guarded(case, check, lambda: op.backward(ctx, upstream))
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


def _two_applications(case: OperationCase, check: str, same_inputs: bool) -> None:
    graph, op = case.build()
    first = case.inputs()
    second = first if same_inputs else case.inputs(scale=1.1)
    variables = first if same_inputs else first + [v for v in second]
    n = len(first)

    def twice(*vs: Variable) -> Any:
        a, b = (vs, vs) if same_inputs else (vs[:n], vs[n:])
        if case.is_loss:
            op.forward(*a)
            total = op.loss(case.target())  # type: ignore[attr-defined]
            op.forward(*b)
            return total + op.loss(case.target())  # type: ignore[attr-defined]
        return _outputs(op.forward(*a)) + _outputs(op.forward(*b))

    for i, v in enumerate(variables):
        v.name = f"input {i}" + ("" if same_inputs or i < n else f" (second application, input {i - n})")
    report = _guarded(
        case,
        check,
        lambda: gradcheck(twice, variables, graph=graph, parameters={f"{op.name}.{k}": p for k, p in op.parameters().items()},
                          atol=ATOL, rtol=RTOL, mode="fast" if case.fast else "auto"),
    )
    if not report:
        raise case.fail(check, "\n  ".join(e.describe() for e in report.failures))


def check_fan_out(case: OperationCase) -> None:
    """The same input Variables fed to two applications receive the sum of both gradients."""
    _two_applications(case, "check_fan_out", same_inputs=True)


def check_reuse_in_one_pass(case: OperationCase) -> None:
    """The op applied twice within one forward pass (different inputs) backpropagates both
    applications correctly: per-call state lives in ctx, not on self."""
    _two_applications(case, "check_reuse_in_one_pass", same_inputs=False)


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


ALL_CHECKS: tuple[Callable[[OperationCase], None], ...] = (
    check_forward_dtype_and_finite,
    check_forward_deterministic,
    check_inputs_not_mutated,
    check_gradient_inputs,
    check_gradient_parameters,
    check_gradient_structure,
    check_accumulates,
    check_fan_out,
    check_reuse_in_one_pass,
    check_linear_in_upstream_gradient,
    check_eval_mode,
)
LOSS_CHECKS: tuple[Callable[[OperationCase], None], ...] = (check_loss_scalar,)


# -- collecting and running -----------------------------------------------------------------
def _infos(names: Iterable[Any], plugin: str | Iterable[str] | None, registry: Registry | None) -> list[OperationInfo]:
    registry = registry or default_registry()
    names = list(names)
    plugins = None if plugin is None else ({plugin} if isinstance(plugin, str) else set(plugin))
    if not names:
        rows = registry.operations()
        if plugins is not None:
            rows = [r for r in rows if r.plugin in plugins or r.distribution in plugins]
        return rows
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
    """(case, check) pairs for the named ops (default: every registered op)."""
    pairs: list[tuple[OperationCase, Callable[[OperationCase], None]]] = []
    for info in _infos(names, plugin, registry):
        try:
            samples = list(info.cls.samples(np.random.default_rng(SEED)))
        except Exception:
            samples = []
        pairs.append((OperationCase(info, samples[0] if samples else None, 0, fast), check_has_samples))
        checks = ALL_CHECKS + (LOSS_CHECKS if issubclass(info.cls, Loss) else ())
        for index, sample in enumerate(samples):
            if not isinstance(sample, Sample):
                continue
            case = OperationCase(info, sample, index, fast)
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
    """One (case, check) outcome: "passed", "failed", "xfailed" or "xpassed" (a strict failure)."""

    id: str
    operation: str
    sample: str
    check: str
    outcome: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("passed", "xfailed")


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

    def __str__(self) -> str:
        lines = [f"{r.outcome.upper():8} {r.id}" for r in self.results]
        lines += [f"\n{r.message}" for r in self.failures]
        total, bad = len(self.results), len(self.failures)
        lines.append(f"\n{total - bad} passed, {bad} failed")
        return "\n".join(lines)


def run_cases(
    pairs: Iterable[tuple[OperationCase, Callable[[OperationCase], None]]],
    expected_failures: Mapping[str, str] | None = None,
) -> Iterator[ContractResult]:
    for case, check in pairs:
        reason = _expected(expected_failures, case, check)
        try:
            check(case)
        except AssertionError as exc:
            outcome, message = ("xfailed", f"expected: {reason}\n{exc}") if reason else ("failed", str(exc))
        except TapegradError as exc:
            outcome, message = ("xfailed", str(exc)) if reason else ("failed", case.message(check.__name__, str(exc)))
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
    check name or id to a reason; such tests are strict xfails.
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
