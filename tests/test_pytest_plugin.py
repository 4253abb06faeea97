"""`pytest --tapegrad-contract=...` when a named plugin is missing, broken or blocked: exit 2, naming it."""

import pytest

from conftest import make_dist

# hypothesis is not needed here and takes most of a pytest start-up
ARGS = ("-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest")


@pytest.fixture
def kaputt_site(tmp_path, monkeypatch):
    site = make_dist(tmp_path / "site", "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"},
                     {"tgtest_kaputt": "raise ImportError('kaputt')"})
    monkeypatch.setenv("PYTHONPATH", str(site))
    return site


def test_a_named_plugin_that_failed_to_load_fails_the_run_with_exit_2(pytester, kaputt_site):
    result = pytester.runpytest_subprocess("--tapegrad-contract=acme,tgtest_kaputt", *ARGS)
    assert result.ret == pytest.ExitCode.INTERRUPTED == 2
    for stream in (result.stdout.str(), result.stderr.str()):
        assert "'tgtest_kaputt' (tgtest-kaputt==0.1) did not load (failed: import of 'tgtest_kaputt' failed: ImportError: kaputt)" in stream
    assert "passed" not in result.stdout.str()


def test_a_named_plugin_that_is_not_installed_or_blocked_fails_the_run_with_exit_2(pytester, monkeypatch):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "acme")  # (the fixture every test env installs)
    result = pytester.runpytest_subprocess("--tapegrad-contract=math,nope,acme", *ARGS)
    assert result.ret == 2
    for stream in (result.stdout.str(), result.stderr.str()):
        assert "no registered operation matched: plugin 'nope' is not installed" in stream
        assert "plugin 'acme' (tapegrad-acme-ops==" in stream and "blocked: TAPEGRAD_DISABLE_PLUGINS" in stream


def test_a_structural_fault_fails_one_item_and_skips_the_items_it_blocks(pytester):
    from conftest import REGISTERED_WRONG_SHAPE

    pytester.makeconftest(REGISTERED_WRONG_SHAPE)
    result = pytester.runpytest_subprocess("--tapegrad-contract=shapes", "-rfs", *ARGS)
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1, skipped=9)
    out = result.stdout.str()
    assert "contract::WrongGradShape[s]-check_gradient_structure" in out and "FAILED" in out
    assert "check_fan_out cannot run because check_gradient_structure failed (gradient of input 0 has shape (2,)" in out
