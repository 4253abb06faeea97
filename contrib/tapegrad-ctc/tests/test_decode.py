import numpy as np
import pytest
import tapegrad_ctc
from tapegrad_ctc import greedy_decode

import tapegrad as tg


def one_hot_scores(paths, classes=4):
    """Scores (N, T, C) whose argmax at each step is the given path's class."""
    scores = np.full((len(paths), len(paths[0]), classes), -5.0)
    for i, path in enumerate(paths):
        for t, c in enumerate(path):
            scores[i, t, c] = 1.0
    return scores


def test_exported_from_the_package():
    assert "greedy_decode" in tapegrad_ctc.__all__ and tapegrad_ctc.greedy_decode is greedy_decode


@pytest.mark.parametrize(
    "path, blank, expected",
    [
        ([1, 1, 0, 1, 2, 2], 0, [1, 1, 2]),  # a blank separates the repeated 1s
        ([0, 0, 0, 0, 0, 0], 0, []),
        ([3, 3, 3, 3, 3, 3], 0, [3]),
        ([1, 2, 1, 2, 0, 0], 0, [1, 2, 1, 2]),
        ([0, 1, 1, 3, 3, 0], 3, [0, 1, 0]),
    ],
)
def test_argmax_per_step_repeats_collapsed_blanks_dropped(path, blank, expected):
    assert greedy_decode(one_hot_scores([path]), blank=blank) == [expected]


def test_input_lengths_limit_each_sequence_to_its_steps():
    scores = one_hot_scores([[1, 2, 0, 3, 3, 1], [2, 2, 0, 2, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert greedy_decode(scores, [3, 6, 0]) == [[1, 2], [2, 2, 1], []]
    assert greedy_decode(scores, np.array([6.0, 1.0, 2.0])) == [[1, 2, 3, 1], [2], [1]]


def test_decodes_ctc_loss_output_a_variable_of_log_probabilities():
    g = tg.Graph()
    ctc = g.get_operation("CTCLoss")
    scores = one_hot_scores([[2, 2, 0, 2, 3, 0]]) * 10
    log_probs = ctc(scores, np.array([5]))
    assert greedy_decode(log_probs, tg.Variable(np.array([5]))) == [[2, 2, 3]] == greedy_decode(scores, [5])


def test_ties_go_to_the_lowest_class_as_argmax_does():
    assert greedy_decode(np.zeros((1, 3, 4))) == [[]]  # blank 0 wins every tie
    assert greedy_decode(np.zeros((1, 3, 4)), blank=2) == [[0]]


def test_no_time_steps_decode_to_nothing():
    assert greedy_decode(np.zeros((2, 0, 3))) == [[], []]


@pytest.mark.parametrize(
    "scores, kwargs, error, match",
    [
        (np.zeros((4, 3)), {}, tg.ShapeError, r"expected scores of shape \(N, T, C\) with C >= 1, got \(4, 3\)"),
        (np.zeros((2, 3, 0)), {}, tg.ShapeError, r"expected scores .* with C >= 1, got \(2, 3, 0\)"),
        (np.zeros((2, 3, 4)), {"blank": 4}, tg.ShapeError, "blank 4 is not a class of scores with C=4"),
        (np.zeros((2, 3, 4)), {"blank": -1}, tg.ArgumentError, "blank must be at least 0"),
        (np.zeros((2, 3, 4)), {"blank": 1.5}, tg.InputTypeError, "blank must be a whole number"),
        (np.zeros((2, 3, 4)), {"input_lengths": [3]}, tg.ShapeError, r"expected input_lengths of shape \(2,\)"),
        (np.zeros((2, 3, 4)), {"input_lengths": [3, 4]}, tg.OutOfRangeError,
         r"input_lengths\[1\] is 4, outside 0\.\.3"),
        (np.array([[["a"]]]), {}, tg.InputTypeError, "expected real-valued scores, got dtype <U1"),
        (np.array([[[0.0, np.nan], [1.0, 0.0]]]), {}, tg.NonFiniteError, "the scores of sequence 0 hold NaN at step 0"),
    ],
)
def test_bad_input_raises_errors_naming_greedy_decode(scores, kwargs, error, match):
    with pytest.raises(error, match=rf"^greedy_decode: {match}"):
        greedy_decode(scores, **kwargs)


def test_nan_beyond_a_sequences_input_length_is_not_read():
    scores = one_hot_scores([[1, 2, 2, 1]])
    scores[0, 3] = np.nan
    assert greedy_decode(scores, [3]) == [[1, 2]]
