"""Runnable models as plugins (issue 20): the ``tapegrad_models`` hook, the registry's models, the Task
interface, and ``tapegrad train/evaluate --model NAME`` for tapegrad's own and a third party's."""

import json

import numpy as np
import pytest

import tapegrad as tg
from conftest import make_dist, op_module
from tapegrad.cli import main
from tapegrad.models import LinearTask, MLPTask
from tapegrad.registry import Registry, default_registry, find_task
from tapegrad.tasks import Task, TaskData


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


#: A third party's task: a linear model on a tiny, separable data set, with an option of its own.
TASK_SOURCE = '''
import numpy as np
import tapegrad as tg
from tapegrad.tasks import Task, TaskData
from tapegrad.models import Linear


class Toy(Task):
    """(the docstring is not the summary)"""

    name = "toy-task"
    summary = "a toy: two classes, {flavour}"
    held_out = "validation"
    epochs, batch_size, lr, optimizer = 3, 4, 0.5, "sgd"

    @classmethod
    def add_arguments(cls, parser, command):
        parser.add_argument("--shift", type=float, default=1.0, help="how far apart the classes are")

    def load_data(self):
        rng = np.random.default_rng(self.options.seed)
        y = np.arange(40) % 2
        x = rng.standard_normal((40, 3)) + self.options.shift * y[:, None]
        return TaskData(x[:30], y[:30], x[30:], y[30:], info={{"source": "random"}})

    def build_model(self, data):
        return Linear(3, 2, seed=self.options.seed, dtype=self.options.dtype)

    def final_report(self, model, data):
        return f"toy says: {{data.info['source']}}"


@tg.hookimpl
def tapegrad_models():
    return [Toy]
'''


def task_module(flavour="far apart"):
    return TASK_SOURCE.format(flavour=flavour)


@pytest.fixture
def toy(plugin_dir):
    make_dist(plugin_dir, "tgtest-toy", "0.1", {"toy": "tgtest_toy"}, {"tgtest_toy": task_module()})
    return plugin_dir


def test_tapegrads_own_models_arrive_through_the_hook_like_a_packs():
    registry = Registry()
    rows = {r.name: r for r in registry.models()}
    assert rows["mlp"].cls is MLPTask and rows["linear"].cls is LinearTask
    assert (rows["mlp"].plugin, rows["mlp"].distribution) == ("models", "tapegrad")
    assert rows["linear"].summary.startswith("the seed's linear model")
    info = {p.name: p for p in registry.plugins()}["models"]
    assert info.status == "ok" and info.operations == [] and sorted(info.models) == ["linear", "mlp"]
    assert registry.lookup_model("models:mlp").cls is MLPTask


def test_a_plugin_offering_models_only_is_not_failed_and_trains_from_the_command_line(toy, capsys):
    registry = Registry()
    info = {p.name: p for p in registry.plugins()}["toy"]
    assert (info.status, info.operations, info.models) == ("ok", [], ["toy-task"])
    code, out, _ = run(capsys, "train", "--model", "toy-task", "--no-progress", "--shift", "4")
    assert code == 0, out
    assert (
        "tapegrad train: Linear(3, 2), sgd lr=0.5, batch size 4, 3 epochs, seed 0 (30 train / 10 validation samples)"
        in out
    )
    assert "=== Epoch 3 Summary === train loss:" in out and "validation accuracy" in out
    assert "final validation accuracy: 1.0000" in out and out.rstrip().endswith("toy says: random")
    code, out, _ = run(capsys, "plugins", "--json")
    toy_row = next(p for p in json.loads(out) if p["name"] == "toy")
    assert toy_row["status"] == "ok" and toy_row["models"] == 1 and toy_row["operations"] == 0


def test_train_help_lists_every_installed_model_and_a_models_own_options(toy, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    listing = text.split("models (--model NAME")[1]
    assert "mlp " in listing and "linear " in listing and "toy-task" in listing
    assert "a toy: two classes, far apart [tgtest-toy]" in " ".join(listing.split())
    assert "--hidden" in text and "--shift" not in text  # the default model's options
    with pytest.raises(SystemExit):
        main(["train", "--model", "toy-task", "--help"])
    text = capsys.readouterr().out
    assert "options of model toy-task" in text and "--shift SHIFT" in text and "--hidden" not in text
    assert "default: the model's, 3 for toy-task" in " ".join(text.split())


def test_a_plugin_may_offer_ops_and_models_from_one_module(plugin_dir, capsys):
    source = op_module("Tripler", "both", factor=3.0) + task_module().split("@tg.hookimpl")[0].replace(
        "import numpy as np\nimport tapegrad as tg\n", ""
    ) + "\n@tg.hookimpl\ndef tapegrad_models():\n    return [Toy]\n"
    make_dist(plugin_dir, "tgtest-both", "1.0", {"both": "tgtest_both"}, {"tgtest_both": source})
    registry = Registry()
    info = {p.name: p for p in registry.plugins()}["both"]
    assert (info.status, info.operations, info.models) == ("ok", ["Tripler"], ["toy-task"])
    out = tg.Graph(registry=registry).get_operation("Tripler")(np.ones(2))
    assert np.array_equal(out.value, [3.0, 3.0])


HOOK = (
    "import tapegrad as tg\nfrom tapegrad.tasks import Task\n\nclass Good(Task):\n    name = 'good'\n\n"
    "@tg.hookimpl\ndef tapegrad_models():\n"
)

BROKEN = {
    "not a Task": (HOOK + "    return [Good, dict]\n", "not Task subclasses: <class 'dict'>"),
    "the base class": (HOOK + "    return [Task]\n", "base class Task itself"),
    "no name": (HOOK + "    Good.name = ''\n    return [Good]\n", "model name '' is not lowercase letters"),
    "an underscore": (HOOK + "    Good.name = 'char_lstm'\n    return [Good]\n", "model name 'char_lstm' is not"),
    "capitals": (HOOK + "    Good.name = 'MLP2'\n    return [Good]\n", "model name 'MLP2'"),
    "two classes, one name": (
        HOOK + "    Other = type('Other', (Task,), {'name': 'good'})\n    return [Good, Other]\n",
        "two different classes offer model 'good'",
    ),
    "raises": (HOOK + "    raise RuntimeError('boom')\n", "tapegrad_models() raised RuntimeError: boom"),
    "None": (HOOK + "    return None\n", "tapegrad_models() returned None; it must return a list of Task subclasses"),
    "the class itself": (HOOK + "    return Good\n", "returned the class Good itself"),
    "neither hook": ("x = 1\n", "no @tapegrad.hookimpl function tapegrad_operations() or tapegrad_models()"),
}


@pytest.mark.parametrize("source, reason", BROKEN.values(), ids=BROKEN.keys())
def test_a_plugin_whose_models_break_a_rule_fails_alone_ops_included(plugin_dir, source, reason):
    source = op_module("BrokenOp") + "\n" + source if "hookimpl" in source else source
    make_dist(plugin_dir, "tgtest-bad", "1.0", {"tgtest_bad": "tgtest_bad"}, {"tgtest_bad": source})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="Its operations and models are unavailable"):
        names = {r.name for r in registry.models()}
    assert names >= {"mlp", "linear"} and "good" not in names
    info = {p.name: p for p in registry.plugins()}["tgtest_bad"]
    assert info.status == "failed" and reason in info.error and info.models == [] and info.operations == []
    assert "BrokenOp" not in {r.name for r in registry.operations()}


def test_two_plugins_offering_one_model_are_asked_for_by_qualified_name(plugin_dir, capsys):
    make_dist(plugin_dir, "tgtest-one", "1.0", {"one": "tgtest_one"}, {"tgtest_one": task_module("one")})
    make_dist(plugin_dir, "tgtest-two", "1.0", {"two": "tgtest_two"}, {"tgtest_two": task_module("two")})
    registry = Registry()
    with pytest.raises(
        tg.PluginUnavailableError, match=r"offered by 2 plugins.*--model one:toy-task.*--model two:toy-task"
    ):
        registry.lookup_model("toy-task")
    assert registry.lookup_model("two:toy-task").summary == "a toy: two classes, two"
    code, _, err = run(capsys, "train", "--model", "toy-task")
    assert code == 2 and "use --model one:toy-task" in err
    code, out, _ = run(capsys, "train", "--model", "two:toy-task", "--no-progress", "--epochs", "1")
    assert code == 0 and "final validation accuracy" in out


def test_an_unknown_model_is_a_usage_error_with_close_matches(capsys):
    code, _, err = run(capsys, "train", "--model", "mpl")
    assert code == 2
    installed = ", ".join(sorted(row.name for row in default_registry().models()))  # (packs' too, where installed)
    assert err.splitlines()[-1] == (
        "tapegrad train: error: argument --model: unknown model 'mpl'; did you mean 'mlp'? "
        f"Installed models: {installed}"
    )
    code, _, err = run(capsys, "evaluate", "--model", "linearr", "--load", "x.npz")
    assert code == 2 and "did you mean 'linear'" in err


def test_a_packs_model_names_the_pack_to_install(monkeypatch, capsys):
    from tapegrad import registry

    monkeypatch.setitem(registry.PACK_MODELS, "tgtest-model", ("tgtest-missing-pack", "tapegrad-rnn"))
    with pytest.raises(tg.PluginUnavailableError, match=r"comes with tgtest-missing-pack and tapegrad-rnn, and "
                       r"tgtest-missing-pack is not installed: pip install tgtest-missing-pack \(from a source "
                       r"checkout: pip install ./contrib/tgtest-missing-pack\)"):
        find_task("tgtest-model")
    code, _, err = run(capsys, "train", "--model", "tgtest-model")
    assert code == 2 and "pip install tgtest-missing-pack" in err.splitlines()[-1]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "tgtest-model (not installed: pip install tgtest-missing-pack)" in " ".join(capsys.readouterr().out.split())


def test_char_lstm_without_its_pack_names_the_pack(monkeypatch, capsys):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "rnn")
    code, _, err = run(capsys, "train", "--model", "char-lstm")
    last = err.splitlines()[-1]
    assert code == 2 and last.startswith(
        "tapegrad train: error: argument --model: model 'char-lstm' comes with tapegrad-rnn"
    )
    assert "did not load (blocked: TAPEGRAD_DISABLE_PLUGINS)" in last


def test_blocking_tapegrads_own_models_names_them(monkeypatch, capsys):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "models")
    code, _, err = run(capsys, "train")
    assert code == 2 and "unknown model 'mlp'" in err and "models [blocked: TAPEGRAD_DISABLE_PLUGINS]" in err


def test_an_entry_point_named_models_is_reserved_for_tapegrad(plugin_dir):
    make_dist(plugin_dir, "tgtest-impostor", "1.0", {"models": "tgtest_impostor"}, {"tgtest_impostor": task_module()})
    registry = Registry()
    with pytest.warns(tg.PluginWarning, match="reserved"):
        rows = registry.models()
    assert {r.name for r in rows if r.distribution == "tapegrad"} == {"mlp", "linear"}
    assert "toy-task" not in {r.name for r in rows}
    assert registry.lookup_model("models:mlp").cls is MLPTask


def test_task_data_limited_cuts_the_training_samples_of_every_input():
    data = TaskData((np.arange(10), np.arange(20).reshape(10, 2)), np.arange(10), np.arange(3), np.arange(3))
    cut = data.limited(4)
    assert cut.train_samples == 4 and np.array_equal(cut.x_train[1], np.arange(8).reshape(4, 2))
    assert np.array_equal(cut.y_train, np.arange(4)) and cut.test_samples == 3
    assert data.limited(None) is data


def test_a_task_without_its_required_methods_says_which():
    class Bare(Task):
        name = "bare"

    task = Bare(None)
    with pytest.raises(NotImplementedError, match="Bare must define load_data"):
        task.load_data()
    with pytest.raises(NotImplementedError, match=r"Bare must define build_model\(data\)"):
        task.build_model(None)
