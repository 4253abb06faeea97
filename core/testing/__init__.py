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

The package, in the order to read it:

- ``case``: ``OperationCase`` (one op on one sample) and the building blocks of every check;
  ``requires`` and ``prerequisite``;
- ``checks``: the checks that apply the op once per graph (gradient structure, dtypes,
  determinism, inputs left alone, gradients against central differences, with Variables and
  with plain arrays, float32 against float64, accumulation, linearity, eval mode, losses);
- ``passes``: the checks that apply one op several times (fan-out and reuse in one pass, again
  after its parameters change, a captured step replayed);
- ``running``: ``ALL_CHECKS``, collecting cases, running them, reports.
"""

from __future__ import annotations

from ..errors import ContractError, ContractSkip
from ..operation import Sample
from .case import OperationCase, prerequisite, requires
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
from .running import (
    ALL_CHECKS,
    LOSS_CHECKS,
    ContractReport,
    ContractResult,
    case_id,
    check_operation,
    collect_cases,
    parametrize_operations,
    run_cases,
    summary,
)

__all__ = [
    "ContractError",
    "ContractSkip",
    "ContractReport",
    "ContractResult",
    "OperationCase",
    "Sample",
    "ALL_CHECKS",
    "LOSS_CHECKS",
    "case_id",
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
    "check_gradient_with_plain_inputs",
    "check_float32_matches_float64",
    "check_gradient_structure",
    "check_accumulates",
    "check_fan_out",
    "check_reuse_in_one_pass",
    "check_after_parameters_change",
    "check_linear_in_upstream_gradient",
    "check_eval_mode",
    "check_capture",
    "check_loss_scalar",
]
