"""The character language model: its corpus's provenance, its data helpers, and its training step
captured equal to eager, bit for bit."""

import hashlib
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from tapegrad_rnn import corpus
from tapegrad_rnn.charlm import (
    CharLSTM,
    Vocabulary,
    perplexity,
    sample,
    split_text,
    streams,
    unigram_perplexity,
    windows,
)

import tapegrad as tg
from tapegrad.optim import Adam, clip_grad_norm

DATA = Path(corpus.__file__).parent / "data"


#: Docstrings a patch release may have changed: none differ on the releases the corpus was made from
#: (CPython 3.10.13, 3.11.7, 3.12.1, 3.13.0); Debian's 3.11.2, older than the tar extraction filters, differs
#: in 12 of 3,092.
PATCH_RELEASE_DRIFT = 0.01


def test_every_shipped_docstring_is_this_pythons_stdlib_docstring_at_its_module_and_name():
    """Each docstring of the shipped corpus is, character for character, the docstring of the object its
    index names, read from this Python's Lib/ with ast (but for a patch release's few changes)."""
    entries = corpus.read_entries()
    assert len(entries) > 3000 and sum(len(e.text) for e in entries) > 600_000
    differing = corpus.check_provenance()
    assert len(differing) <= PATCH_RELEASE_DRIFT * len(entries), differing[:5]
    # (and the check can fail: a docstring changed by one character is reported, with its name)
    changed = corpus.Docstring(entries[5].module, entries[5].qualname, entries[5].text + ".")
    assert changed not in set(corpus.extract())


def test_the_shipped_text_is_the_docstrings_joined_by_blank_lines_module_by_module():
    entries = corpus.read_entries()
    assert corpus.load_text() == "\n\n".join(e.text for e in entries)
    assert corpus.load_text().isascii()
    # each is one of this Python's docstrings, module by module in name order (within a module, source order
    # may differ between Pythons: 3.10's subprocess.py defines two of Popen's methods in another order)
    assert len(set(entries) - set(corpus.extract())) <= PATCH_RELEASE_DRIFT * len(entries)
    names = [e.module for e in entries]
    runs = [m for i, m in enumerate(names) if i == 0 or m != names[i - 1]]
    assert runs == sorted(set(names))  # (each module once, in name order)
    modules = set(names)
    assert {"argparse", "difflib", "textwrap", "typing"} <= modules
    assert all((Path(sysconfig.get_paths()["stdlib"]) / f"{m}.py").is_file() for m in modules)


def test_the_licence_shipped_with_the_corpus_is_the_psf_licence_as_cpython_ships_it():
    """CPython 3.10.13, 3.11.7 and 3.12.1 ship this LICENSE.txt byte for byte (3.13 updated its years)."""
    text = (DATA / corpus.LICENSE).read_text(encoding="utf-8")
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in text
    assert hashlib.sha256(text.encode()).hexdigest() == (
        "3b2f81fe21d181c499c59a256c8e1968455d6689d269aa85373bfb6af41da3bf"
    )


def test_extract_reads_docstrings_from_source_in_order_without_importing(tmp_path):
    (tmp_path / "zeta.py").write_text('"""Module Z."""\nraise SystemExit("imported!")\n')
    (tmp_path / "alpha.py").write_text(
        '"""Module A.\n\n    Indented."""\n'
        "if True:\n"
        "    class C:\n"
        '        """Class C."""\n'
        "        def f(self):\n"
        '            """Method f."""\n'
        "def g():\n"
        '    "Caf\\u00e9, not ASCII."\n'
        "def h():\n"
        "    pass\n"
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    assert corpus.extract(tmp_path) == [
        corpus.Docstring("alpha", "", "Module A.\n\nIndented."),
        corpus.Docstring("alpha", "C", "Class C."),
        corpus.Docstring("alpha", "C.f", "Method f."),
        corpus.Docstring("zeta", "", "Module Z."),
    ]


def test_common_keeps_the_docstrings_every_extraction_has():
    a, b, c = (corpus.Docstring("m", q, t) for q, t in (("f", "x"), ("g", "y"), ("h", "z")))
    assert corpus.common([[a, b, c], [c, a], [a, corpus.Docstring("m", "g", "y changed"), c]]) == [a, c]


def test_vocabulary_round_trips_and_names_an_unknown_character():
    vocabulary = Vocabulary("hello world")
    assert vocabulary.chars == sorted(set("hello world")) and vocabulary.size == 8
    ids = vocabulary.encode("world hello")
    assert ids.dtype == np.int64 and vocabulary.decode(ids) == "world hello"
    with pytest.raises(tg.ArgumentError, match="Vocabulary.encode: character 'z' is not in the vocabulary"):
        vocabulary.encode("low z")
    with pytest.raises(tg.ArgumentError, match="empty"):
        Vocabulary("")


def test_streams_and_windows_pair_each_character_with_the_next():
    ids = np.arange(23)
    data = streams(ids, 3)
    assert data.tolist() == [list(range(0, 7)), list(range(7, 14)), list(range(14, 21))]
    pairs = list(windows(data, 4))
    assert [x.shape for x, _ in pairs] == [(3, 4), (3, 2)]
    for x, y in pairs:
        assert np.array_equal(y, x + 1)
    with pytest.raises(tg.ShapeError, match="streams: 5 ids cannot make 3 streams"):
        streams(np.arange(5), 3)


def test_split_and_unigram_perplexity():
    train, val = split_text("abcdefghijklmnopqrst", 0.25)
    assert (train, val) == ("abcdefghijklmno", "pqrst")
    # two equally frequent characters (add-one smoothed: still equal): perplexity 2
    assert unigram_perplexity(np.array([0, 1, 0, 1]), np.array([1, 0, 0]), 2) == pytest.approx(2.0)
    # a character never seen in training gets 1 / (len + vocab)
    assert unigram_perplexity(np.array([0, 0]), np.array([1]), 2) == pytest.approx(4.0)


def make(seed=0, dtype="float64"):
    model = CharLSTM(7, embed_size=4, hidden_size=6, seed=seed, dtype=dtype)
    optimizer = Adam(model.graph.parameter, lr=0.01)

    def step(ids, targets, h, c):
        _, h_T, c_T = model.forward(ids, h, c)
        value = model.loss(targets)
        model.graph.backward()
        clip_grad_norm(optimizer.variables, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return value, h_T, c_T

    return model, step


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_captured_training_step_equals_eager_bit_for_bit(dtype):
    """Truncated BPTT over streams, the state carried as arrays: six captured steps (a record, its
    checked replay, four plain replays, and a last window of 2: a second record) against the
    same steps run eagerly on a twin model: every loss, state and parameter identical."""
    data = streams(np.random.default_rng(1).integers(0, 7, 210), 4)
    results = []
    for captured in (False, True):
        model, step = make(dtype=dtype)
        run = model.graph.capture(step) if captured else step
        h, c = model.initial_state(4)
        losses, states = [], []
        for ids, targets in windows(data, 7):
            value, h_T, c_T = run(ids, targets, h, c)
            h, c = h_T.value, c_T.value
            losses.append(value)
            states.append((h.copy(), c.copy()))
        params = {name: v.value.copy() for name, v in model.graph.parameter.variable_dict.items()}
        results.append((losses, states, params))
        if captured:
            assert len(run.records) == 2  # windows of 7 columns, and the last of 2
    (eager_losses, eager_states, eager_params), (losses, states, params) = results
    assert len(losses) == 8 and losses == eager_losses
    assert all(np.array_equal(a, b) for pair in zip(states, eager_states) for a, b in zip(*pair))
    assert params.keys() == eager_params.keys()
    for name in params:
        assert params[name].dtype == np.dtype(dtype) and np.array_equal(params[name], eager_params[name]), name
    assert losses[-1] < losses[0]


def test_perplexity_is_exp_of_the_mean_loss_and_leaves_the_mode_alone():
    model, _ = make()
    data = streams(np.random.default_rng(2).integers(0, 7, 90), 3)
    value = perplexity(model, data, steps=100)  # one window: the whole streams
    probs, _, _ = model.forward(data[:, :-1], *model.initial_state(3))
    expected = model.loss(data[:, 1:])
    model.graph.clear()
    assert value == pytest.approx(math.exp(expected), rel=1e-12)
    assert model.graph.train_state and not model.graph.tape.entries
    # window by window, the state carried on: the same numbers as one pass
    assert perplexity(model, data, steps=5) == pytest.approx(value, rel=1e-12)


def test_sample_starts_with_the_prime_draws_known_characters_and_is_seeded():
    vocabulary = Vocabulary("abcdefg")
    model, _ = make()
    text = sample(model, vocabulary, "ab", 30, seed=3)
    assert text.startswith("ab") and len(text) == 32 and set(text) <= set("abcdefg")
    assert sample(model, vocabulary, "ab", 30, seed=3) == text
    with pytest.raises(tg.ArgumentError, match="prime"):
        sample(model, vocabulary, "", 5)


def test_the_readmes_language_model_example_runs_as_written_on_a_few_windows():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[1]
    assert block.count("windows(data, 64):") == 1
    block = block.replace("windows(data, 64):", "list(windows(data, 64))[:3]:")
    results: list = []
    namespace: dict = {"print": lambda *values: results.append(values)}
    exec(compile(block, "README.md example", "exec"), namespace)
    (model_perplexity, unigram), (text,) = results
    assert 1 < model_perplexity < 96 and 25 < unigram < 35  # three steps: nearly uniform over 96 characters
    assert text.startswith("Return the") and len(text) == 210
    assert len(namespace["step"].records) == 1


def test_every_parameters_gradient_matches_central_differences_through_the_whole_model():
    """Embedding, LSTM (from given states too), Affine and SoftmaxLoss together, float64."""
    model = CharLSTM(7, embed_size=3, hidden_size=4, seed=5)
    rng = np.random.default_rng(6)
    ids, targets = rng.integers(0, 7, (3, 5)), rng.integers(0, 7, (3, 5))
    h0, c0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    report = tg.numerical_gradient_check(model, [ids, h0, c0], tg.Variable(targets), verbose=False)
    assert report and len(report) == 6 and not model.graph.tape.entries  # W, W_ih, W_hh, b, W, b
    assert tg.numerical_gradient_check(model, [ids], tg.Variable(targets), verbose=False)  # from zero states
