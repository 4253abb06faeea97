"""``tapegrad train/evaluate --model ctc-digits``: one epoch on a small slice, the saved parameters
evaluated again, and the Trainer's captured steps equal to eager ones without a CaptureWarning."""

import re
import warnings

import numpy as np
import pytest
from tapegrad_ctc.digits import CharacterErrorRate, CTCDigits, digit_strings
from tapegrad_ctc.tasks import CTCDigitsTask

import tapegrad as tg
from tapegrad.cli import main
from tapegrad.datasets import load_digits
from tapegrad.optim import Adam
from tapegrad.parameter import ParameterFile
from tapegrad.registry import find_task


def run(capsys, *argv):
    with warnings.catch_warnings():
        warnings.simplefilter("error", tg.CaptureWarning)  # the model's steps must capture cleanly
        try:
            code = main(list(argv))
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ctc_digits_is_the_ctc_plugins_model():
    assert find_task("ctc-digits") is CTCDigitsTask and find_task("ctc:ctc-digits") is CTCDigitsTask


def test_one_epoch_on_a_slice_prints_the_error_rates_and_some_strings_read(tmp_path, capsys):
    saved = tmp_path / "ctc.npz"
    code, out, err = run(capsys, "train", "--model", "ctc-digits", "--limit", "96", "--epochs", "1",
                         "--test-strings", "100", "--no-progress", "--save", str(saved))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "tapegrad train: LSTM 8-128 + Affine 128-11 + CTC on strings of 3-5 digits, adam lr=0.003, batch size 32, "
        "1 epochs, seed 0 (96 train / 100 test samples)"
    )
    summary = re.fullmatch(
        r"=== Epoch 1 Summary === train loss: \d+\.\d{4} "
        r"test character error rate (\d\.\d{4}) sequence accuracy (\d\.\d{4})",
        lines[1],
    )
    assert summary, lines[1]
    cer, accuracy = float(summary.group(1)), float(summary.group(2))
    assert 0 < cer <= 1.5 and accuracy < 0.5  # three steps do not read digits
    assert lines[2].startswith(f"final test character error rate: {cer:.4f}, sequence accuracy: {accuracy:.4f} (")
    assert lines[3] == "the first held-out strings:"
    for line in lines[4:9]:
        assert re.fullmatch(r"  read +\d* for \d{3,5}", line), line
    assert lines[9] == f"saved parameters to {saved}"

    code, out, err = run(capsys, "evaluate", "--model", "ctc-digits", "--load", str(saved), "--test-strings", "100")
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"test character error rate: {cer:.4f}, sequence accuracy: {accuracy:.4f} (100 samples, seed 0)"
    )
    assert out.splitlines()[1:] == lines[3:9]  # the same strings, read the same way


def test_float32_and_the_hidden_size_read_from_the_file(tmp_path, capsys):
    saved = tmp_path / "small.npz"
    code, out, err = run(capsys, "train", "--model", "ctc-digits", "--dtype", "float32", "--hidden", "6",
                         "--strings", "40", "--test-strings", "10", "--epochs", "2", "--batch-size", "16",
                         "--no-progress", "--save", str(saved))
    assert code == 0, err
    assert "LSTM 8-6 + Affine 6-11" in out and "float32" in out.splitlines()[0] and out.count("Summary ===") == 2
    with ParameterFile(saved) as arrays:
        assert set(arrays.dtypes.values()) == {np.dtype(np.float32)} and arrays.shapes["lstm_0.W_hh"] == (6, 24)
    code, out, err = run(capsys, "evaluate", "--model", "ctc-digits", "--load", str(saved), "--test-strings", "10")
    assert code == 0 and out.startswith("test character error rate: "), err
    code, _, err = run(capsys, "evaluate", "--model", "ctc-digits", "--load", str(saved), "--hidden", "7")
    assert code != 0 and "--hidden 7 given, the file's is 6" in err
    code, _, err = run(capsys, "train", "--model", "ctc-digits", "--hidden", "100000")
    assert code == 2 and "this run needs about" in err


def test_the_test_strings_come_from_the_test_images_and_do_not_depend_on_the_training_options():
    def data(**options):
        defaults = {"seed": 0, "strings": 4000, "test_strings": 50, "limit": None}
        return CTCDigitsTask(__import__("argparse").Namespace(**{**defaults, **options})).load_data()

    full, limited, fewer = data(), data(limit=10), data(strings=7)
    assert full.train_samples == 4000 and limited.train_samples == 10 and fewer.train_samples == 7
    assert np.array_equal(full.x_test[0], limited.x_test[0]) and np.array_equal(full.y_test, fewer.y_test)
    assert (
        np.array_equal(limited.x_train[0], full.x_train[0][:10]) and np.array_equal(limited.y_train, full.y_train[:10])
    )
    x_train, x_test, _, _ = load_digits(seed=0)
    # every 8-column block of a test string is a test image's columns
    test_images = {tuple(np.round(img.reshape(8, 8).T.ravel() * 16).astype(int)) for img in x_test}
    train_images = {tuple(np.round(img.reshape(8, 8).T.ravel() * 16).astype(int)) for img in x_train}
    x, lengths = full.x_test
    for row in range(10):
        for k in range(lengths[row] // 8):
            block = tuple(np.round(x[row, 8 * k : 8 * k + 8].ravel() * 16).astype(int))
            assert block in test_images and block not in train_images


def test_the_metric_decodes_outputs_with_the_input_lengths():
    log_probs = np.full((2, 6, 11), -10.0)
    for t, c in enumerate([4, 0, 4, 2, 2, 9]):  # digits 3, 3, 1 (then 8 beyond the second string's length)
        log_probs[:, t, c] = 0.0
    lengths = np.array([6, 5])
    targets = np.array([[4, 4, 2, -1], [4, 4, 2, -1]])
    values = CharacterErrorRate()(log_probs, targets, inputs=(None, lengths), loss=None)
    assert values == {"character error rate": pytest.approx(1 / 6), "sequence accuracy": 0.5}


def test_the_trainer_captures_the_model_and_its_steps_equal_eager_ones_bit_for_bit():
    x_train, _, y_train, _ = load_digits(seed=0)
    data = digit_strings(x_train * 16, y_train, 70, np.random.default_rng(0))
    results = []
    for capture in (True, False):
        model = CTCDigits(6, seed=0)
        trainer = tg.Trainer(model, Adam(model.graph.parameter, lr=0.01), batch_size=16, capture=capture, verbose=False,
                             clip_grad_norm=5.0, eval_batch_size=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tg.CaptureWarning)
            history = trainer.train((data.x[:50], data.lengths[:50]), data.targets[:50],
                                    (data.x[50:], data.lengths[50:]), data.targets[50:], epochs=2)
        results.append((history, {n: v.value.copy() for n, v in model.graph.parameter.variable_dict.items()}))
        if capture:
            assert trainer._train_step.records
    (captured, captured_params), (eager, eager_params) = results
    assert len(captured.step_losses) == 2 * 4 and captured.step_losses == eager.step_losses
    assert [r.metrics for r in captured] == [r.metrics for r in eager]
    for name in captured_params:
        assert np.array_equal(captured_params[name], eager_params[name]), name
