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


@pytest.mark.parametrize(
    "name, reason",
    [
        ("tapegrad", "replace tapegrad itself"),
        ("numpy", "distribution 'numpy' is installed"),
        ("pluggy", "is installed"),
        ("math", "standard-library module 'math'"),
        ("json", "standard-library"),
        ("os", "standard-library"),
        ("layers", "tapegrad plugin 'layers' is installed"),
        ("tapegrad-acme-ops", "is installed"),  # (the fixture every test env installs)
        ("class", "keyword"),
        ("tests", "tests folder"),
    ],
)
def test_new_plugin_refuses_names_that_break_an_install(tmp_path, capsys, name, reason):
    target = tmp_path / "out"
    assert main(["new-plugin", name, "--dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tapegrad new-plugin: error:") and err.count("\n") == 1 and reason in err
    assert not target.exists()


def test_new_plugin_refuses_a_name_importable_without_a_distribution(tmp_path, capsys, monkeypatch):
    (tmp_path / "site" / "tgtest_loose").mkdir(parents=True)
    (tmp_path / "site" / "tgtest_loose" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert main(["new-plugin", "tgtest-loose", "--dir", str(tmp_path / "out")]) == 1
    assert "would shadow the importable module 'tgtest_loose'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["foo-", "foo_", "_foo", "-foo", "Foo", "a b", "über"])
def test_new_plugin_refuses_invalid_distribution_names(tmp_path, capsys, name):
    assert main(["new-plugin", "--dir", str(tmp_path / "out"), "--", name]) == 1
    assert "not a valid plugin name" in capsys.readouterr().err


def test_new_plugin_hint_installs_the_folder_not_a_name_from_the_index(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "tgtest-hint"]) == 0
    assert "pip install ./tgtest-hint && tapegrad check --plugin tgtest-hint" in capsys.readouterr().out
    assert main(["new-plugin", "tgtest-hint2", "--dir", "sub dir/x"]) == 0
    assert "pip install './sub dir/x'" in capsys.readouterr().out
    assert main(["new-plugin", "tgtest-hint3", "--dir", str(tmp_path / "abs")]) == 0
    assert f"pip install {tmp_path / 'abs'} " in capsys.readouterr().out


def test_new_plugin_into_an_unwritable_place_is_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    (tmp_path / "file").write_text("")
    for where, reason in [(tmp_path / "file" / "x", "Not a directory"), (tmp_path / "file", "not a folder")]:
        assert main(["new-plugin", "tgtest-w", "--dir", str(where)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and "Traceback" not in err
    original = Path.write_text
    written = []

    def full_disk(self, *args, **kwargs):
        if written:
            raise OSError(28, "No space left on device")
        written.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_disk)
    target = tmp_path / "new" / "plugin"
    assert main(["new-plugin", "tgtest-w", "--dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "nothing was written" in err
    assert not (tmp_path / "new").exists()  # what was written is taken back, folders made for it too


def test_new_plugin_may_rewrite_an_installed_plugin_of_its_own(tmp_path, capsys, plugin_dir):
    from conftest import make_dist

    make_dist(plugin_dir, "tgtest-mine", "0.1", {"tgtest-mine": "tgtest_mine.plugin"}, {})
    (plugin_dir / "tgtest_mine").mkdir()
    (plugin_dir / "tgtest_mine" / "__init__.py").write_text("")
    assert main(["new-plugin", "tgtest-mine", "--dir", str(tmp_path / "again")]) == 0  # an upgrade of the same plugin
    make_dist(plugin_dir, "tgtest-other", "0.1", {"elsewhere": "tgtest_other.plugin"}, {})
    assert main(["new-plugin", "tgtest-other", "--dir", str(tmp_path / "other")]) == 1
    assert "distribution 'tgtest-other' is installed" in capsys.readouterr().err
