"""Discovery through real entry points, isolation of broken plugins, conflicts, blocking."""

import sys

import numpy as np
import pytest

import tapegrad as tg
from conftest import make_dist, op_module
from tapegrad.registry import Registry

FIRST_PARTY = {"Add", "Affine", "Matmul", "Multiply", "Sigmoid", "SoftmaxLoss", "SquareLoss"}


def names(registry):
    return {r.name for r in registry.operations()}


def test_first_party_ops_come_from_entry_points_of_the_tapegrad_distribution():
    registry = Registry()
    rows = {r.name: r for r in registry.operations()}
    assert set(rows) >= FIRST_PARTY
    assert rows["Affine"].plugin == "layers" and rows["Affine"].distribution == "tapegrad"
    assert rows["Sigmoid"].plugin == "activations"
    assert {p.name for p in registry.plugins() if p.distribution == "tapegrad"} == {"math", "activations", "layers", "losses"}


def test_import_tapegrad_alone_loads_no_plugin(pytester):
    result = pytester.run(
        sys.executable,
        "-c",
        "import sys, tapegrad; bad = [m for m in sys.modules if m.startswith(('tapegrad.plugins', 'sklearn', 'pytest', 'matplotlib', 'tqdm'))]; print(bad); sys.exit(bool(bad))",
    )
    assert result.ret == 0, result.stdout.str()


def test_third_party_plugin_is_discovered_through_its_entry_point(plugin_dir):
    make_dist(plugin_dir, "tgtest-dist", "0.3", {"tgtest": "tgtest_ops"}, {"tgtest_ops": op_module("Doubler", "tgtest")})
    registry = Registry()
    info = registry.lookup("Doubler")
    assert (info.plugin, info.distribution, info.version) == ("tgtest", "tgtest-dist", "0.3")
    g = tg.Graph(registry=registry)
    out = g.get_operation("Doubler")(np.ones(2))
    assert np.array_equal(out.value, [2.0, 2.0])


@pytest.mark.parametrize(
    "source, reason",
    [
        ("raise ImportError('missing dependency foo')", "import of"),
        ("import tapegrad as tg\n@tg.hookimpl\ndef tapegrad_operations():\n    raise RuntimeError('boom')\n", "raised RuntimeError: boom"),
        ("import tapegrad as tg\n@tg.hookimpl\ndef tapegrad_operations():\n    return [int]\n", "non-Operation"),
        ("x = 1\n", "no @tapegrad.hookimpl"),
    ],
)
def test_a_broken_plugin_is_recorded_and_everything_else_keeps_working(plugin_dir, source, reason):
    make_dist(plugin_dir, "tgtest-broken", "1.0", {"tgtest_broken": "tgtest_broken"}, {"tgtest_broken": source})
    make_dist(plugin_dir / "..", "tgtest-good", "1.0", {"tgtest_good": "tgtest_good"}, {"tgtest_good": op_module("GoodOp")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match=r"tgtest_broken.*tgtest-broken"):
        ops = names(registry)
    assert "Affine" in ops
    status = {p.name: p for p in registry.plugins()}
    assert status["tgtest_broken"].status == "failed"
    assert reason in status["tgtest_broken"].error


def test_two_plugins_offering_one_name_are_ambiguous_until_qualified(plugin_dir):
    make_dist(plugin_dir, "tgtest-a", "1.0", {"tgtest_a": "tgtest_a"}, {"tgtest_a": op_module("Twin", "a", 2.0)})
    make_dist(plugin_dir, "tgtest-b", "2.0", {"tgtest_b": "tgtest_b"}, {"tgtest_b": op_module("Twin", "b", 3.0)})
    registry = Registry()
    with pytest.raises(tg.AmbiguousOperationError) as err:
        registry.resolve("Twin")
    message = str(err.value)
    assert "tgtest_a (tgtest-a==1.0)" in message and "tgtest_b (tgtest-b==2.0)" in message and "'tgtest_a:Twin'" in message
    g = tg.Graph(registry=registry)
    assert g.get_operation("tgtest_b:Twin")(np.ones(1)).value[0] == 3.0
    assert g.get_operation("tgtest_a:Twin")(np.ones(1)).value[0] == 2.0
    assert "Affine" in names(registry), "an unrelated conflict never breaks anything else"


def test_plugin_names_match_exactly(plugin_dir):
    make_dist(plugin_dir, "tgtest-acmebad", "1.0", {"tgtest_acmebad": "tgtest_acmebad"}, {"tgtest_acmebad": op_module("Bad")})
    registry = Registry()
    with pytest.raises(tg.UnknownOperationError, match="no plugin named 'tgtest_acme'"):
        registry.resolve("tgtest_acme:Bad")
    assert registry.operations(plugin="tgtest_acme") == []
    assert [r.name for r in registry.operations(plugin=["tgtest_acmebad", "nothing"])] == ["Bad"]
    assert [r.name for r in registry.operations(plugin="tgtest-acmebad")] == ["Bad"], "distribution names match too"


def test_disable_plugins_by_entry_point_or_distribution_name(plugin_dir, monkeypatch):
    make_dist(plugin_dir, "tgtest-blockme", "1.0", {"tgtest_blockme": "tgtest_blockme"}, {"tgtest_blockme": op_module("Blocked")})
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "tgtest_blockme, activations")
    registry = Registry()
    ops = names(registry)
    assert "Blocked" not in ops and "Sigmoid" not in ops and "Affine" in ops
    status = {p.name: p.status for p in registry.plugins()}
    assert status["tgtest_blockme"] == "blocked" and status["activations"] == "blocked"
    with pytest.raises(tg.UnknownOperationError, match="not loaded"):
        registry.resolve("Blocked")
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "tgtest-blockme")
    assert "Blocked" not in names(Registry())


def test_autoload_off_loads_first_party_only(plugin_dir, monkeypatch):
    make_dist(plugin_dir, "tgtest-third", "1.0", {"tgtest_third": "tgtest_third"}, {"tgtest_third": op_module("Third")})
    monkeypatch.setenv("TAPEGRAD_AUTOLOAD", "0")
    ops = names(Registry())
    assert "Third" not in ops and ops >= FIRST_PARTY


def test_run_time_registration_rules():
    registry = Registry()

    class Foo(tg.Operation):
        def forward(self, ctx, x):
            return x

        def backward(self, ctx, g):
            return g

    assert registry.register_operation(Foo) is Foo
    assert registry.register_operation(Foo) is Foo, "registering the same class again is a no-op"
    assert registry.resolve("runtime:Foo") is Foo

    class Affine(tg.Operation):
        pass

    with pytest.raises(tg.RegistrationError, match="already provided by layers"):
        registry.register_operation(Affine)
    registry.register_operation(Affine, plugin="mine", override=True)
    assert registry.resolve("Affine") is Affine
    assert registry.resolve("layers:Affine") is not Affine
    with pytest.raises(tg.RegistrationError):
        registry.register_operation(int)


def test_register_operation_decorator_uses_the_default_registry():
    @tg.register_operation(plugin="deco")
    class Halve(tg.Operation):
        def forward(self, ctx, x):
            return x / 2

        def backward(self, ctx, g):
            return g / 2

    g = tg.Graph()
    assert g.get_operation("deco:Halve")(np.ones(1)).value[0] == 0.5
    assert g.get_operation("Halve").name == "halve_1"


def test_register_plugin_object():
    registry = Registry(entry_points=False)

    class Pack:
        @tg.hookimpl
        def tapegrad_operations(self):
            from tapegrad.plugins.activations import Tanh

            return [Tanh]

    info = registry.register_plugin(Pack(), "pack")
    assert info.operations == ["Tanh"] and registry.lookup("Tanh").plugin == "pack"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(tg.UnknownOperationError, match=r"did you mean 'Sigmoid'.*tapegrad ops"):
        tg.Graph().get_operation("Sigmod")
    with pytest.raises(ValueError):
        tg.Graph().get_operation("Nothing")
