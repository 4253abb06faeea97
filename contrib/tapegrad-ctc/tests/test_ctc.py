import itertools
import math
import pathlib
import re

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.testing import parametrize_operations


@parametrize_operations(plugin="ctc")
def test_contract(operation, check):
    check(operation)


def brute_force_nll(log_probs, target, blank=0):
    """-log p(target | x) by summing over every alignment (tiny T and C only)."""
    steps, classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=steps):
        collapsed = [c for i, c in enumerate(path) if (i == 0 or c != path[i - 1])]
        collapsed = [c for c in collapsed if c != blank]
        if collapsed == list(target):
            total += np.exp(sum(log_probs[t, c] for t, c in enumerate(path)))
    return -np.log(total)


def ctc(logits, targets, input_lengths=None, **kwargs):
    g = tg.Graph(seed=0)
    op = g.get_operation("CTCLoss", **kwargs)
    x = tg.Variable(logits)
    log_probs = op(x) if input_lengths is None else op(x, np.asarray(input_lengths))
    return g, op, x, log_probs, op.loss(targets)


def reduced(nll, targets, reduction):
    """torch.nn.functional.ctc_loss's reductions of per-sequence losses."""
    if reduction == "sum":
        return np.sum(nll)
    target_lengths = np.array([max(sum(c >= 0 for c in row), 1) for row in targets])
    return np.mean(np.asarray(nll) / target_lengths)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "targets, blank, input_lengths",
    [
        ([[1, 2]], 0, None),
        ([[1, 1]], 0, None),
        ([[2]], 0, None),
        ([[-1, -1]], 0, None),
        ([[0, 1, 0]], 2, None),
        ([[1, 2, -1], [2, 2, 1]], 0, None),
        ([[1, 2, -1], [2, 2, 1], [1, -1, -1]], 0, [3, 5, 1]),
        ([[2, 1], [-1, -1], [1, 1]], 0, [2, 0, 4]),
        ([[0, 1, 0], [1, -1, -1]], 2, [4, 2]),
    ],
)
def test_matches_a_brute_force_sum_over_alignments(targets, blank, input_lengths, reduction):
    """Every alignment of each sequence's first input_lengths[i] steps, summed; then torch's reduction."""
    rng = np.random.default_rng(3)
    targets = np.array(targets)
    logits = rng.standard_normal((len(targets), 5, 3))
    g, _, x, log_probs, value = ctc(logits, targets, input_lengths, blank=blank, reduction=reduction)
    lengths = [5] * len(targets) if input_lengths is None else input_lengths
    nll = [
        brute_force_nll(log_probs.value[i, : lengths[i]], [c for c in row if c >= 0], blank)
        if lengths[i]
        else (0.0 if (row < 0).all() else np.inf)
        for i, row in enumerate(targets)
    ]
    assert value == pytest.approx(reduced(nll, targets, reduction), rel=1e-10)
    g.backward()
    for i, length in enumerate(lengths):
        assert not x.grad[i, length:].any()  # the steps a sequence does not use get no gradient
    op = tg.Graph().get_operation("CTCLoss", blank=blank, reduction=reduction)
    inputs = [logits] if input_lengths is None else [logits, np.array(input_lengths)]
    report = tg.gradcheck(op, inputs, target=targets)
    assert report, str(report)


def test_the_default_reduction_is_torchs_mean_not_the_sum_over_the_batch_size():
    """Each sequence's loss divided by its target length, then the mean (the old default was sum / N)."""
    logits = np.random.default_rng(4).standard_normal((2, 6, 4))
    targets = np.array([[1, 2, 3], [2, -1, -1]])
    per_sequence = [ctc(logits[i : i + 1], targets[i : i + 1, : 3 - 2 * i], reduction="sum")[4] for i in range(2)]
    assert ctc(logits, targets)[4] == pytest.approx((per_sequence[0] / 3 + per_sequence[1] / 1) / 2, rel=1e-12)
    assert ctc(logits, targets, reduction="sum")[4] == pytest.approx(sum(per_sequence), rel=1e-12)


def test_input_lengths_ignore_the_steps_after_them_whatever_they_hold():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((2, 6, 4))
    targets = np.array([[1, 2], [3, -1]])
    _, _, _, _, value = ctc(logits, targets, [4, 2])
    padded = logits.copy()
    padded[0, 4:] = np.nan
    padded[1, 2:] = 1e308
    _, _, x, _, again = ctc(padded, targets, np.array([4.0, 2.0]))
    assert again == value
    cut = ctc(logits[:1, :4], targets[:1])[4] + ctc(logits[1:, :2], targets[1:, :1])[4]
    assert value == pytest.approx(cut / 2, rel=1e-12)


def test_a_target_longer_than_its_input_length_is_an_impossible_alignment():
    logits = np.zeros((2, 5, 4))
    targets = np.array([[1, 2, 3], [1, -1, -1]])
    with pytest.raises(tg.OperationError, match="batch element 0 .* needing 3 steps, but its input has 2"):
        ctc(logits, targets, [2, 5])
    g, _, x, _, value = ctc(logits, targets, [2, 5], zero_infinity=True)
    alone = ctc(logits[1:], targets[1:], [5])[4]
    assert value == pytest.approx(alone / 2)  # the mean over the batch still counts the element left out
    g.backward()
    assert not x.grad[0].any()


@pytest.mark.parametrize(
    "lengths, error, match",
    [
        (np.array([5]), tg.ShapeError, r"expected input_lengths of shape \(2,\), one per sequence, got shape \(1,\)"),
        (np.array([[5, 5]]), tg.ShapeError, "expected input_lengths of shape"),
        (np.array([5, 6]), tg.OutOfRangeError, r"input_lengths\[1\] is 6, outside 0\.\.5 \(the number of time steps\)"),
        (np.array([-1, 5]), tg.OutOfRangeError, r"input_lengths\[0\] is -1"),
        (np.array([2.5, 5.0]), tg.InputTypeError, "input_lengths must be whole numbers, got 2.5"),
        (np.array([np.nan, 5.0]), tg.NonFiniteError, "input_lengths hold NaN"),
        (np.array([np.inf, 5.0]), tg.OutOfRangeError, r"input_lengths\[0\] is inf"),
        (np.array([True, False]), tg.InputTypeError, "input_lengths must be integers, got dtype bool"),
    ],
)
def test_bad_input_lengths_raise_errors_naming_the_op(lengths, error, match):
    op = tg.Graph().get_operation("CTCLoss")
    with pytest.raises(error, match=rf"^CTCLoss \(ctc_loss_0\): {match}"):
        op(np.zeros((2, 5, 3)), lengths)


def test_input_lengths_receive_no_gradient_even_as_a_float_variable():
    g = tg.Graph()
    op = g.get_operation("CTCLoss")
    x, lengths = tg.Variable(np.zeros((2, 5, 3))), tg.Variable(np.array([5.0, 3.0]))
    op(x, lengths)
    op.loss(np.array([[1, 2], [2, -1]]))
    g.backward()
    assert lengths.grad is not None and not lengths.grad.any() and x.grad[0].any()


def test_gradient_matches_central_differences_on_a_batch():
    rng = np.random.default_rng(0)
    g = tg.Graph()
    op = g.get_operation("CTCLoss")
    report = tg.gradcheck(op, [rng.standard_normal((2, 7, 4))], target=np.array([[1, 2, 1], [3, -1, -1]]))
    assert report, str(report)


def test_long_sequences_stay_finite():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((2, 600, 30)) * 5
    targets = rng.integers(1, 30, (2, 150))
    g, op, x, _, value = ctc(logits, targets)
    assert np.isfinite(value) and value > 0
    g.backward()
    assert np.isfinite(x.grad).all()
    # each time step's gradient sums to zero (softmax minus a distribution), divided by N
    assert np.allclose(x.grad.sum(axis=2), 0.0, atol=1e-10)


def test_impossible_alignment_names_the_batch_element_unless_zero_infinity():
    logits = np.zeros((2, 3, 4))
    targets = np.array([[1, -1, -1], [1, 1, 2]])  # 1,1,2 needs 4 steps (a blank between the 1s)
    with pytest.raises(tg.OperationError, match="batch element 1"):
        ctc(logits, targets)
    g, _, x, _, value = ctc(logits, targets, zero_infinity=True)
    alone = ctc(logits[:1], targets[:1])[4]
    assert value == pytest.approx(alone / 2)
    g.backward()
    assert not x.grad[1].any()


@pytest.mark.parametrize(
    "targets, error, match",
    [
        (np.array([[1, 0]]), tg.OutOfRangeError, "label 0 is not allowed.*blank"),
        (np.array([[1, 5]]), tg.OutOfRangeError, "label 5"),
        (np.array([[-2, 1]]), tg.OutOfRangeError, "label -2"),
        (np.array([[1.0, 1e20]]), tg.OutOfRangeError, r"label 1e\+20"),
        (np.array([[1.0, np.inf]]), tg.OutOfRangeError, "label inf"),
        (np.array([[1.0, np.nan]]), tg.NonFiniteError, "NaN"),
        (np.array([[-1, 2]]), tg.ShapeError, "padding"),
        (np.array([1, 2]), tg.ShapeError, r"\(1, S\)"),
        (np.array([[1.5, 2.0]]), tg.InputTypeError, "integers"),
    ],
)
def test_bad_targets_raise_framework_errors(targets, error, match):
    g = tg.Graph()
    op = g.get_operation("CTCLoss")
    op(np.zeros((1, 4, 4)))
    with pytest.raises(error, match=match):
        op.loss(targets)


def test_bad_logits_rank():
    with pytest.raises(tg.ShapeError, match=r"\(N, T, C\)"):
        tg.Graph().get_operation("CTCLoss")(np.zeros((4, 4)))


def test_a_nan_logit_raises_non_finite_error_naming_the_batch_element():
    """It used to be dropped like an impossible alignment: row 0's loss alone, row 1's gradient zero."""
    logits = np.random.default_rng(0).standard_normal((2, 5, 3))
    logits[1, 3, 2] = np.nan
    for zero_infinity in (False, True):
        with pytest.raises(
            tg.NonFiniteError, match=r"CTCLoss \(ctc_loss_0\): the logits of batch element 1 \(of \[1\]\)"
        ):
            ctc(logits, np.array([[1, 2], [2, 1]]), zero_infinity=zero_infinity)


@pytest.mark.parametrize("fill", [np.nan, np.inf])
def test_all_nan_or_infinite_logits_raise_instead_of_a_zero_loss(fill):
    with pytest.raises(tg.NonFiniteError, match=r"batch element 0 \(of \[0, 1\]\) hold NaN or infinite values"):
        ctc(np.full((2, 5, 3), fill), np.array([[1, 2], [2, 1]]))


def test_a_minus_inf_logit_is_a_probability_of_zero():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, 5, 3))
    masked = logits.copy()
    masked[0, 3, 2] = -np.inf
    g, _, x, log_probs, value = ctc(masked, np.array([[1, 1]]), reduction="sum")  # class 2 is never needed
    assert value == pytest.approx(brute_force_nll(log_probs.value[0], [1, 1]), rel=1e-10)
    g.backward()
    assert np.isfinite(x.grad).all()


def test_logits_further_apart_than_the_float_range_give_an_infinite_loss_error_or_zero():
    logits = np.array([[[1e308, -1e308, 0.0]] * 3])  # class 1 gets probability 0 in float64
    with pytest.raises(tg.NonFiniteError, match=r"the loss of batch element 0 \(of \[0\]\) is infinite"):
        ctc(logits, np.array([[1]]))
    g, _, x, _, value = ctc(logits, np.array([[1]]), zero_infinity=True)
    g.backward()
    assert value == 0.0 and not x.grad.any()


@pytest.mark.parametrize("empty", [np.zeros((2, 0), dtype=np.int64), np.full((2, 3), -1)])
def test_empty_targets_of_width_zero_or_all_padding_give_the_empty_target_loss(empty):
    logits = np.random.default_rng(2).standard_normal((2, 4, 3))
    _, _, _, log_probs, value = ctc(logits, empty)
    assert value == pytest.approx(-log_probs.value[:, :, 0].sum() / 2, rel=1e-12)  # blank at every step


@pytest.mark.parametrize("targets", [np.zeros((2, 0), dtype=np.int64), np.full((2, 2), -1)])
def test_no_time_steps_and_an_empty_target_is_a_loss_of_zero(targets):
    g, _, x, _, value = ctc(np.zeros((2, 0, 3)), targets)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0  # not -0.0
    g.backward()
    assert x.grad.shape == (2, 0, 3)


def test_no_time_steps_and_a_label_is_an_impossible_alignment():
    with pytest.raises(tg.OperationError, match="batch element 0 .* its input has 0"):
        ctc(np.zeros((2, 0, 3)), np.array([[1], [-1]]))
    assert ctc(np.zeros((2, 0, 3)), np.array([[1], [-1]]), zero_infinity=True)[4] == 0.0


def test_an_empty_batch_is_a_clear_error():
    with pytest.raises(tg.ShapeError, match=r"CTCLoss \(ctc_loss_0\): the batch is empty \(logits shape \(0, 4, 3\)\)"):
        ctc(np.zeros((0, 4, 3)), np.zeros((0, 2), dtype=np.int64))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"blank": "a"}, tg.InputTypeError, "blank must be a whole number, got str 'a'"),
        ({"blank": -1}, tg.ArgumentError, "blank must be at least 0, got -1"),
        ({"blank": 1.5}, tg.InputTypeError, "blank must be a whole number"),
        ({"blank": None}, tg.InputTypeError, "blank must be a whole number"),
        ({"zero_infinity": 1}, tg.InputTypeError, "zero_infinity must be True or False, got int 1"),
        ({"zero_infinity": "no"}, tg.InputTypeError, "zero_infinity must be True or False"),
        ({"reduction": "none"}, tg.ArgumentError, "reduction must be 'mean' or 'sum', got 'none'"),
        ({"reduction": None}, tg.InputTypeError, "reduction must be 'mean' or 'sum', got NoneType None"),
    ],
)
def test_constructor_arguments_name_the_op(kwargs, error, match):
    with pytest.raises(error, match=rf"^CTCLoss \(ctc_loss_0\): {match}"):
        tg.Graph().get_operation("CTCLoss", **kwargs)


def test_readme_example_runs_as_written():
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    # (the first: the ops; test_*task*.py run the models')
    block = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, "README.md example", "exec"), namespace)
    assert namespace["value"] > 0 and namespace["graph"].forward_ops == []
    decoded = namespace["decoded"]
    assert len(decoded) == 2 and len(decoded[1]) <= 5 and all(0 < c < 6 for row in decoded for c in row)
