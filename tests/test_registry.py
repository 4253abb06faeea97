"""Discovery through real entry points, isolation of broken plugins, conflicts, blocking."""

import importlib
import itertools
import subprocess
import sys
import textwrap
import threading

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
    assert {p.name for p in registry.plugins() if p.distribution == "tapegrad"} == {
        "math", "activations", "layers", "losses", "models"
    }


def test_import_tapegrad_alone_loads_no_plugin(pytester):
    result = pytester.run(
        sys.executable,
        "-c",
        "import sys, tapegrad; bad = [m for m in sys.modules if m.startswith("
        "('tapegrad.plugins', 'sklearn', 'pytest', 'matplotlib', 'tqdm'))]; print(bad); sys.exit(bool(bad))",
    )
    assert result.ret == 0, result.stdout.str()


def test_third_party_plugin_is_discovered_through_its_entry_point(plugin_dir):
    make_dist(
        plugin_dir, "tgtest-dist", "0.3", {"tgtest": "tgtest_ops"}, {"tgtest_ops": op_module("Doubler", "tgtest")}
    )
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
        ("import tapegrad as tg\n@tg.hookimpl\ndef tapegrad_operations():\n    raise RuntimeError('boom')\n",
         "raised RuntimeError: boom"),
        ("import tapegrad as tg\n@tg.hookimpl\ndef tapegrad_operations():\n    return [int]\n", "non-Operation"),
        ("x = 1\n", "no @tapegrad.hookimpl"),
    ],
)
def test_a_broken_plugin_is_recorded_and_everything_else_keeps_working(plugin_dir, source, reason):
    make_dist(plugin_dir, "tgtest-broken", "1.0", {"tgtest_broken": "tgtest_broken"}, {"tgtest_broken": source})
    make_dist(
        plugin_dir / "..", "tgtest-good", "1.0", {"tgtest_good": "tgtest_good"}, {"tgtest_good": op_module("GoodOp")}
    )
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
    assert (
        "tgtest_a (tgtest-a==1.0)" in message and "tgtest_b (tgtest-b==2.0)" in message and "'tgtest_a:Twin'" in message
    )
    g = tg.Graph(registry=registry)
    assert g.get_operation("tgtest_b:Twin")(np.ones(1)).value[0] == 3.0
    assert g.get_operation("tgtest_a:Twin")(np.ones(1)).value[0] == 2.0
    assert "Affine" in names(registry), "an unrelated conflict never breaks anything else"


def test_plugin_names_match_exactly(plugin_dir):
    make_dist(
        plugin_dir, "tgtest-acmebad", "1.0", {"tgtest_acmebad": "tgtest_acmebad"}, {"tgtest_acmebad": op_module("Bad")}
    )
    registry = Registry()
    with pytest.raises(tg.UnknownOperationError, match="no plugin named 'tgtest_acme'"):
        registry.resolve("tgtest_acme:Bad")
    assert registry.operations(plugin="tgtest_acme") == []
    assert [r.name for r in registry.operations(plugin=["tgtest_acmebad", "nothing"])] == ["Bad"]
    assert [r.name for r in registry.operations(plugin="tgtest-acmebad")] == ["Bad"], "distribution names match too"


def test_disable_plugins_by_entry_point_or_distribution_name(plugin_dir, monkeypatch):
    make_dist(
        plugin_dir, "tgtest-blockme", "1.0", {"tgtest_blockme": "tgtest_blockme"},
        {"tgtest_blockme": op_module("Blocked")},
    )
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


# -- thread safety ------------------------------------------------------------------------------
GATED_PLUGIN = op_module("Gated") + '''
import tgtest_gate
tgtest_gate.entered.set()
tgtest_gate.release.wait(10)
'''


def test_first_load_publishes_nothing_until_every_entry_point_is_read(plugin_dir):
    (plugin_dir / "tgtest_gate.py").write_text(
        "import threading\nentered = threading.Event()\nrelease = threading.Event()\n"
    )
    make_dist(plugin_dir, "tgtest-gated", "1.0", {"tgtest_gated": "tgtest_gated"}, {"tgtest_gated": GATED_PLUGIN})
    import tgtest_gate

    registry = Registry()
    results = {}

    def ask(key, name):
        try:
            results[key] = registry.resolve(name).__name__
        except Exception as exc:
            results[key] = exc

    loader = threading.Thread(target=ask, args=("loader", "Affine"))
    loader.start()
    assert tgtest_gate.entered.wait(10), "the gated plugin is being imported by the first thread"
    # A second thread asks while the first is still inside the load; it must wait for the load, not
    # see a registry that claims to be loaded but is not.
    others = [threading.Thread(target=ask, args=(i, name)) for i, name in enumerate(["Gated", "Affine", "Sigmoid"])]
    for t in others:
        t.start()
    for t in others:
        t.join(0.1)  # gives the other threads time to ask before the load completes (no assertion on time)
    tgtest_gate.release.set()
    for t in [loader, *others]:
        t.join(10)
    assert results == {"loader": "Affine", 0: "Gated", 1: "Affine", 2: "Sigmoid"}


def test_concurrent_first_lookups_and_registrations_in_a_fresh_registry():
    registry = Registry()
    barrier = threading.Barrier(8)
    errors, classes = [], []

    def work(i):
        barrier.wait()
        try:
            assert registry.resolve("layers:Affine").__name__ == "Affine"
            for j in range(20):
                cls = type(f"Threaded{i}x{j}", (tg.Operation,), {})
                classes.append(cls)
                registry.register_operation(cls, plugin=f"thread{i}")
                assert registry.resolve(f"thread{i}:Threaded{i}x{j}") is cls
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert {r.cls for r in registry.operations() if r.name.startswith("Threaded")} == set(classes)
    assert len(classes) == 160
    plugins = [p.name for p in registry.plugins()]
    assert len(plugins) == len(set(plugins)), "each plugin is listed once"


def test_default_registry_is_created_once_whichever_threads_ask_first():
    barrier = threading.Barrier(8)
    seen = []

    def ask():
        barrier.wait()
        seen.append(tg.default_registry())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == 8 and all(r is seen[0] for r in seen)


def test_first_lookups_from_threads_of_a_fresh_process_all_succeed():
    script = textwrap.dedent(
        """
        import threading, tapegrad as tg
        barrier, failures = threading.Barrier(8), []
        def work():
            barrier.wait()
            try:
                tg.Graph().get_operation("Affine", [64, 30])
            except Exception as exc:
                failures.append(repr(exc))
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(failures)
        raise SystemExit(1 if failures else 0)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_interrupted_first_load_keeps_nothing_and_the_next_query_loads_again(plugin_dir, monkeypatch):
    source = (
        "import os\nif os.environ.pop('TGTEST_INTERRUPT', None):\n    raise KeyboardInterrupt\n" + op_module("Later")
    )
    make_dist(
        plugin_dir, "tgtest-interrupt", "1.0", {"tgtest_interrupt": "tgtest_interrupt"}, {"tgtest_interrupt": source}
    )
    monkeypatch.setenv("TGTEST_INTERRUPT", "1")
    registry = Registry()
    with pytest.raises(KeyboardInterrupt):
        registry.operations()
    assert registry.resolve("Later").__name__ == "Later"
    plugins = [p.name for p in registry.plugins()]
    assert sorted(plugins) == sorted(set(plugins)) and {"layers", "tgtest_interrupt"} <= set(plugins)
    assert all(p.status == "ok" for p in registry.plugins())


def test_a_plugin_registering_at_import_time_does_not_deadlock_the_first_load(plugin_dir):
    source = op_module("Listed") + textwrap.dedent(
        """
        @tg.register_operation(plugin="tgtest_early")
        class Early(tg.Operation):
            def forward(self, ctx, x):
                return x
            def backward(self, ctx, grad):
                return grad
        """
    )
    make_dist(plugin_dir, "tgtest-early", "1.0", {"tgtest_eager": "tgtest_eager"}, {"tgtest_eager": source})
    g = tg.Graph()
    assert type(g.get_operation("Listed")).__name__ == "Listed"
    assert type(g.get_operation("tgtest_early:Early")).__name__ == "Early"


# -- plugins that must fail alone -------------------------------------------------------------
HOOK = (
    "import itertools, sys\nimport tapegrad as tg\n"
    + op_module("Inner").split("@tg.hookimpl")[0]
    + "\n@tg.hookimpl\ndef tapegrad_operations():\n"
)

BROKEN_PLUGINS = {
    "sys.exit at import": ("import sys\nsys.exit(3)\n", "import of 'tgtest_broken' failed: SystemExit: 3"),
    "sys.exit in the hook": (HOOK + "    sys.exit('bye')\n", "raised SystemExit: bye"),
    "BaseException at import": ("raise BaseException('base')\n", "BaseException: base"),
    "GeneratorExit in the hook": (HOOK + "    raise GeneratorExit\n", "raised GeneratorExit"),
    "endless count": (HOOK + "    return itertools.count()\n", "more than 10000 entries"),
    "endless repeat of an op": (HOOK + "    return itertools.repeat(Inner)\n", "more than 10000 entries"),
    "endless generator": (HOOK + "    while True:\n        yield Inner\n", "more than 10000 entries"),
    "list subclass iterating forever": (
        HOOK
        + "    class L(list):\n        def __iter__(self):\n            return itertools.cycle([Inner])\n"
        "    return L([Inner])\n",
        "more than 10000 entries",
    ),
    "None": (HOOK + "    return None\n", "returned None"),
    "a string": (HOOK + "    return 'Inner'\n", "returned str 'Inner'"),
    "a dict": (HOOK + "    return {'Inner': Inner}\n", "returned dict"),
    "a class, not a list": (HOOK + "    return Inner\n", "returned the class Inner itself"),
    "a number": (HOOK + "    return 3\n", "returned int 3"),
    "a class that is not an Operation": (HOOK + "    return [Inner, dict]\n", "non-Operation entries: <class 'dict'>"),
    "an instance, not a class": (HOOK + "    return [Inner()]\n", "non-Operation entries"),
    "the base class": (HOOK + "    return [tg.Operation]\n", "base class Operation"),
    "two classes with one name": (
        HOOK + "    Other = type('Inner', (tg.Operation,), {'__module__': 'elsewhere'})\n    return [Inner, Other]\n",
        "two different classes are named 'Inner': tgtest_broken.Inner and elsewhere.Inner",
    ),
    "a name with a colon": (
        HOOK + "    Inner.__name__ = 'my:Inner'\n    return [Inner]\n", "'my:Inner' is not a Python identifier"
    ),
    "a name with a dot": (
        HOOK + "    Inner.__name__ = 'my.Inner'\n    return [Inner]\n", "'my.Inner' is not a Python identifier"
    ),
    "an empty name": (HOOK + "    Inner.__name__ = ''\n    return [Inner]\n", "'' is not a Python identifier"),
    "an unprintable error": (
        HOOK + "    class E(Exception):\n        def __str__(self):\n            raise RuntimeError\n    raise E()\n",
        "raised E: <unprintable message>",
    ),
    "an entry whose repr raises": (
        HOOK + "    class R:\n        def __repr__(self):\n            raise RuntimeError\n    return [R()]\n",
        "non-Operation entries: <R object>",
    ),
    "a hook wrapper": (HOOK.replace("@tg.hookimpl", "@tg.hookimpl(wrapper=True)") + "    return (yield)\n", "wrapper"),
    "a hook with an unknown argument": (
        HOOK.replace("tapegrad_operations()", "tapegrad_operations(size)") + "    return [Inner]\n", "size"
    ),
}


@pytest.mark.parametrize("source, reason", BROKEN_PLUGINS.values(), ids=BROKEN_PLUGINS.keys())
def test_a_plugin_that_breaks_a_rule_fails_alone(plugin_dir, source, reason):
    make_dist(plugin_dir, "tgtest-broken", "1.0", {"tgtest_broken": "tgtest_broken"}, {"tgtest_broken": source})
    make_dist(plugin_dir, "tgtest-good", "1.0", {"tgtest_good": "tgtest_good"}, {"tgtest_good": op_module("GoodOp")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match=r"tgtest_broken.*tgtest-broken"):
        ops = names(registry)
    assert {"Affine", "GoodOp"} <= ops and "Inner" not in ops
    status = {p.name: p for p in registry.plugins()}
    assert status["tgtest_broken"].status == "failed" and status["tgtest_broken"].operations == []
    assert reason in status["tgtest_broken"].error
    assert "\n" not in status["tgtest_broken"].error
    with pytest.raises(tg.UnknownOperationError, match=r"tgtest_broken.*unavailable \(failed: "):
        registry.resolve("tgtest_broken:Inner")


def test_entry_point_attribute_that_raises_or_is_none_fails_the_plugin(plugin_dir):
    source = "def __getattr__(name):\n    raise RuntimeError(f'no {name} here')\nNOTHING = None\n"
    make_dist(plugin_dir, "tgtest-attrs", "1.0",
              {"tgtest_raises": "tgtest_attrs:plugin", "tgtest_none": "tgtest_attrs:NOTHING"},
              {"tgtest_attrs": source})
    registry = Registry()
    with pytest.warns(tg.PluginWarning):
        status = {p.name: p for p in registry.plugins()}
    assert (
        status["tgtest_raises"].status == "failed" and "RuntimeError: no plugin here" in status["tgtest_raises"].error
    )
    assert status["tgtest_none"].status == "failed" and "None" in status["tgtest_none"].error
    assert "Affine" in names(registry)


def test_the_same_class_returned_twice_is_registered_once(plugin_dir):
    source = op_module("Twice").replace("return [Twice]", "return (Twice, Twice)")
    make_dist(plugin_dir, "tgtest-twice", "1.0", {"tgtest_twice": "tgtest_twice"}, {"tgtest_twice": source})
    registry = Registry()
    assert registry.resolve("Twice").__name__ == "Twice"
    assert [p.operations for p in registry.plugins() if p.name == "tgtest_twice"] == [["Twice"]]
    assert [r.qualified_name for r in registry.operations(plugin="tgtest_twice")] == ["tgtest_twice:Twice"]


def test_a_finite_generator_is_accepted(plugin_dir):
    source = op_module("Yielded").replace("return [Yielded]", "yield Yielded")
    make_dist(plugin_dir, "tgtest-gen", "1.0", {"tgtest_gen": "tgtest_gen"}, {"tgtest_gen": source})
    assert Registry().resolve("tgtest_gen:Yielded").__name__ == "Yielded"


def test_a_keyboard_interrupt_in_a_plugin_is_not_swallowed(plugin_dir):
    make_dist(
        plugin_dir, "tgtest-ctrlc", "1.0", {"tgtest_ctrlc": "tgtest_ctrlc"},
        {"tgtest_ctrlc": HOOK + "    raise KeyboardInterrupt\n"},
    )
    with pytest.raises(KeyboardInterrupt):
        Registry().operations()


@pytest.mark.parametrize("order", ["first", "last"])
def test_an_entry_point_named_like_a_first_party_one_never_shadows_it(tmp_path, monkeypatch, order):
    import tapegrad.plugins.layers as layers

    root = tmp_path / "impostor"
    source = op_module("Affine", "impostor") + "\nclass Extra(Affine):\n    pass\n"
    make_dist(
        root, "tgtest-impostor", "6.6", {"layers": "tgtest_impostor", "math": "tgtest_impostor"},
        {"tgtest_impostor": source},
    )
    monkeypatch.setattr(sys, "path", [str(root), *sys.path] if order == "first" else [*sys.path, str(root)])
    importlib.invalidate_caches()
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="reserved for tapegrad's own use"):
        ops = registry.operations()
    assert registry.resolve("Affine") is layers.Affine and registry.resolve("layers:Affine") is layers.Affine
    assert {r.distribution for r in ops if r.plugin in ("layers", "math")} == {"tapegrad"}
    impostors = [p for p in registry.plugins() if p.distribution == "tgtest-impostor"]
    assert sorted(p.name for p in impostors) == ["layers", "math"]
    assert all(p.status == "failed" and "reserved" in p.error for p in impostors)
    with pytest.raises(tg.PluginUnavailableError, match=r"'layers' \(tgtest-impostor==6.6\) did not load"):
        registry.require("tgtest-impostor")
    assert [p.distribution for p in registry.require("layers")] == ["tapegrad"]
    sys.modules.pop("tgtest_impostor", None)


def test_an_impostor_stays_out_when_the_first_party_plugin_is_blocked(plugin_dir, monkeypatch):
    make_dist(
        plugin_dir, "tgtest-impostor", "6.6", {"activations": "tgtest_fake"}, {"tgtest_fake": op_module("Sigmoid")}
    )
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "tapegrad")
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="reserved"):
        assert not names(registry) & FIRST_PARTY
    with pytest.raises(tg.UnknownOperationError, match="blocked"):
        registry.resolve("activations:Sigmoid")


@pytest.mark.parametrize("name", ["tgtest:colon", "tgtest,comma", "tgtest space"])
def test_an_entry_point_name_that_cannot_be_asked_for_fails(plugin_dir, name):
    make_dist(plugin_dir, "tgtest-badname", "1.0", {name: "tgtest_badname"}, {"tgtest_badname": op_module("Named")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="cannot be asked for"):
        assert "Named" not in names(registry)
    assert [p.status for p in registry.plugins() if p.name == name] == ["failed"]


def test_two_third_party_entry_points_with_one_name_the_second_fails(plugin_dir):
    make_dist(plugin_dir, "tgtest-one", "1.0", {"tgtest_same": "tgtest_one"}, {"tgtest_one": op_module("One")})
    make_dist(plugin_dir, "tgtest-two", "1.0", {"tgtest_same": "tgtest_two"}, {"tgtest_two": op_module("Two")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="already used by plugin 'tgtest_same'"):
        ops = names(registry)
    assert len(ops & {"One", "Two"}) == 1
    assert sorted(p.status for p in registry.plugins() if p.name == "tgtest_same") == ["failed", "ok"]


def test_run_time_registration_refuses_unusable_or_taken_names():
    registry = Registry()
    op = type("Fine", (tg.Operation,), {})
    for plugin in ["", "a:b", "a,b", "a b", None]:
        with pytest.raises(tg.RegistrationError, match="plugin name"):
            registry.register_operation(op, plugin=plugin)
    for name in ["a:b", "a.b", "", "a b"]:
        with pytest.raises(tg.RegistrationError, match="not a Python identifier"):
            registry.register_operation(type(name, (tg.Operation,), {}))
    with pytest.raises(tg.RegistrationError, match=r"belongs to plugin 'layers' \(tapegrad=="):
        registry.register_operation(type("Affine", (tg.Operation,), {}), plugin="layers", override=True)
    for base in (tg.Operation, tg.Loss):
        with pytest.raises(tg.RegistrationError):
            registry.register_operation(base)
    with pytest.raises(tg.RegistrationError, match="already registered"):
        registry.register_plugin(object(), "layers")
    with pytest.raises(tg.RegistrationError, match="plugin name"):
        registry.register_plugin(object(), "my:pack")
    assert registry.resolve("layers:Affine").__module__ == "tapegrad.plugins.layers"


def test_register_plugin_object_that_breaks_a_rule_is_recorded_as_failed():
    registry = Registry(entry_points=False)

    class Endless:
        @tg.hookimpl
        def tapegrad_operations(self):
            return itertools.count()

    with pytest.warns(tg.PluginWarning, match="endless"):
        info = registry.register_plugin(Endless(), "endless")
    assert info.status == "failed" and registry.operations() == []
    with pytest.raises(tg.PluginUnavailableError, match=r"'endless' did not load \(failed: .*more than"):
        registry.require(["endless"])


# -- queries --------------------------------------------------------------------------------------
def test_require_names_every_missing_failed_or_blocked_plugin(plugin_dir, monkeypatch):
    make_dist(
        plugin_dir, "tgtest-kaputt", "0.1", {"tgtest_kaputt": "tgtest_kaputt"},
        {"tgtest_kaputt": "raise ImportError('kaputt')"},
    )
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "losses")
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="kaputt"):
        assert [p.name for p in registry.require(["layers", "math"])] == ["layers", "math"]
    assert {p.name for p in registry.require("tapegrad-acme-ops")} == {"acme"}, "distribution names match too"
    with pytest.raises(tg.PluginUnavailableError) as err:
        registry.require(["layers", "tgtest_kaputt", "nope", "losses"])
    message = str(err.value)
    assert (
        "'tgtest_kaputt' (tgtest-kaputt==0.1) did not load "
        "(failed: import of 'tgtest_kaputt' failed: ImportError: kaputt)" in message
    )
    assert "plugin 'nope' is not installed" in message and "'losses' (tapegrad==" in message and "blocked" in message
    assert err.value.missing == ("nope",) and set(err.value.unavailable) == {"tgtest_kaputt", "losses"}
    assert isinstance(err.value, ValueError) and isinstance(err.value, tg.TapegradError)


def test_plugins_returns_copies():
    registry = Registry()
    info = next(p for p in registry.plugins() if p.name == "layers")
    info.operations.clear()
    info.status = "failed"
    again = next(p for p in registry.plugins() if p.name == "layers")
    assert again.status == "ok" and "Affine" in again.operations


def test_entry_points_named_tapegrad_or_runtime_are_reserved(plugin_dir):
    make_dist(plugin_dir, "tgtest-reserved", "1.0", {"tapegrad": "tgtest_reserved", "runtime": "tgtest_reserved"},
              {"tgtest_reserved": op_module("Reserved")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="reserved"):
        assert "Reserved" not in names(registry)
    assert {p.name: p.status for p in registry.plugins() if p.distribution == "tgtest-reserved"} == {
        "tapegrad": "failed", "runtime": "failed"
    }
    assert {p.name for p in registry.require("tapegrad")} == {"math", "activations", "layers", "losses", "models"}
    registry.register_operation(type("StillFine", (tg.Operation,), {}))
    assert registry.resolve("runtime:StillFine").__name__ == "StillFine"


def test_one_module_behind_two_entry_points_loads_once(plugin_dir):
    make_dist(plugin_dir, "tgtest-twice", "1.0", {"tgtest_first": "tgtest_both", "tgtest_second": "tgtest_both"},
              {"tgtest_both": op_module("Both")})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="same object is already registered as plugin 'tgtest_first'"):
        assert registry.resolve("Both").__name__ == "Both"
    assert {p.name: p.status for p in registry.plugins() if p.distribution == "tgtest-twice"} == {
        "tgtest_first": "ok", "tgtest_second": "failed"
    }
