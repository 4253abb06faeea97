import itertools

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


def ctc(logits, targets, **kwargs):
    g = tg.Graph(seed=0)
    op = g.get_operation("CTCLoss", **kwargs)
    x = tg.Variable(logits)
    log_probs = op(x)
    return g, op, x, log_probs, op.loss(targets)


@pytest.mark.parametrize(
    "targets, blank",
    [([[1, 2]], 0), ([[1, 1]], 0), ([[2]], 0), ([[-1, -1]], 0), ([[0, 1, 0]], 2), ([[1, 2, -1], [2, 2, 1]], 0)],
)
def test_matches_a_brute_force_sum_over_alignments(targets, blank):
    rng = np.random.default_rng(3)
    targets = np.array(targets)
    logits = rng.standard_normal((len(targets), 5, 3))
    _, _, _, log_probs, value = ctc(logits, targets, blank=blank)
    expected = np.mean([brute_force_nll(log_probs.value[i], [c for c in row if c >= 0], blank) for i, row in enumerate(targets)])
    assert value == pytest.approx(expected, rel=1e-10)


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
        (np.array([[1, 0]]), tg.ShapeError, "blank"),
        (np.array([[1, 5]]), tg.ShapeError, "label 5"),
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
