"""Activations, layers and losses: forward values against closed-form numpy, stability, bad inputs."""

import warnings

import numpy as np
import pytest

import tapegrad as tg


def apply(name, *inputs, graph=None, **kwargs):
    g = graph or tg.Graph(seed=0)
    op = g.get_operation(name, **kwargs)
    return g, op, op(*[tg.Variable(x) if isinstance(x, np.ndarray) else x for x in inputs])


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize(
    "name, kwargs, ref",
    [
        ("Sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
        ("Tanh", {}, np.tanh),
        ("Relu", {}, lambda x: np.maximum(x, 0)),
        ("LeakyRelu", {"alpha": 0.1}, lambda x: np.where(x > 0, x, 0.1 * x)),
        ("Softmax", {}, softmax),
        ("Softmax", {"axis": 0}, lambda x: softmax(x, 0)),
        ("LogSoftmax", {}, lambda x: np.log(softmax(x))),
    ],
)
def test_activations_match_closed_forms(name, kwargs, ref, rng):
    x = rng.standard_normal((4, 5))
    _, _, out = apply(name, x, **kwargs)
    assert np.allclose(out.value, ref(x))


@pytest.mark.parametrize("name", ["Sigmoid", "Tanh", "Softmax", "LogSoftmax", "SoftmaxLoss", "SigmoidCrossEntropyLoss"])
def test_large_magnitudes_stay_finite_without_warnings(name):
    x = np.array([[-800.0, -1e3, 0.0, 1e3, 800.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g, op, out = apply(name, x)
        assert np.isfinite(out.value).all()
        if name == "SoftmaxLoss":
            assert np.isfinite(op.loss(np.array([3])))
        elif name == "SigmoidCrossEntropyLoss":
            assert np.isfinite(op.loss(np.array([[0.0, 1.0, 1.0, 0.0, 1.0]])))
        else:
            g.backward(grads={out: np.ones_like(x)})
            return
        g.backward()


def test_affine_matches_numpy_and_initialises_as_documented():
    g = tg.Graph(seed=0)
    aff = g.get_operation("Affine", [400, 50])
    assert aff.W.shape == (400, 50) and aff.b.shape == (50,) and not aff.b.value.any()
    assert abs(aff.W.value.std() - 1 / 20) < 0.002
    x = np.random.default_rng(1).standard_normal((3, 400))
    assert np.allclose(aff(tg.Variable(x)).value, x @ aff.W.value)
    no_bias = g.get_operation("Affine", [4, 2], bias=False)
    assert set(no_bias.parameters()) == {"W"}


def test_affine_wrong_width_names_the_op_and_shapes():
    g = tg.Graph()
    aff = g.get_operation("Affine", [64, 30])
    with pytest.raises(
        tg.ShapeError, match=r"Affine \(affine_0\): expected input of shape \(batch, 64\), got \(8, 63\)"
    ):
        aff(tg.Variable(np.ones((8, 63))))


def test_embedding_gathers_rows_and_sends_gradient_only_to_used_rows():
    g = tg.Graph(seed=0)
    emb = g.get_operation("Embedding", [6, 3])
    ids = np.array([[1, 4], [1, 0]])
    out = emb(ids)
    assert np.array_equal(out.value, emb.W.value[ids])
    g.backward(grads={out: np.ones((2, 2, 3))})
    assert np.array_equal(emb.W.grad[:, 0], [1, 2, 0, 0, 1, 0])


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (np.array([0, 6]), tg.OutOfRangeError, "id 6 is out of range"),
        (np.array([-1]), tg.OutOfRangeError, "id -1"),
        (np.array([0.5]), tg.InputTypeError, "integer"),
    ],
)
def test_embedding_rejects_ids_outside_the_vocabulary(ids, error, match):
    g = tg.Graph()
    emb = g.get_operation("Embedding", vocab_size=6, embed_size=2)
    with pytest.raises(error, match=match):
        emb(ids)


def test_dropout_scales_at_train_time_is_identity_in_eval_and_is_seeded():
    x = np.ones((200, 50))
    _, _, a = apply("Dropout", x, graph=tg.Graph(seed=1), p=0.3)
    _, _, b = apply("Dropout", x, graph=tg.Graph(seed=1), p=0.3)
    assert np.array_equal(a.value, b.value)
    kept = a.value != 0
    assert abs(kept.mean() - 0.7) < 0.02 and np.allclose(a.value[kept], 1 / 0.7)
    g = tg.Graph(seed=1).eval()
    _, _, c = apply("Dropout", x, graph=g, p=0.3)
    assert np.array_equal(c.value, x)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_dropout_rejects_p_outside_unit_interval(p):
    with pytest.raises(tg.ArgumentError, match=r"Dropout \(dropout_0\): p must be in \[0, 1\)"):
        tg.Graph().get_operation("Dropout", [p])


def test_layernorm_normalises_the_last_axis(rng):
    x = rng.standard_normal((3, 8)) * 5 + 2
    g, ln, out = apply("LayerNorm", x, size=8)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    assert np.allclose(out.value, ref)
    with pytest.raises(tg.ShapeError, match="LayerNorm.*size 8"):
        ln(tg.Variable(np.ones((2, 7))))


def test_softmax_loss_value_and_gradient(rng):
    z = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    g, op, probs = apply("SoftmaxLoss", z)
    value = op.loss(labels)
    p = softmax(z)
    assert np.allclose(probs.value, p)
    assert value == pytest.approx(-np.log(p[np.arange(5), labels]).mean())
    zv = g.forward_ops[0].inputs[0]
    g.backward()
    onehot = np.eye(4)[labels]
    assert np.allclose(zv.grad, (p - onehot) / 5)


@pytest.mark.parametrize(
    "labels, error, match",
    [
        (np.array([0, 4]), tg.OutOfRangeError, "label 4 is out of range"),
        (np.array([-1, 2]), tg.OutOfRangeError, "label -1 is out of range"),
        (np.array([0, -3], dtype=np.int8), tg.OutOfRangeError, "label -3 is out of range"),
        (np.array([0]), tg.ShapeError, "expected 2 labels"),
        (np.array([0.5, 1.0]), tg.InputTypeError, "integer"),
    ],
)
def test_softmax_loss_rejects_bad_labels(labels, error, match):
    _, op, _ = apply("SoftmaxLoss", np.zeros((2, 4)))
    with pytest.raises(error, match=match):
        op.loss(labels)


@pytest.mark.parametrize("label, match", [(4, "label 4 is out of range"), (-1, "label -1 is out of range")])
def test_softmax_loss_rejects_a_bad_label_at_batch_1(label, match):
    _, op, _ = apply("SoftmaxLoss", np.zeros((1, 4)))
    with pytest.raises(tg.OutOfRangeError, match=match):
        op.loss(np.array([label]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float64])
def test_softmax_loss_takes_labels_of_any_integral_dtype(dtype):
    z = np.array([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    reference = None
    for labels in (np.array([2, 0], dtype=dtype), np.array([2, 0])):
        g, op, _ = apply("SoftmaxLoss", z)
        value = op.loss(labels)
        zv = g.forward_ops[0].inputs[0]
        g.backward()
        if reference is None:
            reference = (value, zv.grad.copy())
        else:
            assert value == pytest.approx(reference[0])
            assert np.allclose(zv.grad, reference[1])


def test_softmax_loss_needs_logits_with_a_class_axis():
    with pytest.raises(
        tg.ShapeError, match=r"SoftmaxLoss \(softmax_loss_0\): expected logits of shape \(\.\.\., classes\)"
    ):
        apply("SoftmaxLoss", np.array(4.0))


def test_square_loss_is_half_squared_error_averaged_over_the_batch(rng):
    y, t = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    _, op, _ = apply("SquareLoss", y)
    assert op.loss(t) == pytest.approx(0.5 * ((y - t) ** 2).sum() / 4)
    with pytest.raises(tg.ShapeError, match="SquareLoss"):
        op.loss(np.zeros((4, 2)))


def test_sigmoid_cross_entropy_matches_the_naive_formula_where_it_is_finite(rng):
    x, t = rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))
    _, op, probs = apply("SigmoidCrossEntropyLoss", x)
    s = 1 / (1 + np.exp(-x))
    assert np.allclose(probs.value, s)
    assert op.loss(t) == pytest.approx(-(t * np.log(s) + (1 - t) * np.log(1 - s)).mean())
    with pytest.raises(tg.OutOfRangeError, match=r"\[0, 1\]"):
        op.loss(t + 1)


# -- SoftmaxLoss on (..., C) logits, with ignore_index -------------------------------------------
def cross_entropy(z, labels, ignore_index=None):
    """Reference: the mean over counted positions of -log softmax(z)[label], and its gradient."""
    p = softmax(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    counted = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    safe = np.where(counted, labels, 0)
    picked = np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    count = counted.sum()
    value = -picked[counted].sum() / count
    grad = (p - np.eye(z.shape[-1])[safe]) * counted[..., None] / count
    return value, grad


@pytest.mark.parametrize(
    "shape, ignore_index",
    [((2, 5, 4), None), ((2, 5, 4), -1), ((3, 2, 2, 4), -100), ((6, 4), 2), ((6, 4), -1), ((4,), None)],
)
def test_softmax_loss_on_positions_matches_cross_entropy_with_classes_last(shape, ignore_index, rng):
    z = rng.standard_normal(shape)
    labels = rng.integers(0, shape[-1], shape[:-1])
    if ignore_index is not None and labels.ndim:
        labels[rng.random(labels.shape) < 0.4] = ignore_index
        labels.flat[0] = 1  # at least one counted position
    g, op, probs = apply("SoftmaxLoss", z, ignore_index=ignore_index)
    value = op.loss(labels)
    expected, grad = cross_entropy(z, labels, ignore_index)
    assert np.allclose(probs.value, softmax(z))
    assert value == pytest.approx(expected, rel=1e-12)
    zv = g.forward_ops[0].inputs[0]
    g.backward()
    assert np.allclose(zv.grad, grad, rtol=1e-12, atol=1e-15)
    gradcheck_op = tg.Graph().get_operation("SoftmaxLoss", ignore_index=ignore_index)
    assert tg.gradcheck(gradcheck_op, [z], target=labels)


def test_ignored_positions_contribute_nothing_whatever_their_logits(rng):
    z = rng.standard_normal((2, 3, 4))
    labels = np.array([[0, -1, 2], [-1, 3, -1]])
    g, op, _ = apply("SoftmaxLoss", z, ignore_index=-1)
    value = op.loss(labels)
    garbage = z.copy()
    garbage[labels == -1] = [np.nan, 1e308, -np.inf, 7.0]
    g2, op2, _ = apply("SoftmaxLoss", garbage, ignore_index=-1)
    assert op2.loss(labels) == value
    zv = g2.forward_ops[0].inputs[0]
    g2.backward()
    assert np.array_equal(zv.grad[labels == -1], np.zeros((3, 4)))
    assert np.isfinite(zv.grad).all()


@pytest.mark.parametrize(
    "labels", [np.full((2, 3), -1), np.full((2, 3), -1.0), np.array([[-1, -1, -1], [-1, -1, -1]], dtype=np.int8)]
)
def test_a_loss_with_every_position_ignored_is_zero_with_zero_gradient(labels, rng):
    """torch gives NaN (0/0); tapegrad refuses a NaN loss, so a batch of padding contributes nothing."""
    g, op, _ = apply("SoftmaxLoss", rng.standard_normal((2, 3, 4)), ignore_index=-1)
    assert op.loss(labels) == 0.0
    zv = g.forward_ops[0].inputs[0]
    g.backward()
    assert zv.grad.shape == (2, 3, 4) and not zv.grad.any()


def test_ignore_index_may_be_a_class_and_float_labels_may_be_ignored(rng):
    z = rng.standard_normal((5, 3))
    _, op, _ = apply("SoftmaxLoss", z, ignore_index=1)
    assert op.loss(np.array([1, 0, 2, 1, 2])) == pytest.approx(
        cross_entropy(z[[1, 2, 4]], np.array([0, 2, 2]))[0], rel=1e-12
    )
    _, op, _ = apply("SoftmaxLoss", z, ignore_index=-1)
    assert op.loss(np.array([-1.0, 0.0, 2.0, -1.0, 2.0])) == pytest.approx(
        cross_entropy(z[[1, 2, 4]], np.array([0, 2, 2]))[0]
    )


def test_the_seed_path_and_the_general_path_agree(rng):
    """(N, C) logits without ignore_index take the lean path; with an ignore_index no label uses,
    the general one: the same numbers."""
    z, labels = rng.standard_normal((7, 5)), rng.integers(0, 5, 7)
    results = []
    for kwargs in ({}, {"ignore_index": -100}):
        g, op, _ = apply("SoftmaxLoss", z, **kwargs)
        value = op.loss(labels)
        zv = g.forward_ops[0].inputs[0]
        g.backward()
        results.append((value, zv.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-14)
    assert np.allclose(results[0][1], results[1][1], rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "z, labels, kwargs, error, match",
    [
        (np.zeros((2, 3, 4)), np.zeros((2, 4), int), {}, tg.ShapeError,
         r"expected labels of shape \(2, 3\) .*got shape \(2, 4\)"),
        (np.zeros((2, 3, 4)), np.array([[0, 4, -1], [0, 0, 0]]), {"ignore_index": -1}, tg.OutOfRangeError,
         r"label 4 is out of range \[0, 4\) \(positions labelled ignore_index=-1 are skipped\)"),
        (np.zeros((2, 3, 4)), np.array([[0, -2, -1], [0, 0, 0]]), {"ignore_index": -1}, tg.OutOfRangeError,
         "label -2 is out of range"),
        (np.zeros((2, 3, 4)), np.array([[0, 1, 2], [0, 5, 0]]), {}, tg.OutOfRangeError,
         r"label 5 is out of range \[0, 4\)$"),
        (np.zeros((2, 0, 4)), np.zeros((2, 0), int), {}, tg.ShapeError,
         r"the batch is empty \(logits shape \(2, 0, 4\)\)"),
        (np.zeros((2, 3, 4)), np.array([[0.5, 1, 2], [0, 0, 0]]), {"ignore_index": -1}, tg.InputTypeError,
         "expected integer labels, got the non-integral value 0.5"),
        (np.zeros((2, 3, 4)), np.array([[np.nan, 1, 2], [0, 0, 0]]), {"ignore_index": -1}, tg.NonFiniteError,
         "the labels hold NaN"),
    ],
)
def test_softmax_loss_on_positions_rejects_bad_labels_naming_the_op(z, labels, kwargs, error, match):
    _, op, _ = apply("SoftmaxLoss", z, **kwargs)
    with pytest.raises(error, match=rf"^SoftmaxLoss \(softmax_loss_0\): {match}"):
        op.loss(labels)


@pytest.mark.parametrize(
    "value, error, match",
    [("a", tg.InputTypeError, "must be a whole number, got str"),
     (1.5, tg.InputTypeError, "must be a whole number, got float"),
     (True, tg.InputTypeError, "must be a whole number, got bool"),
     (float("nan"), tg.InputTypeError, "must be a whole number, got float")],
)
def test_softmax_loss_checks_ignore_index_when_made(value, error, match):
    with pytest.raises(error, match=rf"^SoftmaxLoss \(softmax_loss_0\): ignore_index {match}"):
        tg.Graph().get_operation("SoftmaxLoss", ignore_index=value)


@pytest.mark.parametrize("scale", [1.0, 30.0, 400.0, 1e4])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_softmax_loss_probabilities_and_loss_hold_at_every_logit_scale_and_dtype(scale, dtype, rng):
    """Moderate logits are exponentiated unshifted, larger ones shifted by each row's max: both
    agree with the float64 reference at the dtype's precision."""
    z = rng.standard_normal((6, 50)) * scale
    labels = rng.integers(0, 50, 6)
    g = tg.Graph(dtype=dtype)
    op = g.get_operation("SoftmaxLoss")
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # (exp underflows to 0, rightly)
        probs = op(tg.Variable(z.astype(dtype)))
        value = op.loss(labels)
    expected, _ = cross_entropy(z.astype(dtype).astype(np.float64), labels)
    tolerance = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 2e-2}[dtype]
    assert probs.dtype == dtype and np.allclose(
        probs.value, softmax(z.astype(dtype).astype(np.float64)), atol=tolerance
    )
    assert value == pytest.approx(expected, rel=tolerance, abs=tolerance)
