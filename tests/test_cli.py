import json

import pytest

from tapegrad.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ops_lists_every_op_with_its_provider(capsys):
    code, out, _ = run(capsys, "ops")
    assert code == 0
    assert "Affine" in out and "layers" in out and "tapegrad==" in out
    code, out, _ = run(capsys, "ops", "--json")
    rows = json.loads(out)
    affine = next(r for r in rows if r["name"] == "Affine")
    assert affine["plugin"] == "layers" and affine["distribution"] == "tapegrad"
    assert len({r["name"] for r in rows}) >= 25


def test_plugins_lists_status(capsys, monkeypatch):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "losses")
    code, out, _ = run(capsys, "plugins", "--json")
    status = {p["name"]: p for p in json.loads(out)}
    assert status["losses"]["status"] == "blocked" and status["layers"]["status"] == "ok"
    assert status["math"]["operations"] >= 5
    code, out, _ = run(capsys, "plugins")
    assert "blocked" in out


def test_check_exit_codes(capsys):
    code, out, _ = run(capsys, "check", "Sigmoid", "Affine")
    assert code == 0 and "Sigmoid" in out and "0 failed" in out
    code, _, err = run(capsys, "check", "Sigmod")
    assert code == 2 and "did you mean 'Sigmoid'" in err
    code, _, err = run(capsys, "check", "--plugin", "nope")
    assert code == 2 and "no operation matched" in err
    code, out, _ = run(capsys, "check", "Affine", "--plugin", "layers", "--json", "--fast")
    assert code == 0 and all(r["outcome"] == "passed" for r in json.loads(out))


def test_check_fails_with_exit_1_on_a_broken_op(capsys):
    import numpy as np

    import tapegrad as tg

    @tg.register_operation(plugin="clibroken")
    class Broken(tg.Operation):
        def forward(self, ctx, x):
            return x * 2

        def backward(self, ctx, grad):
            return grad

        @classmethod
        def samples(cls, rng):
            yield tg.Sample(inputs=[np.ones((2, 2))])

    code, out, _ = run(capsys, "check", "--plugin", "clibroken")
    assert code == 1 and "FAIL" in out and "check_gradient_inputs" in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["nonsense"])
    assert exc.value.code == 2


def test_new_plugin_writes_a_ready_distribution(tmp_path, capsys):
    target = tmp_path / "my-ops"
    assert main(["new-plugin", "my-ops", "--dir", str(target)]) == 0
    assert (target / "pyproject.toml").read_text().count('my-ops = "my_ops.plugin"') == 1
    assert (target / "my_ops" / "plugin.py").exists() and (target / "tests" / "test_contract.py").exists()
    assert 'plugin="my-ops"' in (target / "tests" / "test_contract.py").read_text()
    assert "pip install" in capsys.readouterr().out
    assert main(["new-plugin", "my-ops", "--dir", str(target)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert main(["new-plugin", "Bad Name", "--dir", str(tmp_path / "x")]) == 1


def test_new_plugin_example_op_passes_the_contract(tmp_path):
    import importlib.util

    from tapegrad.testing import check_operation

    main(["new-plugin", "demo", "--dir", str(tmp_path / "demo")])
    spec = importlib.util.spec_from_file_location("demo_plugin", tmp_path / "demo" / "demo" / "plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert check_operation(module.Softplus).passed
