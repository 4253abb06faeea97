"""``tapegrad new-plugin``: write a ready-to-install plugin distribution."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ScaffoldError

__all__ = ["new_plugin"]

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

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


def new_plugin(name: str, directory: str | Path | None = None) -> Path:
    """Write a plugin distribution called ``name`` into ``directory`` (default ``./name``)."""
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a valid plugin name (lowercase letters, digits, '-' and '_', "
            "starting with a letter)"
        )
    package = name.replace("-", "_")
    root = Path(directory) if directory is not None else Path(name)
    if root.exists() and any(root.iterdir()):
        raise ScaffoldError(f"{str(root)!r} already exists and is not empty; nothing was written")
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": INIT,
        f"{package}/plugin.py": PLUGIN,
        "tests/test_contract.py": TEST,
    }
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(name=name, package=package))
    return root
