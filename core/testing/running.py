"""Collecting, running and reporting: which checks run on which cases, and what they found.

``ALL_CHECKS`` (and ``LOSS_CHECKS`` for losses) is the contract; ``collect_cases`` pairs each
check with each sample of each op; ``run_cases`` runs the pairs into ``ContractResult``s.
``check_operation`` (Python), ``parametrize_operations`` (pytest), ``tapegrad check`` (the CLI)
and ``pytest --tapegrad-contract`` (the pytest plugin) are built on these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ContractError, ContractSkip, TapegradError, UnknownOperationError
from ..operation import Loss, Operation, Sample
from ..registry import OperationInfo, Registry, default_registry
from .case import OperationCase, usable_samples
from .checks import (
    check_accumulates,
    check_eval_mode,
    check_float32_matches_float64,
    check_forward_deterministic,
    check_forward_dtype_and_finite,
    check_gradient_inputs,
    check_gradient_parameters,
    check_gradient_structure,
    check_gradient_with_plain_inputs,
    check_has_samples,
    check_inputs_not_mutated,
    check_linear_in_upstream_gradient,
    check_loss_scalar,
)
from .passes import check_after_parameters_change, check_capture, check_fan_out, check_reuse_in_one_pass

__all__ = [
    "ALL_CHECKS",
    "LOSS_CHECKS",
    "ContractReport",
    "ContractResult",
    "case_id",
    "check_operation",
    "collect_cases",
    "parametrize_operations",
    "run_cases",
    "summary",
]

# check_gradient_structure first: most checks require it (``@requires``), and its verdict is
# kept on the case, so it runs once per case whatever the order.
ALL_CHECKS: tuple[Callable[[OperationCase], None], ...] = (
    check_gradient_structure,
    check_forward_dtype_and_finite,
    check_forward_deterministic,
    check_inputs_not_mutated,
    check_gradient_inputs,
    check_gradient_parameters,
    check_gradient_with_plain_inputs,
    check_float32_matches_float64,
    check_accumulates,
    check_fan_out,
    check_reuse_in_one_pass,
    check_after_parameters_change,
    check_linear_in_upstream_gradient,
    check_eval_mode,
    check_capture,
)
LOSS_CHECKS: tuple[Callable[[OperationCase], None], ...] = (check_loss_scalar,)


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
        samples = usable_samples(info.cls)
        valid = [s for s in samples if isinstance(s, Sample)]
        pairs.append(
            (OperationCase(info, samples[0] if samples else None, 0, fast, op_samples=valid), check_has_samples)
        )
        checks = ALL_CHECKS + (LOSS_CHECKS if issubclass(info.cls, Loss) else ())
        for index, sample in enumerate(samples):
            if not isinstance(sample, Sample):
                continue
            case = OperationCase(info, sample, index, fast, op_samples=valid)
            pairs.extend((case, check) for check in checks)
    return pairs


def case_id(case: OperationCase, check: Callable[..., Any]) -> str:
    if check is check_has_samples:
        return f"{case.name}-{check.__name__}"
    return f"{case.id}-{check.__name__}"


def _expected(
    expected_failures: Mapping[str, str] | None, case: OperationCase, check: Callable[..., Any]
) -> str | None:
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
                message = (
                    f"{case_id(case, check)} cannot run: {exc.prerequisite} (not part of this run) failed:\n{detail}"
                )
        except AssertionError as exc:
            outcome, message = ("xfailed", f"expected: {reason}\n{exc}") if reason else ("failed", str(exc))
        except TapegradError as exc:
            outcome, message = ("xfailed", str(exc)) if reason else ("failed", case.message(check.__name__, str(exc)))
        except SystemExit as exc:  # the op's own code called sys.exit(): its failure, not the run's end
            detail = f"the op's code raised SystemExit({exc.code!r}) (sys.exit)"
            outcome, message = ("xfailed", detail) if reason else ("failed", case.message(check.__name__, detail))
        else:
            outcome, message = (
                ("xpassed", f"{case_id(case, check)} passed but was expected to fail: {reason}")
                if reason
                else ("passed", "")
            )
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
