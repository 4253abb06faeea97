"""tapegrad.testing: the contract catches each kind of broken op by the check named for it.

Sections follow the package's modules: the package's public names; ``case`` (messages, checks that
require another); ``checks`` (one application per graph); ``passes`` (several applications of one
op); ``running`` (collecting, running, reporting, parametrize_operations).
"""

import re
import sys

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import testing
from tapegrad.optim import SGD
from tapegrad.testing import ContractError, check_operation, parametrize_operations, passes, running

FIRST_PARTY = ["math", "activations", "layers", "losses"]
#: The contract over the acme fixture plugin: Softplus and Scale, one sample each.
ACME_CHECKS = 2 * (1 + len(testing.ALL_CHECKS))


# -- ops that break the contract, one fault each (used across the sections below) ----------------
def _sample(cls, rng):
    yield tg.Sample(inputs=[rng.standard_normal((3, 2))], name="s")


class WrongDerivative(tg.Operation):
    def forward(self, ctx, x):
        ctx.save(x)
        return x**2

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        return grad * x  # should be 2x

    samples = classmethod(_sample)


class OverwritesParameterGrad(tg.Operation):
    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x):
        ctx.save(x)
        return x * self.w.value

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        self.w.grad = (grad * x).sum(axis=0)  # should be +=
        return grad * self.w.value

    samples = classmethod(_sample)


class StateOnSelf(tg.Operation):
    def forward(self, ctx, x):
        self.x = x  # per-call state on self: wrong when applied twice
        return x**2

    def backward(self, ctx, grad):
        return 2 * grad * self.x

    samples = classmethod(_sample)


class IgnoresUpstream(tg.Operation):
    def forward(self, ctx, x):
        ctx.save(x)
        return x**2

    def backward(self, ctx, grad):
        return 2 * ctx.saved[0]

    samples = classmethod(_sample)


class WrongGradShape(tg.Operation):
    def forward(self, ctx, x):
        return x * 3

    def backward(self, ctx, grad):
        return (grad * 3).sum(axis=0)

    samples = classmethod(_sample)


class NonFiniteForward(tg.Operation):
    def forward(self, ctx, x):
        return x / 0.0

    def backward(self, ctx, grad):
        return grad

    samples = classmethod(_sample)


class NoSamples(tg.Operation):
    def forward(self, ctx, x):
        return x

    def backward(self, ctx, grad):
        return grad


class EvalDiffers(tg.Operation):
    def forward(self, ctx, x):
        return x * (2.0 if ctx.training else 1.0)

    def backward(self, ctx, grad):
        return grad * 2.0

    samples = classmethod(_sample)


class IntegerGradient(tg.Operation):
    integer_inputs = (1,)

    def forward(self, ctx, x, idx):
        return x[idx]

    def backward(self, ctx, grad):
        return np.ones(3) * grad.sum(), np.zeros(2)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal(3), np.array([0, 2])])


class TwoFaults(OverwritesParameterGrad):
    def backward(self, ctx, grad):
        (x,) = ctx.saved
        self.w.grad = (grad * x).sum(axis=0)  # should be +=
        return grad * 2.0 * self.w.value  # should be grad * w


# -- tapegrad.testing, the package: its public names and where each check is defined -------------
#: tapegrad.testing's public names before it became a package: each stays importable from it.
NAMES_BEFORE_THE_SPLIT = [
    "ContractError", "ContractSkip", "ContractReport", "ContractResult", "OperationCase", "Sample", "ALL_CHECKS",
    "LOSS_CHECKS", "check_operation", "collect_cases", "parametrize_operations", "prerequisite", "requires",
    "run_cases", "summary", "case_id", "check_has_samples", "check_forward_dtype_and_finite",
    "check_forward_deterministic", "check_inputs_not_mutated", "check_gradient_inputs", "check_gradient_parameters",
    "check_gradient_structure", "check_accumulates", "check_fan_out", "check_reuse_in_one_pass",
    "check_linear_in_upstream_gradient", "check_eval_mode", "check_capture", "check_loss_scalar",
]


def test_every_public_name_of_the_old_module_is_importable_from_the_package():
    import importlib

    module = importlib.import_module("tapegrad.testing")
    missing = [name for name in NAMES_BEFORE_THE_SPLIT if not hasattr(module, name)]
    assert not missing
    assert set(NAMES_BEFORE_THE_SPLIT) <= set(testing.__all__)
    assert all(hasattr(testing, name) for name in testing.__all__)
    assert testing.ContractError is tg.errors.ContractError and testing.Sample is tg.Sample


def test_every_check_is_exported_and_defined_in_the_module_for_its_kind():
    checks = (*running.ALL_CHECKS, *running.LOSS_CHECKS, testing.check_has_samples)
    assert testing.ALL_CHECKS is running.ALL_CHECKS and testing.LOSS_CHECKS is running.LOSS_CHECKS
    for check in checks:
        assert getattr(testing, check.__name__) is check and check.__name__ in testing.__all__
        assert check.__doc__ and check.__name__.startswith("check_")
    where = {check.__name__: check.__module__ for check in checks}
    assert {name for name, module in where.items() if module == "tapegrad.testing.passes"} == {
        "check_fan_out", "check_reuse_in_one_pass", "check_after_parameters_change", "check_capture",
    }
    assert set(where.values()) == {"tapegrad.testing.checks", "tapegrad.testing.passes"}


def test_no_check_is_named_by_a_string_in_the_package():
    """A check's name in every report is its function's name: no module spells one out (``__all__`` aside)."""
    import ast
    import pathlib

    names = {check.__name__ for check in (*running.ALL_CHECKS, *running.LOSS_CHECKS, testing.check_has_samples)}
    modules = sorted(pathlib.Path(testing.__file__).parent.glob("*.py"))
    assert [m.name for m in modules] == ["__init__.py", "case.py", "checks.py", "passes.py", "running.py"]
    for path in modules:
        tree = ast.parse(path.read_text())
        exported = {
            id(element)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            for element in node.value.elts
        }
        strings = {
            node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exported
        }
        assert not strings & names, (path.name, strings & names)


def test_each_failure_is_reported_under_the_name_of_the_function_that_raised_it():
    report = check_operation(TwoFaults, raise_on_failure=False)
    for result in report.results:
        assert result.id.endswith(f"-{result.check}")
        if not result.ok:
            assert f"] {result.check} failed:" in result.message


# -- tapegrad.testing.case: failure messages; a check that requires another -----------------------
def test_failure_message_names_plugin_sample_and_worst_element():
    registry = tg.Registry(entry_points=False)
    registry.register_operation(WrongDerivative, plugin="broken")
    report = check_operation(
        WrongDerivative, registry=registry, raise_on_failure=False, checks=["check_gradient_inputs"]
    )
    message = report.failures[0].message
    assert "WrongDerivative (plugin 'broken')" in message and "[sample 's']" in message
    assert "tapegrad check WrongDerivative --plugin broken" in message


DEPENDENT = {
    "check_forward_dtype_and_finite", "check_inputs_not_mutated", "check_gradient_inputs",
    "check_gradient_parameters", "check_accumulates", "check_fan_out", "check_reuse_in_one_pass",
    "check_linear_in_upstream_gradient", "check_capture", "check_gradient_with_plain_inputs",
    "check_float32_matches_float64", "check_after_parameters_change",
}


@pytest.mark.parametrize("cls", [WrongGradShape, IntegerGradient])
def test_a_structural_fault_fails_once_and_skips_the_checks_that_cannot_run(cls):
    report = check_operation(cls, raise_on_failure=False)
    assert not report.passed
    assert [r.check for r in report.failures] == ["check_gradient_structure"]
    skipped = {r.check: r.message for r in report.results if r.outcome == "skipped"}
    assert set(skipped) == DEPENDENT and report.skipped and all(r.ok for r in report.skipped)
    assert all("cannot run because check_gradient_structure failed" in m for m in skipped.values())
    passed = {r.check for r in report.results if r.outcome == "passed"}
    assert {"check_forward_deterministic", "check_eval_mode"} <= passed
    assert "SKIPPED" in str(report) and f"1 failed, {len(DEPENDENT)} skipped" in str(report)
    with pytest.raises(ContractError) as err:
        check_operation(cls)
    assert str(err.value).count("failed:") == 1


def test_the_skip_reason_names_the_structural_fault():
    report = check_operation(WrongGradShape, raise_on_failure=False)
    reason = next(r.message for r in report.results if r.check == "check_fan_out")
    assert reason == (
        "WrongGradShape[s]: check_fan_out cannot run because check_gradient_structure failed "
        "(gradient of input 0 has shape (2,), the input has shape (3, 2))"
    )


def test_non_finite_values_are_not_a_structural_fault():
    report = check_operation(NonFiniteForward, raise_on_failure=False)
    assert "check_gradient_structure" not in {r.check for r in report.failures}
    assert "check_forward_dtype_and_finite" in {r.check for r in report.failures}


def test_the_structure_check_runs_once_per_case_in_any_order():
    calls = []

    class Counted(WrongGradShape):
        def backward(self, ctx, grad):
            calls.append(1)
            return super().backward(ctx, grad)

    pairs = list(reversed(testing.collect_cases(Counted)))
    results = {r.check: r.outcome for r in testing.run_cases(pairs)}
    assert results["check_gradient_structure"] == "failed" and results["check_fan_out"] == "skipped"
    assert len(calls) == 1


def test_a_new_check_can_require_the_structure_check(monkeypatch):
    @testing.requires(testing.check_gradient_structure)
    def check_a_later_idea(case):
        """A check added later that runs backward."""
        raise AssertionError("must not run after a structural fault")

    assert check_a_later_idea.__name__ == "check_a_later_idea"
    assert check_a_later_idea.requires == (testing.check_gradient_structure,)
    monkeypatch.setattr(running, "ALL_CHECKS", (*running.ALL_CHECKS, check_a_later_idea))
    report = check_operation(WrongGradShape, raise_on_failure=False)
    assert next(r.outcome for r in report.results if r.check == "check_a_later_idea") == "skipped"


# -- tapegrad.testing.checks: each broken op is caught by the check named for it ------------------
@pytest.mark.parametrize(
    "cls, check",
    [
        (WrongDerivative, "check_gradient_inputs"),
        (OverwritesParameterGrad, "check_accumulates"),
        (StateOnSelf, "check_reuse_in_one_pass"),
        (IgnoresUpstream, "check_linear_in_upstream_gradient"),
        (WrongGradShape, "check_gradient_structure"),
        (NonFiniteForward, "check_forward_dtype_and_finite"),
        (NoSamples, "check_has_samples"),
        (EvalDiffers, "check_eval_mode"),
        (IntegerGradient, "check_gradient_structure"),
    ],
)
def test_each_broken_op_is_caught_by_the_check_named_for_it(cls, check):
    report = check_operation(cls, raise_on_failure=False)
    failed = {r.check for r in report.failures}
    assert check in failed
    message = next(r.message for r in report.failures if r.check == check)
    assert cls.__name__ in message and check in message and "reproduce:" in message
    assert not report.passed and cls.__name__ in str(report)


def test_contract_error_lists_every_failure_and_is_an_assertion_error():
    with pytest.raises(ContractError) as err:
        check_operation(TwoFaults)
    assert isinstance(err.value, AssertionError)
    text = str(err.value)
    assert "check_gradient_inputs" in text and "check_accumulates" in text
    assert "input 0[" in text and "analytic" in text and "numeric" in text and "atol 1e-05" in text


def test_a_wrong_derivative_is_reported_by_the_gradient_check_alone():
    report = check_operation(WrongDerivative, raise_on_failure=False)
    assert {r.check for r in report.failures} == {"check_gradient_inputs"}


def test_endless_samples_fail_check_has_samples_quickly():
    class Endless(tg.Operation):
        def forward(self, ctx, x):
            return x * 1.0

        def backward(self, ctx, grad):
            return grad

        @classmethod
        def samples(cls, rng):
            while True:
                yield tg.Sample(inputs=[rng.standard_normal((2, 2))])

    report = check_operation(Endless, raise_on_failure=False)
    assert [r.check for r in report.failures] == ["check_has_samples"]
    assert "more than 100 samples" in report.failures[0].message


# -- tapegrad.testing.checks: plain-array inputs (check_gradient_with_plain_inputs) ----------------
class SkipsParameterGradForPlainInput(tg.Operation):
    """x @ W whose backward returns early when its input needs no gradient, skipping W's (issue 22)."""

    def __init__(self):
        self.W = self.parameter("W", (3, 2))

    def forward(self, ctx, x):
        ctx.save(x)
        return x @ self.W.value

    def backward(self, ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None
        (x,) = ctx.saved
        self.W.add_grad(x.T @ grad)
        return grad @ self.W.value.T

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((4, 3))], name="batch4")


class SavesOnlyWhenNeeded(tg.Operation):
    """x * w whose forward saves x only when x's gradient is wanted: backward fails on plain data."""

    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x):
        if ctx.needs_input_grad[0]:
            ctx.save(x)
        return x * self.w.value

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        self.w.add_grad((grad * x).sum(axis=0))
        return grad * self.w.value

    samples = classmethod(_sample)


class ProductSkipsUnlessBothNeedGrad(tg.Operation):
    """x * y whose backward gives no gradient at all unless both inputs want one."""

    def forward(self, ctx, x, y):
        ctx.save(x, y)
        return x * y

    def backward(self, ctx, grad):
        if not all(ctx.needs_input_grad):
            return None, None
        x, y = ctx.saved
        return grad * y, grad * x

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((3, 2)), rng.standard_normal((3, 2))], name="pair")


class GradOfParameterInsideAnInputsBranch(tg.Operation):
    """x * w * g, whose backward adds w's gradient inside the branch for g's gradient."""

    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x, g):
        ctx.save(x, g)
        return x * self.w.value * g

    def backward(self, ctx, grad):
        x, g = ctx.saved
        gx = grad * self.w.value * g if ctx.needs_input_grad[0] else None
        gg = None
        if ctx.needs_input_grad[1]:
            gg = grad * x * self.w.value
            self.w.add_grad((grad * x * g).sum(axis=0))  # belongs outside the branch
        return gx, gg

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((3, 2)), rng.standard_normal((3, 2))], name="gated")


def test_plain_inputs_catch_a_parameter_gradient_skipped_when_the_input_needs_none():
    report = check_operation(SkipsParameterGradForPlainInput, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_gradient_with_plain_inputs"}, str(report)  # every other check passes it
    message = failed["check_gradient_with_plain_inputs"]
    assert "SkipsParameterGradForPlainInput (plugin 'unregistered') [sample 'batch4']" in message
    assert "check_gradient_with_plain_inputs failed" in message
    assert "with every input a plain array (ctx.needs_input_grad (False,))" in message
    assert "skips_parameter_grad_for_plain_input_0.W[" in message and "analytic 0 vs numeric" in message


def test_plain_inputs_catch_a_backward_that_fails_when_no_input_needs_a_gradient():
    report = check_operation(SavesOnlyWhenNeeded, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_gradient_with_plain_inputs"}, str(report)
    message = failed["check_gradient_with_plain_inputs"]
    assert "SavesOnlyWhenNeeded" in message and "[sample 's']" in message and "raised BackwardError" in message


def test_plain_inputs_pass_each_float_input_alone_as_a_variable():
    report = check_operation(ProductSkipsUnlessBothNeedGrad, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_gradient_with_plain_inputs"}, str(report)
    message = failed["check_gradient_with_plain_inputs"]
    assert "with input 0 a Variable, the others plain arrays (ctx.needs_input_grad (True, False))" in message
    assert "input 0[" in message and "analytic 0 vs numeric" in message


def test_plain_inputs_catch_a_parameter_gradient_computed_in_an_inputs_branch():
    report = check_operation(GradOfParameterInsideAnInputsBranch, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_gradient_with_plain_inputs"}, str(report)
    message = failed["check_gradient_with_plain_inputs"]
    assert "grad_of_parameter_inside_an_inputs_branch_0.w[" in message and "(False, False)" in message


@pytest.mark.parametrize("name", ["Affine", "Embedding", "LayerNorm", "Multiply", "SoftmaxLoss"])
def test_plain_inputs_pass_correct_ops_that_skip_unwanted_input_gradients(name):
    # Affine returns no input gradient for plain data; Embedding's only input is integer ids
    report = check_operation(name, checks=[testing.check_gradient_with_plain_inputs])
    assert report.passed and len(report.results) >= 2


# -- tapegrad.testing.checks: float32 (check_inputs_not_mutated, check_float32_matches_float64) -----
class TanhInPlaceForFloat32(tg.Operation):
    """tanh, computed into its input array when that is float32 (issue 22)."""

    def forward(self, ctx, x):
        y = np.tanh(x, out=x) if x.dtype == np.float32 else np.tanh(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return grad * (1.0 - y * y)

    samples = classmethod(_sample)


class BackwardWritesIntoFloat32Input(tg.Operation):
    """x * x whose float32 backward computes its gradient in the saved input's array."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x * x

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        if x.dtype == np.float32:
            return np.multiply(x, 2.0 * grad, out=x)
        return 2.0 * grad * x

    samples = classmethod(_sample)


class BackwardWritesIntoFloat32Upstream(tg.Operation):
    """x * x whose float32 backward multiplies the upstream gradient in place."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x * x

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        if grad.dtype == np.float32:
            grad *= 2.0 * x
            return grad
        return 2.0 * grad * x

    samples = classmethod(_sample)


class SignFlipsForFloat32(tg.Operation):
    """x * x whose backward flips its sign for float32 (issue 22)."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x * x

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        g = 2.0 * grad * x
        return -g if g.dtype == np.float32 else g

    samples = classmethod(_sample)


class HalfPrecisionForwardForFloat32(tg.Operation):
    """exp, computed in float16 for float32 inputs: right dtype, wrong digits."""

    def forward(self, ctx, x):
        y = np.exp(x.astype(np.float16)).astype(x.dtype) if x.dtype == np.float32 else np.exp(x)
        ctx.save(y)
        return y

    def backward(self, ctx, grad):
        (y,) = ctx.saved
        return grad * y

    samples = classmethod(_sample)


class ParameterGradOffForFloat32(tg.Operation):
    """x * w whose float32 backward forgets to sum w's gradient over half the batch."""

    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x):
        ctx.save(x)
        return x * self.w.value

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        rows = slice(0, 2) if x.dtype == np.float32 else slice(None)
        self.w.add_grad((grad * x)[rows].sum(axis=0))
        return grad * self.w.value

    samples = classmethod(_sample)


class LossOffForFloat32(tg.Loss):
    """Half the squared error, whose float32 loss value drops the half."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x.copy()

    def loss(self, ctx, target):
        (x,) = ctx.saved
        ctx.diff = x - target
        half = 1.0 if x.dtype == np.float32 else 0.5
        return half * float(np.sum(ctx.diff**2))

    def backward(self, ctx, grad):
        return grad * ctx.diff

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((3, 2))], target=rng.standard_normal((3, 2)), name="s")


class NoiseInItsDtype(tg.Operation):
    """x + noise drawn in the input's dtype (so float32 and float64 draw different numbers): correct."""

    differs_in_eval = True

    def forward(self, ctx, x):
        if not ctx.training:
            return x.copy()
        return x + 0.1 * ctx.rng.standard_normal(x.shape, dtype=x.dtype)

    def backward(self, ctx, grad):
        return grad

    samples = classmethod(_sample)


@pytest.mark.parametrize(
    "cls, detail",
    [
        (TanhInPlaceForFloat32, "forward changed input 0 (float32 graph, float32 inputs) at [0, 0]: "),
        (BackwardWritesIntoFloat32Input, "backward changed input 0 (float32 graph, float32 inputs) at [0, 0]: "),
        (BackwardWritesIntoFloat32Upstream,
         "backward wrote into the upstream gradient array (float32 graph, float32 inputs) at [0, 0]: "),
    ],
)
def test_inputs_left_unmodified_is_checked_in_float32_too(cls, detail):
    report = check_operation(cls, checks=[testing.check_inputs_not_mutated], raise_on_failure=False)
    (result,) = report.failures
    assert f"{cls.__name__} (plugin 'unregistered') [sample 's'] check_inputs_not_mutated failed" in result.message
    assert detail in result.message and "(was " in result.message


def test_an_input_written_into_in_float32_reaches_the_callers_array():
    graph = tg.Graph(dtype=np.float32)
    op = graph.get_operation(TanhInPlaceForFloat32)
    x = np.full((2, 2), 0.5, dtype=np.float32)
    op.forward(x)
    assert x[0, 0] != np.float32(0.5)  # what the check protects callers from


@pytest.mark.parametrize(
    "cls, name",
    [
        (SignFlipsForFloat32, "the gradient of input 0 at "),
        (HalfPrecisionForwardForFloat32, "output 0 at "),
        (ParameterGradOffForFloat32, "the gradient of parameter_grad_off_for_float32_0.w at "),
        (LossOffForFloat32, "the loss at []: "),
    ],
)
def test_float32_results_are_checked_against_float64_on_the_same_values(cls, name):
    report = check_operation(cls, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert "check_float32_matches_float64" in failed, str(report)
    message = failed["check_float32_matches_float64"]
    assert f"{cls.__name__} (plugin 'unregistered') [sample " in message and name in message
    assert " in float32 vs " in message and " in float64 on the same values, in train mode" in message
    assert "tolerance" in message
    assert set(failed) == {"check_float32_matches_float64"}, str(report)  # only the float32 computation is wrong


def test_float32_sign_flip_names_both_values():
    report = check_operation(
        SignFlipsForFloat32, checks=[testing.check_float32_matches_float64], raise_on_failure=False
    )
    message = report.failures[0].message
    got, expected = (float(v) for v in re.findall(r": (-?[\d.]+) in float32 vs (-?[\d.]+) in float64", message)[0])
    assert got == pytest.approx(-expected, rel=1e-6) and expected != 0


class NoiseInItsDtypeScaledInFloat32Eval(NoiseInItsDtype):
    def forward(self, ctx, x):
        if not ctx.training and x.dtype == np.float32:
            return x * 2.0
        return super().forward(ctx, x)


def test_an_op_drawing_random_numbers_in_its_dtype_is_compared_in_eval_mode():
    assert check_operation(NoiseInItsDtype).passed
    report = check_operation(NoiseInItsDtypeScaledInFloat32Eval, raise_on_failure=False)
    assert [r.check for r in report.failures] == ["check_float32_matches_float64"], str(report)
    assert "output 0 at [" in report.failures[0].message
    assert "in eval mode only (its random draws depend on the dtype)" in report.failures[0].message


# -- tapegrad.testing.passes: the same inputs fed to three applications (check_fan_out) -----------
class Square(tg.Operation):
    """x * x on a shape-() sample."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x * x

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        return 2.0 * grad * x

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[np.array(0.7)], name="scalar")


class ScalarGain(tg.Operation):
    """w * x with a shape-() parameter w."""

    def __init__(self):
        self.w = self.parameter("w", (), init="ones")

    def forward(self, ctx, x):
        ctx.save(x)
        return x * self.w.value

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        self.w.add_grad(np.sum(grad * x))
        return grad * self.w.value

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))], name="matrix")
        yield tg.Sample(inputs=[np.array(-1.3)], name="scalar")


class PassThrough(tg.Operation):
    """Returns the upstream gradient itself as its input's gradient (allowed)."""

    def forward(self, ctx, x):
        return x.copy()

    def backward(self, ctx, grad):
        return grad

    samples = classmethod(_sample)


class AddOneArray(tg.Operation):
    """Returns one array as the gradient of both inputs (allowed)."""

    def forward(self, ctx, x, y):
        return x + y

    def backward(self, ctx, grad):
        return grad, grad

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((3, 2)), rng.standard_normal((3, 2))], name="s")
        yield tg.Sample(inputs=[np.array(0.5), np.array(-2.0)], name="scalars")


class ScalarHalfSquareLoss(tg.Loss):
    """0.5 * (x - t)^2 on shape-() inputs and targets."""

    def forward(self, ctx, x):
        ctx.save(x)
        return x.copy()

    def loss(self, ctx, target):
        (x,) = ctx.saved
        ctx.diff = x - target
        return 0.5 * float(ctx.diff**2)

    def backward(self, ctx, grad):
        return grad * ctx.diff

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[np.array(0.3)], target=np.array(-0.4), name="scalar")


class GradientBufferOnSelf(tg.Operation):
    """Keeps one gradient buffer on self and returns it on every call."""

    _buffer = None

    def forward(self, ctx, x):
        ctx.save(x)
        return x * x

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        if self._buffer is None or self._buffer.shape != x.shape:
            self._buffer = np.empty_like(x)
        np.multiply(grad, 2.0 * x, out=self._buffer)
        return self._buffer

    samples = classmethod(_sample)


def _old_accumulation(self, grad):
    """The rule that let the 0-d bug through: for shape (), ``current + grad`` is a numpy scalar,
    and ``current += grad`` then rebinds a local: every contribution after the second is lost."""
    grad = self._checked(grad)
    if self._grad is None:
        self._grad, self._grad_is_borrowed = grad, True
    elif self._grad_is_borrowed:
        self._grad, self._grad_is_borrowed = self._grad + grad, False
    else:
        current = self._grad
        current += grad


def _accumulation_into_the_first_contribution(self, grad):
    """A rule that adds into the first contribution, an array others may hold."""
    grad = self._checked(grad)
    if self._grad is None:
        self._grad, self._grad_is_borrowed = grad, True
    else:
        np.add(self._grad, grad, out=self._grad)


@pytest.mark.parametrize("cls", [Square, ScalarGain, PassThrough, AddOneArray, ScalarHalfSquareLoss])
def test_correct_ops_pass_the_whole_contract_at_shape_0d_with_shared_and_passed_through_arrays(cls):
    assert check_operation(cls).passed


@pytest.mark.parametrize(
    "cls, name", [(Square, "input 0"), (ScalarGain, "scalar_gain_0.w"), (ScalarHalfSquareLoss, "input 0")]
)
def test_fan_out_catches_a_lost_third_contribution_that_two_applications_miss(monkeypatch, cls, name):
    monkeypatch.setattr(tg.Variable, "add_grad", _old_accumulation)
    report = check_operation(cls, checks=["check_fan_out"], raise_on_failure=False)
    assert not report.passed
    message = report.failures[0].message
    assert f"{name} fed to 3 applications" in message and "contribution (arriving 3rd) was lost" in message
    assert "at []" in message  # the shape-() element, by its index
    monkeypatch.setattr(passes, "FAN_OUT", 2)  # the old check's two applications
    assert check_operation(cls, checks=["check_fan_out"], raise_on_failure=False).passed


@pytest.mark.parametrize("cls", [PassThrough, AddOneArray, ScalarGain])
def test_fan_out_catches_accumulation_that_writes_into_an_array_it_was_handed(monkeypatch, cls):
    # PassThrough: the first contribution is the upstream gradient; AddOneArray: one array for two inputs
    monkeypatch.setattr(tg.Variable, "add_grad", _accumulation_into_the_first_contribution)
    report = check_operation(cls, checks=["check_fan_out"], raise_on_failure=False)
    assert not report.passed
    message = report.failures[0].message
    assert "was written into later in the same backward pass" in message and "application 3" in message


def test_fan_out_and_reuse_catch_a_gradient_buffer_reused_across_calls():
    report = check_operation(GradientBufferOnSelf, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_fan_out", "check_reuse_in_one_pass"}
    assert (
        "the gradient of input 0 that backward returned for application 3 was written into" in failed["check_fan_out"]
    )


def test_fan_out_names_an_overwritten_contribution():
    report = check_operation(OverwritesParameterGrad, checks=["check_fan_out"], raise_on_failure=False)
    message = report.failures[0].message
    assert "overwrites_parameter_grad_0.w fed to 3 applications" in message
    assert "application 1's contribution (arriving 3rd) was the only one kept (the others were overwritten)" in message


# -- tapegrad.testing.passes: independent inputs in one pass (check_reuse_in_one_pass) ------------
def _one(shape):
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal(shape)], name="s")

    return classmethod(samples)


class ReluMaskOnSelf(tg.Operation):
    def forward(self, ctx, x):
        self.mask = x > 0
        return np.where(self.mask, x, 0.0)

    def backward(self, ctx, grad):
        return grad * self.mask

    samples = _one((3, 4))


class LeakyReluSlopeOnSelf(tg.Operation):
    def __init__(self, alpha=0.01):
        self.alpha = alpha

    def forward(self, ctx, x):
        self.slope = np.where(x > 0, 1.0, self.alpha).astype(x.dtype)
        return x * self.slope

    def backward(self, ctx, grad):
        return grad * self.slope

    @classmethod
    def samples(cls, rng):
        # x and 1.1x (the old check's second application) have the same signs, so the same slope
        yield tg.Sample(kwargs={"alpha": 0.2}, inputs=[np.array([[-2.0, -0.5, 0.5, 2.0]])], name="alpha")


class ScalarReluMaskOnSelf(ReluMaskOnSelf):
    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[np.array(0.8)], name="scalar")  # no other shape to try


class SqrtOutputOnSelf(tg.Operation):
    """Its input must stay positive: negated values are refused, so other positive ones are used."""

    def forward(self, ctx, x):
        self.y = np.sqrt(x)
        return self.y

    def backward(self, ctx, grad):
        return grad / (2.0 * self.y)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[np.array(2.5)], name="scalar")


class MaskCachedInBackward(tg.Operation):
    _mask = None

    def forward(self, ctx, x):
        ctx.save(x)
        return np.maximum(x, 0.0)

    def backward(self, ctx, grad):
        if self._mask is None:
            self._mask = ctx.saved[0] > 0
        return grad * self._mask

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[np.array([[-1.0, 2.0], [3.0, -4.0]])], name="s")


class SumShapeOnSelf(tg.Operation):
    def forward(self, ctx, x):
        self.shape = x.shape
        return np.sum(x)

    def backward(self, ctx, grad):
        return np.broadcast_to(grad, self.shape).copy()

    samples = _one((2, 3))


class ShapeOfFirstCall(SumShapeOnSelf):
    def forward(self, ctx, x):
        if not hasattr(self, "shape"):
            self.shape = x.shape
        return np.sum(x)


class MeanShapeOnSelf(tg.Operation):
    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, ctx, x):
        self.shape = x.shape
        return x.mean(axis=self.axis)

    def backward(self, ctx, grad):
        return np.broadcast_to(np.expand_dims(grad, self.axis) / self.shape[self.axis], self.shape).copy()

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(args=[1], inputs=[rng.standard_normal((2, 3))], name="rows")
        yield tg.Sample(args=[0], inputs=[rng.standard_normal((4, 3))], name="columns")
        yield tg.Sample(args=[1], inputs=[rng.standard_normal((2, 5))], name="wide_rows")


class ReshapeShapeOnSelf(tg.Operation):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, ctx, x):
        self.input_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, ctx, grad):
        return grad.reshape(self.input_shape)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(args=[(-1, 3)], inputs=[rng.standard_normal((2, 3))], name="s")


class FlattenShapeOnSelf(ReshapeShapeOnSelf):
    @classmethod
    def samples(cls, rng):
        yield tg.Sample(args=[(1, 6)], inputs=[rng.standard_normal((2, 3))], name="s")  # no batch to double


class ConcatSizesOnSelf(tg.Operation):
    def forward(self, ctx, *xs):
        self.sizes = [x.shape[0] for x in xs]
        return np.concatenate(xs, axis=0)

    def backward(self, ctx, grad):
        return tuple(np.split(grad, np.cumsum(self.sizes)[:-1], axis=0))

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((1, 3)), rng.standard_normal((2, 3))], name="s")


class AddShapesOnSelf(tg.Operation):
    def forward(self, ctx, x, y):
        self.shapes = (x.shape, y.shape)
        return x + y

    def backward(self, ctx, grad):
        gy = grad
        while gy.ndim > len(self.shapes[1]):
            gy = gy.sum(axis=0)
        return grad.copy(), gy

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((4, 3)), rng.standard_normal((4, 3))], name="same")
        yield tg.Sample(inputs=[rng.standard_normal((4, 3)), rng.standard_normal(3)], name="row")


class SubtractShapesOnSelf(AddShapesOnSelf):
    def forward(self, ctx, x, y):
        self.shapes = (x.shape, y.shape)
        return x - y

    def backward(self, ctx, grad):
        gx, gy = AddShapesOnSelf.backward(self, ctx, grad)
        return gx, -gy


class DropoutMaskInCtx(tg.Operation):
    """Stochastic, state in ctx: correct, and replayed with the same masks by the check."""

    def forward(self, ctx, x):
        ctx.mask = ctx.rng.random(x.shape) > 0.5
        return x * ctx.mask

    def backward(self, ctx, grad):
        return grad * ctx.mask

    samples = _one((4, 3))


@pytest.mark.parametrize(
    "cls, second",
    [
        (ReluMaskOnSelf, "same shapes, other values and signs"),
        (LeakyReluSlopeOnSelf, "same shapes, other values and signs"),
        (ScalarReluMaskOnSelf, "same shapes, other values and signs"),
        (SqrtOutputOnSelf, "same shapes, values shifted and doubled"),
        (MaskCachedInBackward, "same shapes, other values and signs"),
        (SumShapeOnSelf, "sample 's' with its batch doubled"),
        (ShapeOfFirstCall, "sample 's' with its batch doubled"),
        (MeanShapeOnSelf, "sample 'wide_rows'"),
        (ReshapeShapeOnSelf, "sample 's' with its batch doubled"),
        (FlattenShapeOnSelf, "sample 's' with its shapes reversed"),
        (ConcatSizesOnSelf, "sample 's' with its batch doubled"),
        (AddShapesOnSelf, "sample 'row'"),
        (SubtractShapesOnSelf, "sample 'row'"),
    ],
)
def test_reuse_catches_per_call_state_on_self_that_a_scaled_second_input_hides(cls, second):
    report = check_operation(cls, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert "check_reuse_in_one_pass" in failed, str(report)
    message = failed["check_reuse_in_one_pass"]
    assert second in message and "must live in ctx, not on self" in message
    assert set(failed) <= {"check_reuse_in_one_pass", "check_fan_out"}  # gradients alone are right


def test_reuse_passes_a_stochastic_op_whose_state_is_in_ctx():
    assert check_operation(DropoutMaskInCtx).passed


def test_reuse_with_values_only_catches_a_mask_on_self():
    class ThreeByTwoOnly(ReluMaskOnSelf):
        def forward(self, ctx, x):
            if x.shape != (3, 2):
                raise tg.ShapeError("expects (3, 2)")
            return super().forward(ctx, x)

        samples = classmethod(_sample)

    message = check_operation(
        ThreeByTwoOnly, checks=["check_reuse_in_one_pass"], raise_on_failure=False
    ).results[0].message
    assert "other values and signs" in message and "batch doubled" not in message
    assert "when application 1 runs alone" in message


# -- tapegrad.testing.passes: after the parameters change (check_after_parameters_change) ----------
class CachesTransposedWeight(tg.Operation):
    """x @ W whose backward caches W's transpose on first use (issue 22)."""

    _WT = None

    def __init__(self):
        self.W = self.parameter("W", (3, 2))

    def forward(self, ctx, x):
        ctx.save(x)
        return x @ self.W.value

    def backward(self, ctx, grad):
        if self._WT is None:
            self._WT = self.W.value.T.copy()
        (x,) = ctx.saved
        self.W.add_grad(x.T @ grad)
        return grad @ self._WT

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((4, 3))], name="batch4")


class CachesTransposedView(CachesTransposedWeight):
    """The same, caching a view: right after an update in place, stale after an assignment."""

    def backward(self, ctx, grad):
        if self._WT is None:
            self._WT = self.W.value.T
        (x,) = ctx.saved
        self.W.add_grad(x.T @ grad)
        return grad @ self._WT


class CachesScaleInForward(tg.Operation):
    """x * exp(s) whose forward computes exp(s) once."""

    _scale = None

    def __init__(self):
        self.s = self.parameter("s", (2,), init="zeros")

    def forward(self, ctx, x):
        if self._scale is None:
            self._scale = np.exp(self.s.value)
        ctx.save(x, self._scale)
        return x * self._scale

    def backward(self, ctx, grad):
        x, scale = ctx.saved
        self.s.add_grad((grad * x * scale).sum(axis=0))
        return grad * scale

    samples = classmethod(_sample)


class CachesParameterFactor(tg.Operation):
    """x * w**2 whose backward keeps 2w from its first call for w's own gradient."""

    _twice = None

    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x):
        ctx.save(x)
        return x * self.w.value**2

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        if self._twice is None:
            self._twice = 2.0 * self.w.value
        self.w.add_grad((grad * x).sum(axis=0) * self._twice)
        return grad * self.w.value**2

    samples = classmethod(_sample)


class PositiveScale(tg.Operation):
    """x * log(w), defined for w > 0 only (it refuses the rest): correct."""

    refused = 0

    def __init__(self):
        self.w = self.parameter("w", (2, 3), init=lambda shape, rng: np.full(shape, 0.02))

    def forward(self, ctx, x):
        if (self.w.value <= 0).any():
            type(self).refused += 1
            raise tg.OperationError(f"{self.label}: w must be positive")
        ctx.save(x)
        return x * np.log(self.w.value)

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        self.w.add_grad((grad * x).sum(axis=0) / self.w.value)
        return grad * np.log(self.w.value)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((4, 2, 3))], name="s")


class FixedWeightsOnly(tg.Operation):
    """x * w that refuses any w but its initial ones: nothing can be checked after a change."""

    def __init__(self):
        self.w = self.parameter("w", (2,), init="ones")

    def forward(self, ctx, x):
        if not (self.w.value == 1.0).all():
            raise tg.OperationError(f"{self.label}: w must stay 1")
        return x * self.w.value

    def backward(self, ctx, grad):
        self.w.add_grad(np.zeros(2))
        return grad * self.w.value

    samples = classmethod(_sample)


def test_after_parameters_change_catches_a_transposed_weight_cached_on_first_use():
    report = check_operation(CachesTransposedWeight, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_after_parameters_change"}, str(report)  # every other check passes it
    message = failed["check_after_parameters_change"]
    assert "CachesTransposedWeight (plugin 'unregistered') [sample 'batch4']" in message
    assert "check_after_parameters_change failed" in message
    assert "after its parameters (caches_transposed_weight_0.W) changed in place (as an optimizer's step" in message
    assert "the gradient of input 0 differs from a fresh op's holding the new values, at [" in message
    assert re.search(r": -?[\d.]+ vs expected -?[\d.]+ \(atol", message)


@pytest.mark.parametrize(
    "cls, how, what, also",
    [
        (CachesTransposedView, "by assigning new arrays (variable.value = ...)", "the gradient of input 0", set()),
        (CachesParameterFactor, "in place", "the gradient of caches_parameter_factor_0.w", set()),
        # (central differences move the parameter too, and see the forward's stale value)
        (CachesScaleInForward, "in place", "output 0",
         {"check_gradient_parameters", "check_gradient_with_plain_inputs"}),
    ],
)
def test_after_parameters_change_catches_other_values_kept_from_an_earlier_application(cls, how, what, also):
    report = check_operation(cls, raise_on_failure=False)
    failed = {r.check: r.message for r in report.failures}
    assert set(failed) == {"check_after_parameters_change", *also}, str(report)
    message = failed["check_after_parameters_change"]
    assert f"changed {how}" in message and f", {what} differs from a fresh op's holding the new values" in message


def test_after_parameters_change_matches_what_training_does():
    """The issue's numbers: after SGD steps, the cached transpose gives a stale input gradient."""
    graph = tg.Graph(seed=0)
    op = graph.get_operation(CachesTransposedWeight)
    optimizer = SGD(graph.parameter, lr=0.5)
    x = np.random.default_rng(1).standard_normal((4, 3))
    for _ in range(3):
        inputs = tg.Variable(x)
        graph.backward(grads={op.forward(inputs): np.ones((4, 2))})
        optimizer.step()
        optimizer.zero_grad()
    inputs = tg.Variable(x)
    graph.backward(grads={op.forward(inputs): np.ones((4, 2))})
    assert not np.allclose(inputs.grad, np.ones((4, 2)) @ op.W.value.T)


def test_after_parameters_change_uses_values_a_parameter_with_a_domain_accepts():
    PositiveScale.refused = 0
    report = check_operation(PositiveScale)
    assert report.passed
    assert PositiveScale.refused > 0  # the first values tried included w <= 0, and others were used


def test_after_parameters_change_says_so_when_no_changed_values_run():
    report = check_operation(FixedWeightsOnly, checks=[testing.check_after_parameters_change], raise_on_failure=False)
    (result,) = report.failures
    assert "no changed parameter values gave a fresh op finite results" in result.message
    assert "w must stay 1" in result.message


# -- tapegrad.testing.passes: a captured step recorded and replayed (check_capture) ---------------
class ReadsCtxInputs(tg.Operation):
    """x * x, whose backward reads the input back from ctx.inputs instead of saving it."""

    def forward(self, ctx, x):
        return x * x

    def backward(self, ctx, grad):
        x = ctx.inputs[0]
        return 2.0 * grad * (x.value if isinstance(x, tg.Variable) else x)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))])


class SavesWhatItWasGiven(Square):
    """Square (x * x, correct: it saves its input in ctx) on a matrix and a scalar."""

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))])
        yield tg.Sample(inputs=[np.array(0.5)], name="scalar")


def test_check_capture_catches_an_op_that_reads_ctx_inputs_and_passes_a_correct_one():
    report = check_operation(ReadsCtxInputs, raise_on_failure=False)
    failed = {r.check for r in report.failures}
    assert failed == {"check_capture"}, failed  # every other check passes: only a replay shows it
    message = next(r.message for r in report.failures)
    assert "ReadsCtxInputs" in message and "ctx.inputs" in message and "replay" in message
    assert check_operation(SavesWhatItWasGiven, checks=["check_capture"]).passed


def test_check_capture_passes_every_array_its_ops_read_as_an_argument_of_the_step(monkeypatch):
    """The step takes the inputs, the loss target and the upstream gradients as arguments: its
    records freeze no array the step made itself (a stricter capture may refuse those)."""
    steps = []
    capture = tg.Graph.capture

    def spy(self, fn=None, **options):
        step = capture(self, fn, **options)
        steps.append(step)
        return step

    monkeypatch.setattr(tg.Graph, "capture", spy)
    pairs = [
        (case, check) for case, check in testing.collect_cases(plugin=FIRST_PARTY) if check is testing.check_capture
    ]
    results = list(testing.run_cases(pairs))
    assert results and all(r.outcome == "passed" for r in results)
    records = [record for step in steps for record in step.records.values()]
    assert len(records) == len(pairs)
    kinds = {source.kind for record in records for app in record.recording.apps for source in app.sources}
    assert kinds <= {"argument", "output", "variable"}  # nothing made inside the step
    losses = [record for record in records if any(a.op.is_loss for a in record.recording.apps)]
    assert losses and all(len(record.shapes) >= 2 for record in losses)  # inputs and the target


# -- tapegrad.testing.running: collecting, choosing checks, expected failures, parametrize -------
def test_every_check_is_collected_for_every_sample_and_the_loss_checks_for_losses():
    checks: dict[str, list] = {}
    for case, check in testing.collect_cases("Sigmoid", "SoftmaxLoss"):
        checks.setdefault(case.name if check is testing.check_has_samples else case.id, []).append(check)
    assert checks.pop("Sigmoid") == checks.pop("SoftmaxLoss") == [testing.check_has_samples]
    assert (
        sum(key.startswith("Sigmoid[") for key in checks) >= 2
        and sum(key.startswith("SoftmaxLoss[") for key in checks) >= 2
    )
    for key, collected in checks.items():
        expected = testing.ALL_CHECKS + (testing.LOSS_CHECKS if key.startswith("SoftmaxLoss") else ())
        assert tuple(collected) == expected, key
    assert testing.check_capture in testing.ALL_CHECKS and testing.check_after_parameters_change in testing.ALL_CHECKS


def test_checks_and_expected_failures():
    report = check_operation("Sigmoid", checks=[testing.check_gradient_inputs])
    assert {r.check for r in report.results} == {"check_gradient_inputs"}
    report = check_operation(WrongDerivative, expected_failures={"check_gradient_inputs": "known"},
                             checks=["check_gradient_inputs"], raise_on_failure=False)
    assert report.passed and report.results[0].outcome == "xfailed"
    strict = check_operation("Sigmoid", expected_failures={"check_eval_mode": "wrongly expected"},
                             checks=["check_eval_mode"], raise_on_failure=False)
    assert not strict.passed and strict.results[0].outcome == "xpassed"
    with pytest.raises(ValueError, match="reason"):
        check_operation(WrongDerivative, expected_failures={"check_gradient_inputs": ""})


def test_a_check_whose_prerequisite_is_not_in_the_run_fails_with_its_message():
    report = check_operation(WrongGradShape, checks=["check_gradient_inputs"], raise_on_failure=False)
    (result,) = report.results
    assert result.outcome == "failed" and not report.passed
    assert "check_gradient_structure (not part of this run) failed" in result.message
    assert "gradient of input 0 has shape (2,)" in result.message


def test_parametrize_operations_ids_read_like_sentences():
    mark = parametrize_operations("Affine")
    ids = [p.id for p in mark.args[1]]
    assert "Affine-check_has_samples" in ids
    assert "Affine[batch1]-check_gradient_parameters" in ids
    with pytest.raises(tg.PluginUnavailableError, match="'no-such-plugin' is not installed"):
        parametrize_operations(plugin="no-such-plugin")


def test_parametrize_operations_marks_expected_failures_as_strict_xfails():
    registry = tg.Registry(entry_points=False)
    registry.register_operation(WrongDerivative, plugin="broken")
    mark = parametrize_operations(plugin="broken", registry=registry,
                                  expected_failures={"check_gradient_inputs": "derivative off by 2x, tracked"})
    marked = {p.id: p.marks for p in mark.args[1]}
    xfail = marked["WrongDerivative[s]-check_gradient_inputs"][0]
    assert xfail.name == "xfail" and xfail.kwargs["strict"] is True and "tracked" in xfail.kwargs["reason"]
    assert not marked["WrongDerivative[s]-check_eval_mode"]


def test_parametrize_operations_skips_what_a_structural_fault_blocks(pytester):
    from conftest import REGISTERED_WRONG_SHAPE

    pytester.makeconftest(REGISTERED_WRONG_SHAPE)
    pytester.makepyfile(
        """
        from tapegrad.testing import parametrize_operations

        @parametrize_operations(plugin="shapes")
        def test_contract(operation, check):
            check(operation)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=3, failed=1, skipped=len(DEPENDENT))
    out = result.stdout.str()
    assert "cannot run because check_gradient_structure failed (gradient of input 0 has shape (2,)" in out


def test_installed_third_party_plugin_passes_through_every_route(pytester):
    # tapegrad-acme-ops is pip-installed into the test environment (see tox.ini)
    report = check_operation("acme:Softplus")
    assert report.passed and len(report.results) == ACME_CHECKS // 2
    assert check_operation("Scale").passed

    pytester.makepyfile(
        """
        from tapegrad.testing import parametrize_operations

        @parametrize_operations(plugin="acme")
        def test_contract(operation, check):
            check(operation)
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=ACME_CHECKS)

    cli = pytester.run(sys.executable, "-m", "tapegrad.cli", "check", "--plugin", "acme")
    assert cli.ret == 0 and "Softplus" in cli.stdout.str() and "0 failed" in cli.stdout.str()


def test_collect_and_parametrize_fail_for_a_named_plugin_that_is_missing_or_failed(plugin_dir):
    from conftest import make_dist

    make_dist(plugin_dir, "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"},
              {"tgtest_kaputt": "raise ImportError('kaputt')"})
    with (
        pytest.warns(tg.PluginWarning),
        pytest.raises(tg.PluginUnavailableError, match="'tgtest_kaputt' .*ImportError: kaputt"),
    ):
        parametrize_operations(plugin=["acme", "tgtest_kaputt"])
    with pytest.raises(tg.PluginUnavailableError, match="'brokenops' is not installed"):
        parametrize_operations(plugin=["acme", "brokenops"])
    with pytest.raises(tg.PluginUnavailableError, match="'brokenops'"):
        testing.collect_cases(plugin="brokenops")
    with pytest.raises(tg.PluginUnavailableError, match="'brokenops'"):
        testing.collect_cases("Softplus", plugin=["acme", "brokenops"])
    assert {case.info.plugin for case, _ in testing.collect_cases(plugin=["acme"])} == {"acme"}
    assert {case.info.plugin for case, _ in testing.collect_cases(plugin="tapegrad-acme-ops")} == {"acme"}


class _Exits(tg.Operation):
    """A correct op, but its code calls sys.exit where ``where`` says."""

    where = ""

    def __init__(self, n: int = 3) -> None:
        if self.where == "init":
            raise SystemExit(3)

    def forward(self, ctx, x):
        if self.where == "forward" and x.shape[0] == 4:
            sys.exit(0)
        return x * 2.0

    def backward(self, ctx, grad):
        if self.where == "backward":
            sys.exit(0)
        return grad * 2.0

    @classmethod
    def samples(cls, rng):
        if cls.where == "samples":
            sys.exit(0)
        yield tg.Sample(inputs=[rng.standard_normal((4, 3))])


@pytest.mark.parametrize("where", ["samples", "init", "forward", "backward"])
def test_an_op_calling_sys_exit_fails_the_contract_instead_of_ending_the_run(where, capsys):
    from tapegrad.cli import main

    cls = type(f"Exits{where.title()}", (_Exits,), {"where": where})
    report = check_operation(cls, raise_on_failure=False)
    assert not report.passed and report.failures
    first = report.failures[0]
    assert cls.__name__ in first.message and first.check in first.message
    assert "SystemExit" in "".join(r.message for r in report.failures)
    tg.register_operation(cls, plugin=f"exits{where}")  # (the default registry is fresh per test)
    code = main(["check", cls.__name__])
    out = capsys.readouterr().out
    assert code == 1 and cls.__name__ in out and "SystemExit" in out and " 0 failed" not in out
