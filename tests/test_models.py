"""The ready-made MLP asks for tapegrad's own ops by qualified name: other plugins' same-named ops never change it."""

import numpy as np
import pytest

import tapegrad as tg
from conftest import make_dist, op_module
from tapegrad.cli import main
from tapegrad.models import MLP
from tapegrad.optim import SGD
from tapegrad.plugins.activations import Sigmoid
from tapegrad.plugins.layers import Affine
from tapegrad.plugins.losses import SoftmaxLoss


def assert_first_party_mlp_trains_a_step(model):
    assert [type(op) for op in (model.affine1, model.sigmoid, model.affine2, model.softmax_loss)] == [
        Affine, Sigmoid, Affine, SoftmaxLoss
    ]
    x, labels = np.random.default_rng(0).random((8, 64)), np.arange(8) % 10
    before = model.graph.parameter.variable_dict["affine_0.W"].value.copy()
    model.forward(tg.Variable(x))
    loss = model.loss(tg.Variable(labels))
    model.graph.backward()
    SGD(model.graph.parameter, lr=0.5).step()
    assert np.isfinite(loss) and not np.array_equal(before, model.graph.parameter.variable_dict["affine_0.W"].value)


@pytest.fixture
def look_alikes(plugin_dir):
    """A third-party distribution offering its own Affine, Sigmoid and SoftmaxLoss."""
    source = (
        op_module("Affine", "lookalike")
        + "\nclass Sigmoid(Affine):\n    pass\n\nclass SoftmaxLoss(Affine):\n    pass\n"
    )
    source = source.replace("return [Affine]", "return [Affine, Sigmoid, SoftmaxLoss]")
    make_dist(
        plugin_dir, "tgtest-lookalike", "1.0", {"tgtest_lookalike": "tgtest_lookalike"}, {"tgtest_lookalike": source}
    )
    with pytest.raises(tg.AmbiguousOperationError):
        tg.Graph().get_operation("Affine", [2, 2])
    return plugin_dir


def test_mlp_uses_tapegrad_ops_when_a_third_party_offers_the_same_names(look_alikes):
    assert_first_party_mlp_trains_a_step(MLP(64, 30, 10, seed=0))


def test_mlp_uses_tapegrad_ops_when_a_run_time_class_named_affine_overrides_the_name():
    @tg.register_operation(plugin="mine", override=True)
    class Affine(tg.Operation):  # the point: same name, another plugin
        def forward(self, ctx, x):
            return x

        def backward(self, ctx, grad):
            return grad

    assert tg.Graph().get_operation("Affine").__class__ is Affine
    assert_first_party_mlp_trains_a_step(MLP(64, 30, 10, seed=0))


def test_cli_train_works_next_to_a_third_party_affine(look_alikes, capsys):
    assert main(["train", "--epochs", "1", "--hidden", "8", "--batch-size", "64", "--no-progress"]) == 0
    assert "final test accuracy" in capsys.readouterr().out


def test_mlp_names_a_blocked_first_party_plugin(monkeypatch):
    monkeypatch.setenv("TAPEGRAD_DISABLE_PLUGINS", "activations")
    with pytest.raises(tg.UnknownOperationError, match=r"'activations' \(tapegrad==.*blocked"):
        MLP(4, 3, 2)
