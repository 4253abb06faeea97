"""``tapegrad new-plugin``: write a ready-to-install plugin distribution."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import keyword
import re
import shutil
import sys
from pathlib import Path

from .errors import ScaffoldError

__all__ = ["new_plugin"]

# Also a valid distribution name (PEP 508): it ends with a letter or digit.
_NAME = re.compile(r"^[a-z](?:[a-z0-9_-]*[a-z0-9])?$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "Operations for tapegrad."
readme = "README.md"
requires-python = ">=3.10"
# An SPDX expression; setuptools ships any LICENSE* file found next to this one.
license = "MIT"
dependencies = ["tapegrad", "numpy"]

[project.optional-dependencies]
test = ["pytest"]

# The entry point is what makes tapegrad find the plugin: group "tapegrad", name "{name}".
[project.entry-points.tapegrad]
{name} = "{package}.plugin"

[tool.setuptools]
packages = ["{package}"]
"""

INIT = '''\
"""{name}: operations for tapegrad."""

from .plugin import Softplus

__all__ = ["Softplus"]
'''

PLUGIN = '''\
"""The operations of {name}. Each is a tg.Operation with forward and backward on numpy
arrays and the samples the tapegrad contract checks it on."""

import numpy as np

import tapegrad as tg


class Softplus(tg.Operation):
    """log(1 + exp(x)), elementwise; any shape. Saves the input."""

    def forward(self, ctx, x):
        ctx.save(x)
        return np.logaddexp(0.0, x)

    def backward(self, ctx, grad):
        (x,) = ctx.saved
        return grad * (0.5 + 0.5 * np.tanh(0.5 * x))  # the logistic function, without overflow

    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((1, 3))], name="batch1")
        yield tg.Sample(inputs=[rng.standard_normal((4, 3))], name="batch4")
        yield tg.Sample(inputs=[np.array([[-800.0, -1.0, 1.0, 800.0]])], name="large")


@tg.hookimpl
def tapegrad_operations():
    return [Softplus]
'''

TEST = '''\
"""The tapegrad operation contract over every op of this plugin."""

from tapegrad.testing import parametrize_operations


@parametrize_operations(plugin="{name}")
def test_contract(operation, check):
    check(operation)
'''

README = """\
# {name}

Operations for [tapegrad](https://pypi.org/project/tapegrad/), published as a plugin through the
entry point `{name} = "{package}.plugin"` in group `tapegrad`.

```bash
pip install .                  # then `tapegrad ops` lists Softplus from plugin "{name}"
pytest tests                   # the operation contract, through parametrize_operations
tapegrad check --plugin {name}   # the same contract from the command line
```

Add an op: write a `tg.Operation` subclass in `{package}/plugin.py` with `forward`, `backward`
and `samples`, and return it from `tapegrad_operations()`. Reinstall after changing entry points.
"""


def _normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _clash(name: str, package: str) -> str | None:
    """Why installing a distribution ``name`` with top-level package ``package`` would break
    something (tapegrad, the standard library, an installed distribution, module or plugin)."""
    if _normalize(name) == "tapegrad" or package == "tapegrad":
        return "it is tapegrad's own name: `pip install` would replace tapegrad itself"
    if package in sys.stdlib_module_names:
        return f"its package {package!r} would shadow the standard-library module {package!r}"
    if keyword.iskeyword(package):
        return f"its package {package!r} is a Python keyword and could never be imported"
    if package == "tests":
        return "its package would be the plugin's own tests folder"
    for dist in importlib.metadata.distributions():
        try:
            installed = dist.metadata["Name"]
        except (KeyError, TypeError):  # broken metadata names nothing
            continue
        if installed and _normalize(installed) == _normalize(name):
            plugins = [(ep.name, ep.value) for ep in dist.entry_points if ep.group == "tapegrad"]
            if plugins == [(name, f"{package}.plugin")]:
                return None  # an earlier install of this very plugin: reinstalling it is an upgrade
            return f"a distribution {installed!r} is installed: `pip install` would replace it"
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a broken module of that name is still a clash
        spec = None
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or []) or "built in"
        return f"its package {package!r} would shadow the importable module {package!r} ({where})"
    for entry in importlib.metadata.entry_points(group="tapegrad"):
        if entry.name == name:
            return f"a tapegrad plugin {name!r} is installed ({entry.value}): the two would clash"
    return None


def new_plugin(name: str, directory: str | Path | None = None) -> Path:
    """Write a plugin distribution called ``name`` into ``directory`` (default ``./name``).

    Refuses names that are not valid or would break an install: tapegrad's own, the standard
    library's, an installed distribution's, module's or plugin's. Raises ``ScaffoldError``; a
    folder that cannot be written is reported too, and nothing is left half written.
    """
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a valid plugin name (lowercase letters, digits, '-' and '_', "
            "starting with a letter and ending with a letter or digit)"
        )
    package = name.replace("-", "_")
    clash = _clash(name, package)
    if clash:
        raise ScaffoldError(f"plugin name {name!r} refused: {clash}; choose another name")
    root = Path(directory) if directory is not None else Path(name)
    try:
        if root.exists() and not root.is_dir():
            raise ScaffoldError(f"{str(root)!r} exists and is not a folder; nothing was written")
        if root.exists() and any(root.iterdir()):
            raise ScaffoldError(f"{str(root)!r} already exists and is not empty; nothing was written")
    except OSError as exc:
        raise ScaffoldError(f"cannot write to {str(root)!r}: {exc.strerror or exc}; nothing was written") from None
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": INIT,
        f"{package}/plugin.py": PLUGIN,
        "tests/test_contract.py": TEST,
    }
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    try:
        for relative, template in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(template.format(name=name, package=package))
    except OSError as exc:
        # Take back what was written: an empty root stays, folders made for it go.
        for relative in files:
            with contextlib.suppress(OSError):
                (root / relative).unlink(missing_ok=True)
        for folder in (root / package, root / "tests"):
            shutil.rmtree(folder, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break
        raise ScaffoldError(f"cannot write to {str(root)!r}: {exc.strerror or exc}; nothing was written") from None
    return root
