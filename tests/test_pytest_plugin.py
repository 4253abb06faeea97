"""The pytest plugin: `pytest --tapegrad-contract[=PLUGIN]` runs the contract with no test files; a named
plugin that is missing, broken or blocked stops the run with exit 2, naming it."""

import pytest

from conftest import make_dist
from tapegrad import testing

# hypothesis is not needed here and takes most of a pytest start-up
ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")
#: The contract over the acme fixture plugin (tox installs it): Softplus and Scale, one sample each.
ACME_CHECKS = 2 * (1 + len(testing.ALL_CHECKS))
#: The checks a structural fault blocks: every check that requires check_gradient_structure.
BLOCKED = sum(1 for check in testing.ALL_CHECKS if getattr(check, "requires", ()))


# -- the contract as pytest items ---------------------------------------------------------------
def test_pytest_option_generates_the_contract_without_test_files(pytester):
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme", *ARGS)
    result.assert_outcomes(passed=ACME_CHECKS)
    result = pytester.runpytest_subprocess("--tapegrad-contract=acm", *ARGS)
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
    result = pytester.runpytest_subprocess("--tapegrad-contract=brokenpack", *ARGS)
    assert result.ret == 1
    out = result.stdout.str()
    assert "Wrong[sample0]-check_gradient_inputs" in out and "analytic" in out


def test_a_structural_fault_fails_one_item_and_skips_the_items_it_blocks(pytester):
    from conftest import REGISTERED_WRONG_SHAPE

    pytester.makeconftest(REGISTERED_WRONG_SHAPE)
    result = pytester.runpytest_subprocess("--tapegrad-contract=shapes", "-rfs", *ARGS)
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1, skipped=BLOCKED)
    out = result.stdout.str()
    assert "contract::WrongGradShape[s]-check_gradient_structure" in out and "FAILED" in out
    assert "check_fan_out cannot run because check_gradient_structure failed (gradient of input 0 has shape (2,)" in out


# -- plugins that are missing, broken or blocked --------------------------------------------------
@pytest.fixture
def kaputt_site(tmp_path, monkeypatch):
    site = make_dist(tmp_path / "site", "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"},
                     {"tgtest_kaputt": "raise ImportError('kaputt')"})
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_a_broken_plugin_warns_without_breaking_pytest_summary(pytester, kaputt_site):
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme", *ARGS)
    result.assert_outcomes(passed=ACME_CHECKS, warnings=1)
    assert "tgtest_kaputt" in result.stdout.str()


def test_a_named_plugin_that_failed_to_load_fails_the_run_with_exit_2(pytester, kaputt_site):
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme,tgtest_kaputt", *ARGS)
    assert result.ret == pytest.ExitCode.INTERRUPTED == 2
    for stream in (result.stdout.str(), result.stderr.str()):
        assert (
            "'tgtest_kaputt' (tgtest-kaputt==0.1) did not load "
            "(failed: import of 'tgtest_kaputt' failed: ImportError: kaputt)" in stream
        )
    assert "passed" not in result.stdout.str()


def test_a_named_plugin_that_is_not_installed_or_blocked_fails_the_run_with_exit_2(pytester, monkeypatch):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "acme")  # (the fixture every test env installs)
    result = pytester.runpytest_subprocess("--tapegrad-contract=math,nope,acme", *ARGS)
    assert result.ret == 2
    for stream in (result.stdout.str(), result.stderr.str()):
        assert "no registered operation matched: plugin 'nope' is not installed" in stream
        assert "plugin 'acme' (tapegrad-acme-ops==" in stream and "blocked: TAPEGRAD_DISABLE_PLUGINS" in stream

