"""``tapegrad train/evaluate --model char-lstm``: one epoch on a small slice, the options, the saved
parameters evaluated again, and the Trainer's captured steps equal to eager ones without a CaptureWarning."""

import re
import warnings

import numpy as np
import pytest
from tapegrad_rnn.charlm import CharLSTM, Vocabulary, samples
from tapegrad_rnn.corpus import load_text
from tapegrad_rnn.tasks import CharLSTMTask

import tapegrad as tg
from tapegrad.cli import main
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


def test_char_lstm_is_the_rnn_plugins_model():
    assert find_task("char-lstm") is CharLSTMTask
    assert find_task("rnn:char-lstm") is CharLSTMTask


def test_one_epoch_on_a_slice_prints_perplexity_against_the_unigram_model_and_a_sample(tmp_path, capsys):
    saved = tmp_path / "lm.npz"
    code, out, err = run(capsys, "train", "--model", "char-lstm", "--limit", "64", "--epochs", "1", "--sample", "60",
                         "--hidden", "64", "--no-progress", "--save", str(saved))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "tapegrad train: CharLSTM (vocabulary 96, embedding 32, LSTM 64) on Python's docstrings, windows of 64 "
        "characters, adam lr=0.002, batch size 32, 1 epochs, seed 0 (64 train / 516 validation samples)"
    )
    summary = re.fullmatch(
        r"=== Epoch 1 Summary === train loss: (\d+\.\d{4}) validation perplexity (\d+\.\d{4})", lines[1]
    )
    assert summary, lines[1]
    perplexity = float(summary.group(2))
    unigram = float(
        re.fullmatch(r"character-frequency \(unigram\) model: validation perplexity (\d+\.\d{4})", lines[4]).group(1)
    )
    ratio = float(re.fullmatch(r"  (\d\.\d{3})x the perplexity of a character-frequency model", lines[2]).group(1))
    assert ratio == pytest.approx(perplexity / unigram, abs=1e-3)
    assert lines[3].startswith(f"final validation perplexity: {perplexity:.4f} (")
    # two steps do not learn the text: worse than the unigram model, better than uniform guessing over 96 characters
    assert unigram < perplexity < 96
    assert lines[5] == "sampled text (temperature 0.8, seed 0):"
    sampled = "\n".join(lines[6:-1])
    assert sampled.startswith("Return the") and len(sampled) == len("Return the") + 60
    assert lines[-1] == f"saved parameters to {saved}" and saved.exists()

    # the saved parameters evaluated again: the same perplexity, sizes read from the file
    code, out, err = run(capsys, "evaluate", "--model", "char-lstm", "--load", str(saved), "--sample", "0")
    assert code == 0, err
    assert out.splitlines()[0] == f"validation perplexity: {perplexity:.4f} (516 samples, seed 0)"
    # (the character frequencies of the whole training text, where training had --limit 64)
    assert out.splitlines()[1].startswith("character-frequency (unigram) model: validation perplexity 28.4")


def test_float32_a_text_of_ones_own_and_the_model_options(tmp_path, capsys):
    text = tmp_path / "poem.txt"
    text.write_text("the quick brown fox jumps over the lazy dog; " * 40 + "été", encoding="utf-8")
    saved = tmp_path / "poem.npz"
    code, out, err = run(capsys, "train", "--model", "char-lstm", "--text", str(text), "--dtype", "float32",
                         "--epochs", "2", "--hidden", "12", "--embed", "5", "--window", "16", "--batch-size", "8",
                         "--sample", "20", "--prime", "the", "--no-progress", "--save", str(saved))
    assert code == 0, err
    assert out.splitlines()[0].startswith(
        "tapegrad train: CharLSTM (vocabulary 29, embedding 5, LSTM 12) on poem.txt, windows of 16 characters, "
        "adam lr=0.002, float32, batch size 8, 2 epochs"
    )
    assert "(107 train / 5 validation samples)" in out.splitlines()[0]
    assert out.count("Summary ===") == 2 and "\nthe" in out
    with ParameterFile(saved) as arrays:
        assert set(arrays.dtypes) == {
            "embedding_0.W", "lstm_0.W_ih", "lstm_0.W_hh", "lstm_0.b", "affine_0.W", "affine_0.b"
        }
        assert set(arrays.dtypes.values()) == {np.dtype(np.float32)}
        assert arrays.shapes["lstm_0.W_hh"] == (12, 48) and arrays.shapes["embedding_0.W"] == (29, 5)
    # another text (other characters): refused, naming what differs
    code, _, err = run(capsys, "evaluate", "--model", "char-lstm", "--load", str(saved))
    assert code != 0 and "trained on a text of 29 distinct characters, but Python's docstrings has 96" in err
    code, _, err = run(capsys, "evaluate", "--model", "char-lstm", "--load", str(saved), "--text", str(text),
                       "--hidden", "13")
    assert code != 0 and "--hidden 13 given, the file's is 12" in err
    code, out, err = run(capsys, "evaluate", "--model", "char-lstm", "--load", str(saved), "--text", str(text),
                         "--sample", "0")
    assert code == 0 and out.startswith("validation perplexity: "), err


def test_refusals_name_the_problem(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("far too short", encoding="utf-8")
    code, _, err = run(capsys, "train", "--model", "char-lstm", "--text", str(short))
    assert code == 1 and err.splitlines()[-1].startswith(
        "tapegrad train: error: char-lstm: the text (short.txt, 13 characters) is too short "
        "for windows of 64 characters"
    )
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9".encode("latin-1") * 100)
    code, _, err = run(capsys, "train", "--model", "char-lstm", "--text", str(latin))
    assert code != 0 and "is not UTF-8 text" in err
    code, _, err = run(capsys, "train", "--model", "char-lstm", "--text", str(tmp_path / "missing.txt"))
    assert code != 0 and "cannot read --text" in err
    # far too large: refused before anything is allocated, naming the estimate
    code, _, err = run(capsys, "train", "--model", "char-lstm", "--hidden", "100000")
    assert code == 2 and "this run needs about" in err and "--batch-size or the model's size" in err


def test_the_trainer_captures_the_model_and_its_steps_equal_eager_ones_bit_for_bit():
    """Windows of the corpus through tapegrad.Trainer, captured and eager: every step's loss, the
    validation perplexity and the parameters identical; no CaptureWarning."""
    text = load_text()[:20_000]
    vocabulary = Vocabulary(text)
    x, y = samples(vocabulary.encode(text), 32)
    results = []
    for capture in (True, False):
        model = CharLSTM(vocabulary.size, 8, 16, seed=0)
        trainer = tg.Trainer(model, Adam(model.graph.parameter, lr=0.01), batch_size=16, capture=capture, verbose=False,
                             clip_grad_norm=5.0, eval_batch_size=100)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tg.CaptureWarning)
            history = trainer.train(x[:200], y[:200], x[600:], y[600:], epochs=2)
        results.append((history, {n: v.value.copy() for n, v in model.graph.parameter.variable_dict.items()}))
        if capture:
            assert trainer._train_step.records  # captured: recorded and replayed, not fallen back to eager
    (captured, captured_params), (eager, eager_params) = results
    assert len(captured.step_losses) == 2 * 13 and captured.step_losses == eager.step_losses
    assert captured.metric == eager.metric and captured.metric[1] < captured.metric[0]
    for name in captured_params:
        assert np.array_equal(captured_params[name], eager_params[name]), name
