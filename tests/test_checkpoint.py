"""The Trainer's clipping, schedules and checkpoints (issue 21): a run interrupted anywhere and resumed
ends bit for bit where the uninterrupted run ends; another run's checkpoint is refused, and nothing changes."""

import json
import os
import zipfile

import numpy as np
import pytest

import tapegrad as tg
from tapegrad import checkpoint as checkpoint_file
from tapegrad.datasets import load_digits
from tapegrad.optim import SGD, Adam, ExponentialLR, StepLR


@pytest.fixture(scope="module")
def digits():
    x_train, x_test, y_train, y_test = load_digits(seed=0)
    return x_train[:200], x_test[:100], y_train[:200], y_test[:100]


class Interrupted(Exception):
    pass


class Tripwire(tg.Operation):
    """The identity, whose forward raises ``Interrupted`` on its ``fail_at``-th application in train mode
    (an op's code runs in every step, captured steps' replays included)."""

    def __init__(self, fail_at=None):
        self.fail_at, self.count = fail_at, 0

    def forward(self, ctx, x):
        if ctx.training:
            self.count += 1
            if self.count == self.fail_at:
                raise Interrupted(f"interrupted at step {self.count}")
        return x

    def backward(self, ctx, grad):
        return grad


class DropNet:
    """Affine -> Dropout -> Sigmoid -> Affine -> SoftmaxLoss: its steps draw from the graph's generator.
    ``fail_at``: the training step (counted from 1 over the whole run) whose forward raises."""

    def __init__(self, hidden=16, seed=0, fail_at=None):
        self.graph = tg.Graph("DropNet", seed=seed)
        self.trip = self.graph.get_operation(Tripwire, fail_at=fail_at)
        self.affine1 = self.graph.get_operation("Affine", [64, hidden])
        self.dropout = self.graph.get_operation("Dropout", [0.3])
        self.sigmoid = self.graph.get_operation("Sigmoid")
        self.affine2 = self.graph.get_operation("Affine", [hidden, 10])
        self.softmax_loss = self.graph.get_operation("SoftmaxLoss")
        self.input_size, self.output_size = 64, 10

    def forward(self, x):
        return self.softmax_loss(self.affine2(self.sigmoid(self.dropout(self.affine1(self.trip(x))))))

    def loss(self, target):
        return self.softmax_loss.loss(target)


def make(path, *, fail_at=None, hidden=16, optimizer=Adam, schedule=StepLR, batch_size=32, clip=0.5, capture=True,
         configuration=None, verbose=False):
    model = DropNet(hidden, fail_at=fail_at)
    opt = optimizer(model.graph.parameter, lr=0.05)
    scheduler = None if schedule is None else schedule(opt, 0.7) if schedule is ExponentialLR else schedule(opt, 2, 0.5)
    trainer = tg.Trainer(model, opt, batch_size=batch_size, seed=0, verbose=verbose, progress=False, capture=capture,
                         scheduler=scheduler, clip_grad_norm=clip, checkpoint=path, configuration=configuration)
    return model, trainer


def train(trainer, digits, epochs=5, **kwargs):
    x_train, x_test, y_train, y_test = digits
    return trainer.train(x_train, y_train, x_test, y_test, epochs=epochs, **kwargs)


def state(model, trainer):
    """Everything a run's end is made of, as plain data."""
    return {
        "parameters": {k: v.value.copy() for k, v in model.graph.parameter.variable_dict.items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": None if trainer.scheduler is None else trainer.scheduler.state_dict(),
        "lr": trainer.optimizer.lr,
        "generators": (trainer.rng.bit_generator.state, model.graph.rng.bit_generator.state),
    }


def assert_same(a, b, path="state"):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype, path
        assert np.array_equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def assert_same_history(a, b):
    assert [(r.epoch, r.train_loss, r.metrics, r.step_losses) for r in a] == [
        (r.epoch, r.train_loss, r.metrics, r.step_losses) for r in b
    ]


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    results = {}
    for capture in (True, False):
        model, trainer = make(tmp_path_factory.mktemp("ref") / "ck.npz", capture=capture)
        history = train(trainer, digits)
        results[capture] = history, state(model, trainer)
    return results


def test_a_captured_run_with_clipping_and_a_schedule_equals_the_eager_one_bit_for_bit(uninterrupted):
    (h_cap, s_cap), (h_eager, s_eager) = uninterrupted[True], uninterrupted[False]
    assert_same_history(h_cap, h_eager)
    assert_same(s_cap, s_eager)


def test_clipping_happens_inside_the_step_and_the_schedule_after_each_epoch(digits, tmp_path, monkeypatch):
    from tapegrad import optim

    norms, rates = [], []
    original = optim.clip_grad_norm.__wrapped__

    def watched(variables, max_norm, norm_type=2.0):
        norms.append(original(variables, max_norm, norm_type))
        return norms[-1]

    monkeypatch.setattr(optim.clip_grad_norm, "__wrapped__", watched)  # (what a replay calls)
    model, trainer = make(None, clip=0.5)
    history = train(trainer, digits, epochs=4, on_epoch=lambda record: rates.append(trainer.optimizer.lr))
    assert rates == [0.05, 0.025, 0.025, 0.0125]  # StepLR(step_size=2, gamma=0.5), stepped after each epoch
    assert len(history.step_losses) == 4 * 7
    model2, unclipped = make(None, clip=None)
    history2 = train(unclipped, digits, epochs=4)
    assert history.step_losses[0] == history2.step_losses[0]  # the first step's loss comes before any clipping
    assert history.step_losses[1] != history2.step_losses[1]
    with pytest.raises(tg.ArgumentError, match="clip_grad_norm must be above 0"):
        tg.Trainer(model, trainer.optimizer, clip_grad_norm=0.0)
    with pytest.raises(tg.ArgumentError, match="scheduler must be a tapegrad.optim schedule of this Trainer's optimizer"):
        tg.Trainer(model, Adam(model.graph.parameter), scheduler=trainer.scheduler)


@pytest.mark.parametrize("capture", [True, False], ids=["captured", "eager"])
@pytest.mark.parametrize(
    "fail_at", [1, 3, 2 * 7 + 1, 2 * 7 + 4, 4 * 7 + 7],
    ids=["first step", "inside epoch 1", "epoch 3's first step", "inside epoch 3", "the last step"],
)
def test_a_run_interrupted_anywhere_and_resumed_ends_bit_for_bit_where_the_uninterrupted_one_ends(
    digits, tmp_path, uninterrupted, capture, fail_at
):
    # (7 steps per epoch: six batches of 32 and one of 8; step 2 and step 14 are the first replays, checked)
    path = tmp_path / "ck.npz"
    model, trainer = make(path, fail_at=fail_at, capture=capture)
    with pytest.raises(Interrupted, match=f"interrupted at step {fail_at}$"):
        train(trainer, digits)
    done = (fail_at - 1) // 7  # epochs completed (7 steps per epoch)
    assert path.exists() == (done > 0)
    model, trainer = make(path, capture=capture)  # a new process, so to speak
    history = train(trainer, digits)
    reference_history, reference_state = uninterrupted[capture]
    assert_same_history(history, reference_history)
    assert_same(state(model, trainer), reference_state)


def test_resuming_says_so_and_a_finished_run_trains_no_more(digits, tmp_path, capsys):
    path = tmp_path / "ck.npz"
    model, trainer = make(path)
    first = train(trainer, digits, epochs=2)
    model, trainer = make(path, verbose=True)
    again = train(trainer, digits, epochs=2)
    out = capsys.readouterr().out
    assert out == f"resumed from {path} after epoch 2\n"  # no epoch ran
    assert_same_history(first, again)
    model, trainer = make(path, verbose=True)
    more = train(trainer, digits, epochs=3)  # --epochs may grow
    assert len(more) == 3 and "=== Epoch 3 Summary" in capsys.readouterr().out


def test_early_stopping_state_is_resumed(digits, tmp_path):
    # the train loss rarely improves by 0.2 from epoch 2 on: the run stops after a few epochs
    model, trainer = make(None)
    reference = train(trainer, digits, epochs=30, tol=0.2, patience=2)
    stopped = len(reference)
    assert 2 < stopped < 30
    path = tmp_path / "ck.npz"
    model, trainer = make(path, fail_at=(stopped - 1) * 7 + 3)  # interrupted in the last epoch
    with pytest.raises(Interrupted):
        train(trainer, digits, epochs=30, tol=0.2, patience=2)
    model, trainer = make(path)
    assert_same_history(train(trainer, digits, epochs=30, tol=0.2, patience=2), reference)
    model, trainer = make(path)
    assert len(train(trainer, digits, epochs=40, tol=0.2, patience=2)) == stopped  # it had stopped


# -- refusals: nothing changes -----------------------------------------------------------------------------
@pytest.fixture
def written(digits, tmp_path):
    path = tmp_path / "ck.npz"
    model, trainer = make(path, configuration={"--model": "dropnet", "--hidden": 16})
    train(trainer, digits, epochs=2)
    return path


def attempt(digits, path, **kwargs):
    model, trainer = make(path, **kwargs)
    before = state(model, trainer)
    with pytest.raises(tg.ParameterLoadError) as refused:
        train(trainer, digits)
    assert_same(state(model, trainer), before)  # nothing changed
    message = str(refused.value)
    assert message.startswith(f"checkpoint {str(path)!r}")
    return message


@pytest.mark.parametrize(
    "kwargs, difference",
    [
        ({"hidden": 17}, "affine_0.W has shape (64, 16) there and (64, 17) here"),
        ({"optimizer": SGD}, "optimizer: 'Adam' there, 'SGD' here"),
        ({"schedule": None}, "scheduler: 'StepLR' there, None here"),
        ({"schedule": ExponentialLR}, "scheduler: 'StepLR' there, 'ExponentialLR' here"),
        ({"batch_size": 16}, "batch size: 32 there, 16 here"),
        ({"clip": None}, "gradient clipping: 0.5 there, None here"),
        ({"configuration": {"--model": "dropnet", "--hidden": 17}}, "--hidden: 16 there, 17 here"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_what_differs(digits, written, kwargs, difference):
    kwargs.setdefault("configuration", {"--model": "dropnet", "--hidden": 16})
    message = attempt(digits, written, **kwargs)
    assert "was written by another run" in message and difference in message
    assert "Give another --checkpoint path" in message


def test_a_checkpoint_of_another_data_set_or_model_class_is_refused(digits, written):
    x_train, x_test, y_train, y_test = digits
    model, trainer = make(written)
    with pytest.raises(tg.ParameterLoadError, match="training samples: 200 there, 150 here"):
        trainer.train(x_train[:150], y_train[:150], epochs=3)

    class Renamed(DropNet):
        pass

    model = Renamed()
    opt = Adam(model.graph.parameter, lr=0.05)
    trainer = tg.Trainer(model, opt, batch_size=32, verbose=False, scheduler=StepLR(opt, 2, 0.5), clip_grad_norm=0.5,
                         checkpoint=written)
    with pytest.raises(tg.ParameterLoadError, match="the model is a DropNet there and a .*Renamed here"):
        train(trainer, digits)


def test_a_bad_state_inside_is_refused_and_what_was_loaded_before_it_is_put_back(digits, written):
    found = checkpoint_file.read(written, 1 << 30)
    content = found.content
    content["scheduler"]["hyperparameters"]["gamma"] = -1.0  # loaded after the optimizer's state
    checkpoint_file.write(written, content)
    message = attempt(digits, written)
    assert "cannot be resumed (nothing was loaded)" in message and "gamma must be above 0" in message


def test_files_that_are_not_checkpoints_are_refused(digits, tmp_path):
    cases = {}
    (tmp_path / "bytes.npz").write_bytes(b"not a zip at all")
    cases["bytes.npz"] = "cannot be read as a checkpoint"
    tg.Parameter().save(tmp_path / "params.npz")
    cases["params.npz"] = "is not a tapegrad checkpoint (it has no manifest.json)"
    with zipfile.ZipFile(tmp_path / "version.npz", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "tapegrad-checkpoint", "version": 99, "content": {}}))
    cases["version.npz"] = "is of checkpoint format version 99; this tapegrad reads version 1"
    with zipfile.ZipFile(tmp_path / "empty.npz", "w") as archive:
        archive.writestr("manifest.json", json.dumps({"format": "tapegrad-checkpoint", "version": 1, "content": {"dict": {}}}))
    cases["empty.npz"] = "is incomplete or malformed"
    for name, fault in cases.items():
        message = attempt(digits, tmp_path / name)
        assert fault in message, message


def test_a_checkpoint_never_unpickles_and_refuses_a_bomb_before_reading_it(digits, tmp_path, monkeypatch):
    import pickle

    def no_unpickling(*args, **kwargs):
        pytest.fail("a checkpoint was unpickled")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    manifest = json.dumps({"format": "tapegrad-checkpoint", "version": 1, "content": {"dict": {"x": {"array": "arrays/0.npy"}}}})
    path = tmp_path / "pickled.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("manifest.json", manifest)
        with archive.open("arrays/0.npy", "w") as out:
            np.lib.format.write_array(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "holds Python objects; refusing to read it" in attempt(digits, path)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", manifest)
        with archive.open("arrays/0.npy", "w") as out:
            np.lib.format.write_array(out, np.zeros((4000, 10000)))  # 320 MB of zeros in a few hundred KB
    assert "declares more than" in attempt(digits, path)


def test_the_file_is_json_and_npy_only_and_numpy_reads_it_without_pickles(written):
    with zipfile.ZipFile(written) as archive:
        names = archive.namelist()
        manifest = json.loads(archive.read("manifest.json"))
    assert names[0] == "manifest.json" and all(n.endswith(".npy") for n in names[1:])
    assert manifest["format"] == "tapegrad-checkpoint" and manifest["version"] == 1
    content = manifest["content"]["dict"]
    assert content["epoch"] == 2 and content["configuration"]["dict"] == {"--model": "dropnet", "--hidden": 16}
    with np.load(written, allow_pickle=False) as arrays:
        for name in names[1:]:
            assert arrays[name.removesuffix(".npy")].dtype.kind == "f" or name.startswith("arrays/")


def test_a_failed_save_leaves_the_previous_checkpoint_whole_and_stops_training(digits, written, monkeypatch):
    before = written.read_bytes()
    original = np.lib.format.write_array
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", full_disk)
    model, trainer = make(written, configuration={"--model": "dropnet", "--hidden": 16})
    with pytest.raises(tg.TrainingError, match=r"cannot write checkpoint .*ck.npz' after epoch 3: No space left on device"):
        train(trainer, digits)
    assert written.read_bytes() == before
    assert sorted(os.listdir(written.parent)) == ["ck.npz"]  # no temporary file left


def test_an_optimizer_state_that_is_not_data_is_named(digits, tmp_path):
    class Odd(SGD):
        def step(self):
            super().step()

    model = DropNet()
    opt = Odd(model.graph.parameter, 0.1)
    opt.callback = print  # a function in the optimizer's state
    opt.state_dict = lambda: {"optimizer": "Odd", "attributes": {"callback": opt.callback}}
    trainer = tg.Trainer(model, opt, batch_size=64, verbose=False, checkpoint=tmp_path / "ck.npz")
    with pytest.raises(tg.TrainingError, match=r"cannot write checkpoint .*\['attributes'\]\['callback'\] is a "
                       r"builtin_function_or_method, which a checkpoint cannot hold"):
        train(trainer, digits, epochs=1)
