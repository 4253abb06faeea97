"""`tapegrad check` and `tapegrad ops`/`plugins` with plugins that are missing, broken or blocked; the check table."""

import json

import pytest

import tapegrad as tg
from conftest import WRONG_SHAPE, make_dist, op_module
from tapegrad import testing
from tapegrad.cli import main
from tapegrad.testing import running

KAPUTT = {"tgtest_kaputt": "raise ImportError('kaputt')"}


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def kaputt(plugin_dir):
    """A distribution tgtest-kaputt whose plugin tgtest_kaputt fails to import."""
    make_dist(plugin_dir, "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"}, KAPUTT)
    return plugin_dir


@pytest.mark.parametrize(
    "plugins", ["acme,tgtest_kaputt", "tgtest_kaputt", "tgtest-kaputt", "acme, tgtest_kaputt ,acme"]
)
def test_check_exits_2_when_a_named_plugin_failed_to_load(capsys, kaputt, plugins):
    with pytest.warns(tg.PluginWarning):
        code, out, err = run(capsys, "check", "--plugin", plugins)
    assert code == 2 and out == ""
    assert err.startswith("tapegrad check: error: ") and err.count("\n") == 1
    assert (
        "'tgtest_kaputt' (tgtest-kaputt==0.1) did not load "
        "(failed: import of 'tgtest_kaputt' failed: ImportError: kaputt)" in err
    )


def test_check_exits_2_when_a_named_plugin_is_not_installed_or_blocked(capsys, monkeypatch):
    code, _, err = run(capsys, "check", "--plugin", "acme,nope")
    assert code == 2 and "plugin 'nope' is not installed" in err and "no operation matched" in err
    code, _, err = run(capsys, "check", "Softplus", "--plugin", "acme,nope")
    assert code == 2 and "'nope'" in err
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "acme")
    tg.registry.reset_default_registry()
    code, _, err = run(capsys, "check", "--plugin", "acme,layers")
    assert code == 2 and "'acme' (tapegrad-acme-ops==" in err and "blocked: TAPEGRAD_DISABLE_PLUGINS" in err
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "")
    monkeypatch.setenv("TAPEGRAD_AUTOLOAD", "0")
    tg.registry.reset_default_registry()
    code, _, err = run(capsys, "check", "--plugin", "acme")
    assert code == 2 and "blocked: TAPEGRAD_AUTOLOAD=0" in err


def test_check_of_a_qualified_name_in_a_failed_plugin_names_the_load_error(capsys, kaputt):
    with pytest.warns(tg.PluginWarning):
        code, _, err = run(capsys, "check", "tgtest_kaputt:Anything")
    assert code == 2 and "ImportError: kaputt" in err


def test_check_of_named_plugins_that_loaded_still_passes(capsys, kaputt):
    with pytest.warns(tg.PluginWarning):
        code, out, _ = run(capsys, "check", "Softplus", "--plugin", "acme", "--fast")
    assert code == 0 and "Softplus" in out and "0 failed" in out


def test_ops_and_plugins_survive_a_plugin_that_calls_sys_exit(capsys, plugin_dir):
    make_dist(
        plugin_dir, "tgtest-quitter", "1.0", {"tgtest_quitter": "tgtest_quitter"},
        {"tgtest_quitter": "import sys\nsys.exit(0)\n"},
    )
    make_dist(plugin_dir, "tgtest-fine", "1.0", {"tgtest_fine": "tgtest_fine"}, {"tgtest_fine": op_module("FineOp")})
    with pytest.warns(tg.PluginWarning, match="tgtest_quitter"):
        code, out, _ = run(capsys, "ops")
    assert code == 0 and "Affine" in out and "FineOp" in out
    code, out, _ = run(capsys, "plugins", "--json")
    status = {p["name"]: p for p in json.loads(out)}
    assert status["tgtest_quitter"]["status"] == "failed" and "SystemExit: 0" in status["tgtest_quitter"]["error"]
    assert status["tgtest_fine"]["status"] == "ok"


def test_the_check_table_has_a_column_for_every_check_of_tapegrad_testing(capsys):
    code, out, _ = run(capsys, "check", "Sigmoid", "SoftmaxLoss")
    assert code == 0
    header = out.split("\nSigmoid")[0]
    for check in (*testing.ALL_CHECKS, *testing.LOSS_CHECKS):
        for word in check.__name__.removeprefix("check_").split("_"):
            assert word in header, (check.__name__, header)
    rows = {
        line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith(("Sigmoid", "SoftmaxLoss"))
    }
    columns = len(testing.ALL_CHECKS) + len(testing.LOSS_CHECKS)
    assert rows["SoftmaxLoss"][1:] == ["ok"] * columns and rows["Sigmoid"][1:] == ["ok"] * (columns - 1) + ["-"]


def test_a_check_added_to_tapegrad_testing_shows_in_the_table_without_cli_changes(capsys, monkeypatch):
    def check_a_later_idea(case):
        if case.name == "Relu":
            raise testing.ContractError(case.message(check_a_later_idea, "a later idea fails"))

    monkeypatch.setattr(running, "ALL_CHECKS", (*running.ALL_CHECKS, check_a_later_idea))
    code, out, _ = run(capsys, "check", "Sigmoid", "Relu")
    assert code == 1
    header, body = out.split("\nSigmoid")
    assert "later" in header and "idea" in header
    assert body.split("\n")[0].split()[-1] == "ok"
    relu = next(line for line in out.splitlines() if line.startswith("Relu"))
    assert relu.split()[-1] == "FAIL" and "check_a_later_idea failed" in out




def test_check_passes_every_installed_operation_first_party_and_contrib(capsys):
    """`tapegrad check` with no names: every op of every installed plugin (the contrib packs where installed)."""
    code, out, _ = run(capsys, "check")
    assert code == 0 and " 0 failed" in out and "FAIL" not in out
    rows = {line.split()[0] for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    registered = {info.name for info in tg.default_registry().operations()}
    assert registered <= rows and {"Affine", "SoftmaxLoss", "Softplus"} <= registered


def test_a_structural_fault_is_one_FAIL_and_the_checks_it_blocks_read_skip(capsys, plugin_dir):
    make_dist(plugin_dir, "tgtest-shapes", "1.0", {"tgtest_shapes": "tgtest_shapes"}, {"tgtest_shapes": WRONG_SHAPE})
    code, out, _ = run(capsys, "check", "--plugin", "tgtest_shapes")
    assert code == 1
    columns = [c.__name__ for c in testing.ALL_CHECKS]
    row = next(line for line in out.splitlines() if line.startswith("WrongGradShape")).split()[2:]
    cells = dict(zip(columns, row))
    assert cells.pop("check_gradient_structure") == "FAIL"
    assert cells.pop("check_forward_deterministic") == cells.pop("check_eval_mode") == "ok"
    assert set(cells.values()) == {"skip"}
    assert out.count("check_gradient_structure failed:") == 1 and "has shape (2,), the input has shape (3, 2)" in out
    blocked = sum(1 for check in testing.ALL_CHECKS if getattr(check, "requires", ()))
    assert f"3 passed, 1 failed, {blocked} skipped (1 operations, {1 + len(testing.ALL_CHECKS)} checks)" in out
    code, out, _ = run(capsys, "check", "--plugin", "tgtest_shapes", "--json")
    outcomes = {r["check"]: r["outcome"] for r in json.loads(out)}
    assert code == 1 and outcomes["check_fan_out"] == "skipped" and outcomes["check_gradient_structure"] == "failed"


def test_a_closed_pipe_ends_the_listing_quietly(monkeypatch, capsys):
    import os
    import sys

    from tapegrad.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone, as with `tapegrad ops | head -1`
    closed = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", closed)
    try:
        assert main(["ops"]) == 141
    finally:
        monkeypatch.undo()
        closed.close()
    assert "Traceback" not in capsys.readouterr().err


def test_ops_lists_an_op_whose_docstring_is_not_text_or_raises(capsys):
    class Meta(type):
        @property
        def __doc__(cls):
            raise RuntimeError("no docstring for you")

    class NumberDoc(tg.Operation):
        __doc__ = 42

        def forward(self, ctx, x):
            return x

        def backward(self, ctx, grad):
            return grad

    class RaisingDoc(tg.Operation, metaclass=type("M", (Meta, type(tg.Operation)), {})):
        def forward(self, ctx, x):
            return x

        def backward(self, ctx, grad):
            return grad

    tg.register_operation(NumberDoc, plugin="odd")
    tg.register_operation(RaisingDoc, plugin="odd")
    for args in (["ops"], ["ops", "--json"]):
        code, out, _ = run(capsys, *args)
        assert code == 0 and "NumberDoc" in out and "RaisingDoc" in out and "Affine" in out
