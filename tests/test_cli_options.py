"""``tapegrad train``'s options of issues 20-22 (--model, --optimizer, --clip, --schedule, --checkpoint,
--dtype, --limit), ``evaluate`` for every model, output that cannot be written, and runs too large to fit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.cli import main

QUICK = ["--epochs", "1", "--limit", "300", "--no-progress"]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def values(path):
    with tg.parameter.ParameterFile(path) as source:
        return {name: source.read(name).copy() for name in source.names}


@pytest.mark.parametrize(
    "model, header",
    [("mlp", "tapegrad train: MLP 64-30-10, sgd lr=0.3, batch size 1, 1 epochs, seed 0 (300 train / 450 test samples)"),
     ("linear",
      "tapegrad train: Linear 64-10, sgd lr=0.1, batch size 1, 1 epochs, seed 0 (300 train / 450 test samples)")],
)
def test_each_first_party_model_trains_an_epoch_on_a_small_limit(capsys, tmp_path, model, header):
    code, out, _ = run(capsys, "train", "--model", model, *QUICK, "--save", str(tmp_path / "m.npz"))
    assert code == 0 and out.startswith(header + "\n")
    assert out.count("=== Epoch") == 1
    final = float(out.split("final test accuracy: ")[1].split()[0])
    assert f"test accuracy {final:.4f}\n" in out and 0.5 < final <= 1.0  # chance is 0.1
    code, out, _ = run(capsys, "evaluate", "--model", model, "--load", str(tmp_path / "m.npz"))
    assert code == 0 and out == f"test accuracy: {final:.4f} (450 samples, seed 0)\n"


def test_evaluate_refuses_parameters_of_another_model(capsys, tmp_path):
    run(capsys, "train", "--model", "linear", *QUICK, "--save", str(tmp_path / "linear.npz"))
    code, _, err = run(capsys, "evaluate", "--model", "mlp", "--load", str(tmp_path / "linear.npz"))
    assert code == 1 and err.count("\n") == 1 and "does not fit these parameters" in err
    assert "missing: affine_1.W, affine_1.b" in err  # (its affine_0.W reads as an MLP with 10 hidden units)
    run(capsys, "train", "--model", "mlp", *QUICK, "--save", str(tmp_path / "mlp.npz"))
    code, _, err = run(capsys, "evaluate", "--model", "linear", "--load", str(tmp_path / "mlp.npz"))
    assert code == 1 and err.count("\n") == 1 and "does not fit these parameters" in err
    assert "affine_0.W: shape (64, 30) given, (64, 10) expected" in err and "unexpected: affine_1.W" in err


@pytest.mark.slow
def test_the_linear_models_defaults_reach_94_percent(capsys):
    code, out, _ = run(capsys, "train", "--model", "linear", "--no-progress")
    assert code == 0 and "20 epochs" in out
    assert float(out.split("final test accuracy: ")[1].split()[0]) >= 0.94  # 0.9644 for seed 0


@pytest.mark.parametrize("schedule", ["step", "exponential", "cosine"])
def test_optimizer_clip_and_schedule_options_are_the_python_apis(capsys, tmp_path, schedule):
    from tapegrad.datasets import load_digits
    from tapegrad.models import MLP
    from tapegrad.optim import AdamW, CosineAnnealingLR, ExponentialLR, StepLR

    argv = ["--epochs", "4", "--limit", "120", "--batch-size", "16", "--hidden", "12", "--no-progress"]
    code, out, _ = run(capsys, "train", *argv, "--optimizer", "adamw", "--lr", "0.01", "--clip", "0.5",
                       "--schedule", schedule, "--save", str(tmp_path / "cli.npz"))
    assert code == 0 and f"adamw lr=0.01, clip 0.5, {schedule} schedule, batch size 16" in out
    x_train, x_test, y_train, y_test = load_digits(seed=0)
    model = MLP(64, 12, 10, seed=0)
    optimizer = AdamW(model.graph.parameter, lr=0.01)
    scheduler = {"step": lambda: StepLR(optimizer, 1, 0.1), "exponential": lambda: ExponentialLR(optimizer, 0.01**0.25),
                 "cosine": lambda: CosineAnnealingLR(optimizer, 4)}[schedule]()
    trainer = tg.Trainer(
        model, optimizer, batch_size=16, seed=0, verbose=False, scheduler=scheduler, clip_grad_norm=0.5
    )
    trainer.train(x_train[:120], y_train[:120], x_test, y_test, epochs=4)
    saved = values(tmp_path / "cli.npz")
    for name, v in model.graph.parameter.variable_dict.items():
        assert np.array_equal(saved[name], v.value), name


def test_dtype_float32_trains_in_float32_and_evaluate_reads_the_files_dtype(capsys, tmp_path):
    code, out, _ = run(capsys, "train", *QUICK, "--dtype", "float32", "--save", str(tmp_path / "m.npz"))
    assert code == 0 and ", float32, batch size 1" in out
    assert {v.dtype for v in values(tmp_path / "m.npz").values()} == {np.dtype(np.float32)}
    final = out.split("final test accuracy: ")[1].split()[0]
    code, out, _ = run(capsys, "evaluate", "--load", str(tmp_path / "m.npz"))
    assert code == 0 and out.startswith(f"test accuracy: {final} ")
    code, _, err = run(capsys, "evaluate", "--load", str(tmp_path / "m.npz"), "--dtype", "float64")
    assert code == 1 and "dtype float32 given, float64 expected" in err


def test_gradcheck_in_float32_is_refused(capsys, no_training):
    code, _, err = run(capsys, "train", "--gradcheck", "--dtype", "float32")
    assert code == 2 and "--gradcheck needs --dtype float64" in err


@pytest.fixture
def no_training(monkeypatch):
    from tapegrad.training import Trainer

    monkeypatch.setattr(Trainer, "train", lambda *a, **k: pytest.fail("training started"))


def test_checkpoint_resumes_a_run_and_refuses_one_with_other_options(capsys, tmp_path):
    check = str(tmp_path / "run.ck")
    argv = ["--limit", "150", "--batch-size", "8", "--no-progress", "--optimizer", "adam", "--schedule", "step"]
    code, out, _ = run(capsys, "train", *argv, "--epochs", "2", "--checkpoint", check)
    assert code == 0 and "resumed" not in out
    # (captured or eager: the same numbers, so either may resume the other)
    code, out, _ = run(
        capsys, "train", *argv, "--epochs", "3", "--checkpoint", check, "--save", str(tmp_path / "a.npz"),
        "--no-capture",
    )
    assert code == 0 and f"resumed from {check} after epoch 2\n=== Epoch 3 Summary" in out
    assert "=== Epoch 1 Summary" not in out
    code, out, _ = run(capsys, "train", *argv, "--epochs", "3", "--save", str(tmp_path / "b.npz"))
    resumed, straight = values(tmp_path / "a.npz"), values(tmp_path / "b.npz")
    assert all(np.array_equal(resumed[k], straight[k]) for k in straight)
    before = Path(check).read_bytes()
    code, _, err = run(capsys, "train", *argv, "--epochs", "4", "--checkpoint", check, "--hidden", "20", "--lr", "0.01")
    assert code == 1 and err.count("\n") == 1 and "was written by another run" in err
    assert "--hidden: 30 there, 20 here" in err and "--lr: 0.001 there, 0.01 here" in err
    assert Path(check).read_bytes() == before


def test_checkpoint_must_be_writable_and_not_another_output(capsys, tmp_path, no_training):
    (tmp_path / "folder").mkdir()
    code, _, err = run(capsys, "train", "--checkpoint", str(tmp_path / "folder"))
    assert code == 2 and "cannot write --checkpoint" in err and "is a directory" in err
    code, _, err = run(capsys, "train", "--checkpoint", str(tmp_path / "m.npz"), "--save", str(tmp_path / "m.npz"))
    assert code == 2 and "--save" in err and "--checkpoint" in err and "are the same file" in err


# -- output that cannot be written ---------------------------------------------------------------------------
class FullStream:
    """A standard output on a full disk: writes are buffered, and flushing fails."""

    def __init__(self):
        self.pending = []

    def write(self, text):
        self.pending.append(text)
        if sum(map(len, self.pending)) > 64:
            raise OSError(28, "No space left on device")
        return len(text)

    def flush(self):
        if self.pending:
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize("argv", [["ops"], ["plugins"], ["check", "Sigmoid"], ["ops", "--json"]])
def test_a_command_whose_output_fails_says_so_in_one_line(capsys, monkeypatch, argv):
    monkeypatch.setattr(sys, "stdout", FullStream())
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and err == f"tapegrad {argv[0]}: error: cannot write to standard output: No space left on device\n"


@pytest.mark.parametrize("argv, prog", [(["--help"], "tapegrad"), (["train", "--help"], "tapegrad train"),
                                        (["--version"], "tapegrad")])
def test_help_whose_output_fails_says_so_in_one_line(capsys, monkeypatch, argv, prog):
    monkeypatch.setattr(sys, "stdout", FullStream())
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err == f"{prog}: error: cannot write to standard output: No space left on device\n"


def test_training_goes_on_without_printing_and_saves_when_its_output_fails(capsys, monkeypatch, tmp_path):
    from tapegrad.training import Trainer

    epochs = []
    original = Trainer.train

    def watched(self, *args, **kwargs):
        history = original(self, *args, **kwargs)
        epochs.append(len(history))
        return history

    monkeypatch.setattr(Trainer, "train", watched)
    monkeypatch.setattr(sys, "stdout", FullStream())
    code = main(["train", "--epochs", "3", "--limit", "60", "--no-progress", "--save", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert code == 1 and epochs == [3] and (tmp_path / "m.npz").exists()
    assert err == ("tapegrad train: error: cannot write to standard output: No space left on device; training went on "
                   f"without printing and wrote --save '{tmp_path / 'm.npz'}'\n")


DEV_FULL = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is Linux's")


@DEV_FULL
@pytest.mark.parametrize(
    "argv", [["ops"], ["plugins"], ["check", "Affine"], ["train", "--epochs", "1", "--limit", "40"]]
)
def test_dev_full(tmp_path, argv):
    save = ["--save", str(tmp_path / "m.npz")] if argv[0] == "train" else []
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "tapegrad.cli", *argv, *save], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stderr.startswith(
        f"tapegrad {argv[0]}: error: cannot write to standard output: No space left on device"
    )
    assert done.stderr.count("\n") == 1
    if save:
        assert (tmp_path / "m.npz").exists() and "training went on without printing and wrote --save" in done.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    done = subprocess.run(f"{sys.executable} -m tapegrad.cli ops | head -c 10", shell=True, capture_output=True,
                          text=True, timeout=120, executable="/bin/bash")
    assert done.stdout == "name      " and done.stderr == ""


# -- runs too large to fit ------------------------------------------------------------------------------
@pytest.fixture
def no_model(monkeypatch):
    from tapegrad import models

    monkeypatch.setattr(models, "MLP", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(models, "Linear", lambda *a, **k: pytest.fail("a model was built"))


def test_a_run_that_cannot_fit_is_refused_before_allocating(capsys, no_model, no_training):
    code, _, err = run(capsys, "train", "--hidden", "1000000", "--batch-size", "2000")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("tapegrad train: error: this run needs about ")
    assert "activations" in err and "for a batch of 1347 samples" in err and "this process may use" in err
    assert "make --batch-size or the model's size (--hidden) smaller" in err


@pytest.mark.parametrize(
    "argv, needs",
    [
        (["--hidden", "2000", "--batch-size", "1000"], "for a batch of 1000 samples"),
        (["--hidden", "100000"], "for a batch of 450 samples"),  # the held-out pass, in one batch
        (["--model", "linear", "--batch-size", "1347"], "for a batch of 1347 samples"),
        (["--hidden", "200000", "--optimizer", "adam"], "parameters 582.4 MB"),
    ],
)
def test_the_estimate_is_set_against_the_memory_the_process_may_use(
    capsys, monkeypatch, no_model, no_training, argv, needs
):
    from tapegrad import cli_train

    monkeypatch.setattr(cli_train, "available_memory", lambda: (100_000, "a test's bound"))
    code, _, err = run(capsys, "train", *argv)
    assert code == 2 and needs in err and "more than the 100.0 KB this process may use (a test's bound)" in err


def test_the_estimate_of_the_seed_recipe(monkeypatch):
    import argparse

    from tapegrad.models import MLPTask

    options = argparse.Namespace(
        seed=0, limit=None, dtype=np.dtype(np.float64), hidden=30, batch_size=1, optimizer="sgd"
    )
    task = MLPTask(options)
    estimate = task.memory_estimate(task.load_data())
    weights, count = 64 * 30 + 30 * 10, 64 * 30 + 30 + 30 * 10 + 10
    assert estimate.parameters == 8 * (2 * count + 64 * 30)
    assert (estimate.batch, estimate.activations) == (450, 8 * 450 * (64 + 2 * 2 * (30 + 10)))
    assert estimate.total == estimate.parameters + estimate.activations and weights < count


def test_the_address_space_limit_is_honoured(tmp_path):
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))\n"
        "from tapegrad.cli import main\n"
        "sys.exit(main(['train', '--hidden', '100000', '--batch-size', '1000', '--no-progress']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "its address-space limit, ulimit -v: 3.2 GB" in done.stderr and "mapped already" in done.stderr


def test_available_memory_reads_the_os(monkeypatch):
    from tapegrad.cli_train import available_memory

    found = available_memory()
    if os.path.exists("/proc/meminfo"):
        assert found is not None and found[0] > 0 and "MemAvailable" in found[1]
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (1 << 40, resource.RLIM_INFINITY))
    limited = available_memory()
    assert limited is not None and limited[0] <= 1 << 40
