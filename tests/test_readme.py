"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

import tapegrad.testing

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
SCRIPTS = [b for b in BLOCKS if "@parametrize_operations" not in b]
TEST_MODULES = [b for b in BLOCKS if "@parametrize_operations" in b]


def test_readme_has_examples():
    assert len(SCRIPTS) >= 3 and len(TEST_MODULES) == 1


@pytest.mark.parametrize("index", range(len(SCRIPTS)))
def test_readme_example_runs(index, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    exec(compile(SCRIPTS[index], f"README.md example {index}", "exec"), {"__name__": "readme_example"})


def test_readme_contract_test_module_works_for_an_installed_plugin():
    # the README's `myops` stands for the reader's plugin; the acme-ops fixture is installed here
    namespace = {"__name__": "readme_test_module"}
    exec(compile(TEST_MODULES[0].replace('"myops"', '"acme"'), "README.md test module", "exec"), namespace)
    test = namespace["test_contract"]
    params = test.pytestmark[0].args[1]
    assert len(params) == 2 * (1 + len(tapegrad.testing.ALL_CHECKS))  # two samples: has-samples and every check
    for param in params:
        test(*param.values)
