"""The contract suite catches each kind of broken op by the check named for it."""

import sys

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import testing
from tapegrad.testing import ContractError, check_operation, parametrize_operations


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
    def forward(self, ctx, x, idx):
        return x[idx]

    def backward(self, ctx, grad):
        return np.ones(3) * grad.sum(), np.zeros(2)

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal(3), np.array([0, 2])])


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
        check_operation(WrongDerivative)
    assert isinstance(err.value, AssertionError)
    text = str(err.value)
    assert "check_gradient_inputs" in text and "check_fan_out" in text
    assert "input 0[" in text and "analytic" in text and "numeric" in text and "atol 1e-05" in text


def test_failure_message_names_plugin_sample_and_worst_element():
    registry = tg.Registry(entry_points=False)
    registry.register_operation(WrongDerivative, plugin="broken")
    report = check_operation(WrongDerivative, registry=registry, raise_on_failure=False, checks=["check_gradient_inputs"])
    message = report.failures[0].message
    assert "WrongDerivative (plugin 'broken')" in message and "[sample 's']" in message
    assert "tapegrad check WrongDerivative --plugin broken" in message


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


def test_parametrize_operations_ids_read_like_sentences():
    mark = parametrize_operations("Affine")
    ids = [p.id for p in mark.args[1]]
    assert "Affine-check_has_samples" in ids
    assert "Affine[batch1]-check_gradient_parameters" in ids
    with pytest.raises(tg.UnknownOperationError):
        parametrize_operations(plugin="no-such-plugin")


def test_installed_third_party_plugin_passes_through_every_route(pytester):
    # tapegrad-acme-ops is pip-installed into the test environment (see tox.ini)
    report = check_operation("acme:Softplus")
    assert report.passed and len(report.results) > 10
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
    result.assert_outcomes(passed=24)

    cli = pytester.run(sys.executable, "-m", "tapegrad.cli", "check", "--plugin", "acme")
    assert cli.ret == 0 and "Softplus" in cli.stdout.str() and "0 failed" in cli.stdout.str()


def test_pytest_option_generates_the_contract_without_test_files(pytester):
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme", "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=24)
    result = pytester.runpytest_subprocess("--tapegrad-contract=acm", "-q", "-p", "no:cacheprovider")
    assert result.ret != 0
    assert "no registered operation matched" in result.stderr.str()


def test_pytest_option_reports_a_broken_plugin_op_as_failed(pytester):
    pytester.makepyfile(
        conftest="""
        import numpy as np, tapegrad as tg

        @tg.register_operation(plugin="brokenpack")
        class Wrong(tg.Operation):
            def forward(self, ctx, x):
                ctx.save(x)
                return x ** 2
            def backward(self, ctx, grad):
                return grad * ctx.saved[0]
            @classmethod
            def samples(cls, rng):
                yield tg.Sample(inputs=[rng.standard_normal((2, 2))])
        """
    )
    result = pytester.runpytest_subprocess("--tapegrad-contract=brokenpack", "-q", "-p", "no:cacheprovider")
    assert result.ret == 1
    out = result.stdout.str()
    assert "Wrong[sample0]-check_gradient_inputs" in out and "analytic" in out


def test_parametrize_operations_marks_expected_failures_as_strict_xfails():
    registry = tg.Registry(entry_points=False)
    registry.register_operation(WrongDerivative, plugin="broken")
    mark = parametrize_operations(plugin="broken", registry=registry,
                                  expected_failures={"check_gradient_inputs": "derivative off by 2x, tracked"})
    marked = {p.id: p.marks for p in mark.args[1]}
    xfail = marked["WrongDerivative[s]-check_gradient_inputs"][0]
    assert xfail.name == "xfail" and xfail.kwargs["strict"] is True and "tracked" in xfail.kwargs["reason"]
    assert not marked["WrongDerivative[s]-check_eval_mode"]


def test_a_broken_plugin_warns_without_breaking_pytest_summary(pytester, tmp_path, monkeypatch):
    from conftest import make_dist

    site = make_dist(tmp_path / "site", "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"},
                     {"tgtest_kaputt": "raise ImportError('kaputt')"})
    monkeypatch.setenv("PYTHONPATH", str(site))
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme", "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=24, warnings=1)
    assert "tgtest_kaputt" in result.stdout.str()
