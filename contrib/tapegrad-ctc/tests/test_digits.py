"""ctc-digits: the digit strings, the scores, and the training step captured equal to eager, bit for bit."""

import numpy as np
import pytest
from tapegrad_ctc.digits import CLASSES, CTCDigits, digit_strings, edit_distance, error_rates

import tapegrad as tg
from tapegrad.optim import Adam, clip_grad_norm


def images(n=10, seed=0):
    """n 8x8 'digits' 0..16, image i of label i % 10, each distinct."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 17, (n, 64)).astype(np.float64), np.arange(n) % 10


def test_digit_strings_put_the_digits_side_by_side_column_by_column():
    pictures, labels = images()
    data = digit_strings(pictures, labels, 50, np.random.default_rng(1))
    assert data.x.shape == (50, 40, 8) and data.lengths.shape == (50,) and data.targets.shape == (50, 5)
    assert set(data.lengths.tolist()) == {24, 32, 40}
    square = pictures.reshape(-1, 8, 8)
    for row in range(50):
        digits = data.digits[row]
        assert (
            len(digits) * 8 == data.lengths[row]
            and data.targets[row, len(digits) :].tolist() == [-1] * (5 - len(digits))
        )
        assert (data.targets[row, : len(digits)] == np.array(digits) + 1).all()
        assert not data.x[row, data.lengths[row] :].any()  # padding
        for k, digit in enumerate(digits):
            block = data.x[row, 8 * k : 8 * k + 8]  # (columns, pixels)
            # the image's columns in order, scaled to [0, 1]; the label says which image (one per label here)
            assert np.array_equal(block * 16, square[digit].T)


def test_digit_strings_refuse_mismatched_data():
    pictures, labels = images()
    with pytest.raises(tg.ShapeError, match="digit_strings: expected as many labels as images"):
        digit_strings(pictures, labels[:3], 5, np.random.default_rng(0))
    with pytest.raises(tg.ArgumentError, match="shortest <= longest"):
        digit_strings(pictures, labels, 5, np.random.default_rng(0), shortest=4, longest=3)


def test_edit_distance_and_error_rates():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1
    assert edit_distance([3, 2, 1], [1, 2, 3]) == 2
    assert edit_distance([], [4, 4]) == 2
    cer, accuracy = error_rates([[1, 2, 3], [4, 4], [5, 6, 7, 8]], [[1, 2, 3], [4], [5, 0, 7]])
    assert cer == pytest.approx((0 + 1 + 2) / 7) and accuracy == pytest.approx(1 / 3)
    with pytest.raises(tg.ShapeError, match="error_rates"):
        error_rates([[1]], [[1], [2]])


def make(dtype):
    model = CTCDigits(hidden_size=5, seed=0, dtype=dtype)
    optimizer = Adam(model.graph.parameter, lr=0.01)

    def step(x, lengths, targets):
        model.forward(x, lengths)
        value = model.loss(targets)
        model.graph.backward()
        clip_grad_norm(optimizer.variables, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return value

    return model, step


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_captured_training_step_equals_eager_bit_for_bit(dtype):
    """Six batches of 4 strings and a last one of 2 (a second record), captured, against the same
    steps run eagerly on a twin model: every loss and parameter identical."""
    pictures, labels = images()
    data = digit_strings(pictures, labels, 26, np.random.default_rng(2))
    results = []
    for captured in (False, True):
        model, step = make(dtype)
        run = model.graph.capture(step) if captured else step
        losses = []
        for begin in range(0, len(data), 4):
            part = data.take(slice(begin, begin + 4))
            losses.append(run(part.x, part.lengths, part.targets))
        params = {name: v.value.copy() for name, v in model.graph.parameter.variable_dict.items()}
        results.append((losses, params))
        if captured:
            assert len(run.records) == 2
    (eager_losses, eager_params), (losses, params) = results
    assert len(losses) == 7 and losses == eager_losses
    for name in params:
        assert params[name].dtype == np.dtype(dtype) and np.array_equal(params[name], eager_params[name]), name


def test_the_model_reads_strings_in_eval_mode_and_decodes_classes_to_digits():
    pictures, labels = images()
    data = digit_strings(pictures, labels, 7, np.random.default_rng(3))
    model, _ = make("float64")
    read = model.read(data, batch_size=3)
    assert len(read) == 7 and all(0 <= d <= 9 for row in read for d in row)
    assert model.graph.train_state and not model.graph.tape.entries
    log_probs = np.full((1, 6, CLASSES), -10.0)
    for t, c in enumerate([3, 3, 0, 3, 1, 0]):  # classes 3, 3, blank, 3, 1: digits 2, 2, 0
        log_probs[0, t, c] = 0.0
    assert model.decode(log_probs, np.array([6])) == [[2, 2, 0]]
    assert model.decode(log_probs, np.array([2])) == [[2]]


def test_the_readmes_digit_strings_example_runs_as_written_on_a_few_batches():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[1]
    assert block.count("range(0, len(train), 32)") == 1
    block = block.replace("range(0, len(train), 32)", "range(0, 96, 32)")
    namespace: dict = {}
    exec(compile(block, "README.md example", "exec"), namespace)
    assert 0 < namespace["cer"] <= 1.5 and 0 <= namespace["sequence_accuracy"] <= 1
    assert len(namespace["train"]) == 4000 and len(namespace["test"]) == 500


def test_every_parameters_gradient_matches_central_differences_through_the_whole_model():
    """LSTM, Affine and CTCLoss with input lengths together, float64."""
    pictures, labels = images()
    data = digit_strings(pictures, labels, 3, np.random.default_rng(4))
    model = CTCDigits(hidden_size=3, seed=1)
    report = tg.numerical_gradient_check(model, [data.x, data.lengths], tg.Variable(data.targets), verbose=False)
    assert report and len(report) == 5 and not model.graph.tape.entries
