"""Shared fixtures: fresh registries and throw-away plugin distributions on sys.path."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import registry as registry_module

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _fresh_default_registry():
    """Each test sees the default registry as a new process would."""
    registry_module.reset_default_registry()
    yield
    registry_module.reset_default_registry()


def make_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Write modules plus a ``<dist>-<version>.dist-info`` (METADATA, entry_points.txt) under root.

    With ``root`` on sys.path (or PYTHONPATH), importlib.metadata finds the entry points
    exactly as it finds those of a pip-installed distribution.
    """
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[tapegrad]\n{lines}\n")
    return root


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on sys.path for throw-away plugin distributions; cleaned from sys.modules after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    importlib.invalidate_caches()
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("tgtest_"):
            del sys.modules[name]


OPS_SOURCE = '''
import numpy as np
import tapegrad as tg

class {name}(tg.Operation):
    """Doubles its input ({dist})."""
    def forward(self, ctx, x):
        return x * {factor}
    def backward(self, ctx, grad):
        return grad * {factor}
    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((2, 3))])

@tg.hookimpl
def tapegrad_operations():
    return [{name}]
'''


def op_module(name: str = "Double", dist: str = "x", factor: float = 2.0) -> str:
    return OPS_SOURCE.format(name=name, dist=dist, factor=factor)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def graph():
    return tg.Graph("test", seed=0)


#: An op whose backward returns a wrongly shaped gradient: a module for make_dist (an entry-point
#: plugin) or, with REGISTERED_WRONG_SHAPE, a conftest registering it as plugin "shapes".
WRONG_SHAPE = """
import numpy as np
import tapegrad as tg

class WrongGradShape(tg.Operation):
    def forward(self, ctx, x):
        return x * 3
    def backward(self, ctx, grad):
        return (grad * 3).sum(axis=0)
    @classmethod
    def samples(cls, rng):
        yield tg.Sample(inputs=[rng.standard_normal((3, 2))], name="s")

@tg.hookimpl
def tapegrad_operations():
    return [WrongGradShape]
"""
REGISTERED_WRONG_SHAPE = WRONG_SHAPE + "\ntg.register_operation(WrongGradShape, plugin='shapes')\n"


# -- ops whose own code applies other ops (tests of the tape and of capture) --------------------
class Softsign2(tg.Operation):
    """2 * sigmoid(x) * w, its forward applying the graph's Sigmoid op and its backward the
    Multiply op: both applications are part of this one, not recorded on the tape."""

    def __init__(self, size):
        self.sigmoid = self.graph.get_operation("Sigmoid")
        self.multiply = self.graph.get_operation("Multiply")
        self.w = self.parameter("w", (size,), init="ones")

    def forward(self, ctx, x):
        s = self.sigmoid(tg.Variable(x)).value
        ctx.save(s)
        return 2.0 * s * self.w.value

    def backward(self, ctx, grad):
        (s,) = ctx.saved
        self.w.add_grad((2.0 * grad * s).sum(axis=0))
        local = self.multiply(tg.Variable(2.0 * s), tg.Variable(1.0 - s)).value
        return grad * self.w.value * local


class ThroughSquareLoss(tg.Loss):
    """Half the mean squared error, computed by its loss() through the graph's SquareLoss op
    (forward and loss): that application is part of this one, queued for nothing."""

    def __init__(self):
        self.inner = self.graph.get_operation("SquareLoss")

    def forward(self, ctx, y):
        ctx.save(y)
        return y

    def loss(self, ctx, target):
        (y,) = ctx.saved
        self.inner.forward(tg.Variable(y))
        value = self.inner.loss(target)
        ctx.save(y, target)
        return value

    def backward(self, ctx, grad):
        y, target = ctx.saved
        return grad * (y - target) / y.shape[0]


@pytest.fixture
def composite_ops():
    """(Softsign2, ThroughSquareLoss): an op and a loss whose own code applies other ops."""
    return Softsign2, ThroughSquareLoss
