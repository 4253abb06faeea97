import numpy as np
import pytest

import tapegrad as tg


class SeedMLP:
    """The seed's model style: a class holding a Graph, with forward and loss."""

    def __init__(self, input_size, hidden_size, output_size):
        self.graph = tg.Graph("MLP", seed=0)
        self.affine = self.graph.get_operation("Affine", [input_size, hidden_size])
        self.sigmoid = self.graph.get_operation("Sigmoid")
        self.out = self.graph.get_operation("Affine", [hidden_size, output_size])
        self.softmax_loss = self.graph.get_operation("SoftmaxLoss")

    def forward(self, x):
        return self.softmax_loss.forward(self.out.forward(self.sigmoid.forward(self.affine.forward(x))))

    def loss(self, target):
        return self.softmax_loss.loss(target)


def numpy_mlp_grads(params, x, labels):
    W1, b1, W2, b2 = params
    h = 1 / (1 + np.exp(-(x @ W1 + b1)))
    z = h @ W2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels]).mean()
    d = p.copy()
    d[np.arange(n), labels] -= 1
    d /= n
    dh = d @ W2.T * h * (1 - h)
    return loss, p, [x.T @ dh, dh.sum(0), h.T @ d, d.sum(0)]


def test_seed_mlp_forward_loss_backward_matches_hand_written_numpy(rng):
    model = SeedMLP(64, 30, 10)
    x = rng.random((8, 64))
    labels = rng.integers(0, 10, 8)
    probs = model.forward(tg.Variable(x))
    value = model.loss(tg.Variable(labels))
    assert isinstance(value, float)
    names = ["affine_0.W", "affine_0.b", "affine_1.W", "affine_1.b"]
    assert list(model.graph.parameter.variable_dict) == names
    params = [model.graph.parameter[n].value for n in names]
    ref_loss, ref_p, ref_grads = numpy_mlp_grads(params, x, labels)
    assert np.allclose(probs.value, ref_p)
    assert value == pytest.approx(ref_loss)
    assert len(model.graph.forward_ops) == 4
    model.graph.backward()
    assert model.graph.forward_ops == []
    for name, ref in zip(names, ref_grads):
        assert np.allclose(model.graph.parameter[name].grad, ref), name
    model.graph.parameter.clear_grads()
    assert not model.graph.parameter["affine_0.W"].grad.any()


def test_seed_checker_passes_on_the_seed_model(rng, capsys):
    model = SeedMLP(6, 5, 3)
    report = tg.numerical_gradient_check(model, tg.Variable(rng.random((4, 6))), tg.Variable(np.array([0, 2, 1, 2])))
    assert report
    out = capsys.readouterr().out
    assert "affine_0.W match" in out and "NOT MATCH" not in out
    assert model.graph.forward_ops == []


def test_get_operation_argument_forms_and_default_names():
    g = tg.Graph("g", seed=0)
    a = g.get_operation("Affine", [4, 3])
    b = g.get_operation("Affine", input_size=4, output_size=3)
    c = g.get_operation("Affine", {"input_size": 4, "output_size": 3, "bias": False})
    d = g.get_operation("Affine", (4, 3), name="head")
    assert (a.name, b.name, c.name, d.name) == ("affine_0", "affine_1", "affine_2", "head")
    assert type(a).__name__ == "Affine" and isinstance(a, tg.Operation)
    assert "affine_2.b" not in g.parameter and "head.W" in g.parameter
    assert g.get_operation("SoftmaxLoss").name == "softmax_loss_0"
    assert g.get_operation("Sigmoid").name == "sigmoid_0"
    with pytest.raises(tg.GraphError, match="head"):
        g.get_operation("Affine", [4, 3], name="head")


def test_unknown_keyword_lists_valid_arguments():
    g = tg.Graph()
    with pytest.raises(tg.InputTypeError, match="valid arguments: input_size, output_size, bias"):
        g.get_operation("Affine", input_size=3, output_size=2, biass=True)
    with pytest.raises(TypeError, match="Affine"):
        g.get_operation("Affine", [3])


def test_graph_seed_makes_parameters_reproducible():
    w1 = tg.Graph(seed=3).get_operation("Affine", [5, 4]).W.value
    w2 = tg.Graph(seed=3).get_operation("Affine", [5, 4]).W.value
    w3 = tg.Graph(seed=4).get_operation("Affine", [5, 4]).W.value
    assert np.array_equal(w1, w2) and not np.array_equal(w1, w3)


def test_reuse_of_one_op_in_one_pass_gives_hand_derived_gradients():
    # y = w * (w * x): Scale-like reuse through Multiply with a shared parameter variable
    g = tg.Graph(seed=0)
    mul = g.get_operation("Multiply")
    loss = g.get_operation("SquareLoss")
    w = g.get_variable("w", (3,), init=lambda s, r: np.array([1.0, 2.0, -1.0]))
    x = tg.Variable(np.array([[0.5, -1.0, 2.0]]))
    y = mul(w, mul(w, x))  # same op instance applied twice
    loss.forward(y)
    loss.loss(np.zeros((1, 3)))
    g.backward()
    wv, xv = w.value, x.value[0]
    # L = 0.5 * sum((w^2 x)^2); dL/dw = 2 w^3 x^2 ... = (w^2 x) * 2 w x
    assert np.allclose(w.grad, (wv**2 * xv) * 2 * wv * xv)
    assert np.allclose(x.grad[0], (wv**2 * xv) * wv**2)


def test_fan_out_sums_gradients():
    g = tg.Graph(seed=0)
    add = g.get_operation("Add")
    mul = g.get_operation("Multiply")
    x = tg.Variable(np.array([1.0, 2.0, 3.0]))
    y = add(x, x)  # Add returns one array for both inputs
    z = mul(y, x)  # z = 2x * x
    g.backward(grads={z: np.ones(3)})
    assert np.allclose(x.grad, 4 * x.value)
    assert np.allclose(y.grad, x.value)


def test_add_returning_one_array_for_two_inputs_is_not_corrupted():
    g = tg.Graph()
    add = g.get_operation("Add")
    a, b = tg.Variable(np.zeros(2)), tg.Variable(np.zeros(2))
    out = add(a, b)
    seed = np.array([1.0, 2.0])
    g.backward(grads={out: seed})
    a.grad += 10
    assert np.array_equal(b.grad, [1.0, 2.0])
    assert np.array_equal(seed, [1.0, 2.0])


def test_eval_mode_records_nothing_but_still_computes_loss():
    model = SeedMLP(4, 3, 2)
    model.graph.eval()
    assert model.graph.train_state is False
    x = tg.Variable(np.ones((2, 4)))
    probs = model.forward(x)
    value = model.loss(np.array([0, 1]))
    assert np.isfinite(value) and probs.shape == (2, 2)
    assert model.graph.forward_ops == []
    with pytest.raises(tg.BackwardError, match="needs a loss"):
        model.graph.backward()
    model.graph.train()
    model.forward(x)
    model.loss(np.array([0, 1]))
    model.graph.backward()


def test_backward_without_loss_raises_clear_error():
    g = tg.Graph("empty")
    with pytest.raises(tg.BackwardError, match="empty"):
        g.backward()
    sig = g.get_operation("Sigmoid")
    sig(np.ones(3))
    with pytest.raises(tg.BackwardError, match="loss"):
        g.backward()
    assert len(g.forward_ops) == 1, "nothing is lost: compute the loss, then backward again"


def test_loss_after_backward_refers_to_a_consumed_pass():
    g = tg.Graph()
    loss = g.get_operation("SquareLoss")
    loss.forward(tg.Variable(np.ones((1, 2))))
    loss.loss(np.zeros((1, 2)))
    g.backward()
    with pytest.raises(tg.GraphError, match="consumed"):
        loss.loss(np.zeros((1, 2)))


def test_float32_graph_keeps_float32():
    g = tg.Graph(dtype=np.float32, seed=0)
    aff = g.get_operation("Affine", [3, 2])
    loss = g.get_operation("SoftmaxLoss")
    assert aff.W.dtype == np.float32
    x = tg.Variable(np.ones((4, 3), dtype=np.float32))
    p = loss.forward(g.get_operation("Sigmoid")(aff(x)))
    loss.loss(np.array([0, 1, 1, 0]))
    g.backward()
    assert p.dtype == np.float32
    assert aff.W.grad.dtype == np.float32 and x.grad.dtype == np.float32


def test_plain_arrays_are_constants_and_get_no_gradient():
    g = tg.Graph(seed=0)
    aff = g.get_operation("Affine", [3, 2])
    out = aff(np.ones((1, 3)))
    g.backward(grads={out: np.ones((1, 2))})
    assert np.allclose(aff.W.grad, np.ones((3, 2)))


def test_graph_repr_mentions_mode_and_counts():
    g = tg.Graph("net")
    g.get_operation("Affine", [2, 2])
    assert "net" in repr(g) and "1 ops" in repr(g)


def test_backward_reading_an_attribute_forward_never_set_names_the_op():
    class Forgetful(tg.Operation):
        def forward(self, ctx, x):
            return x * 2.0

        def backward(self, ctx, grad):
            return grad * ctx.factor  # never set in forward

    g = tg.Graph()
    op = g.get_operation(Forgetful)
    y = op(tg.Variable(np.ones(3)))
    with pytest.raises(tg.BackwardError, match=r"Forgetful.*factor.*set it on ctx in forward"):
        g.backward(grads={y: np.ones(3)})
    assert g.forward_ops == []  # the tape is cleared either way


def test_context_saved_is_empty_until_forward_saves_something():
    seen = []

    class Peek(tg.Operation):
        def forward(self, ctx, x):
            seen.append(ctx.saved)
            return x

        def backward(self, ctx, grad):
            return grad

    g = tg.Graph()
    g.get_operation(Peek)(tg.Variable(np.ones(2)))
    assert seen == [()]


# -- bad arguments get errors that say what arrived ----------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dtype": "bogus"}, tg.InputTypeError, r"Graph 'g': dtype must be a numpy float type .*got 'bogus'"),
        ({"dtype": np.int64}, tg.InputTypeError, r"Graph 'g': dtype must be a float type, got int64"),
        ({"seed": -1}, tg.ArgumentError, r"Graph 'g': seed must be at least 0, got -1"),
        ({"seed": 1.5}, tg.InputTypeError, r"Graph 'g': seed must be a whole number, got float 1.5"),
        ({"seed": "0"}, tg.InputTypeError, r"Graph 'g': seed must be a whole number, got str '0'"),
    ],
)
def test_bad_graph_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        tg.Graph("g", **kwargs)


@pytest.mark.parametrize(
    "shape, error, match",
    [
        ((-1,), tg.ShapeError, r"parameter 'w': dimensions cannot be negative, got \(-1,\)"),
        ((2.5,), tg.InputTypeError, r"parameter 'w': every dimension must be a whole number, got 2.5"),
        ((True, 2), tg.InputTypeError, r"every dimension must be a whole number, got True"),
        ("ab", tg.InputTypeError, r"every dimension must be a whole number, got 'a'"),
        (None, tg.InputTypeError, r"a shape is needed to create it"),
        (object(), tg.InputTypeError, r"expected a shape"),
    ],
)
def test_a_parameter_shape_is_whole_numbers_or_a_clear_error(shape, error, match):
    graph = tg.Graph("g")
    with pytest.raises(error, match=match):
        graph.get_variable("w", shape)
    assert "w" not in graph.parameter  # nothing was made


def test_a_parameter_shape_of_numpy_integers_is_accepted():
    graph = tg.Graph("g")
    assert graph.get_variable("w", (np.int64(2), 3)).shape == (2, 3)
    assert graph.get_variable("v", np.int32(4)).shape == (4,)


# -- eval mode leaves the tape alone: a loss pairs with the latest application of its own mode ----------------
def test_a_prediction_during_a_pass_in_flight_changes_nothing_of_that_pass():
    graph = tg.Graph("g", seed=0)
    affine, loss = graph.get_operation("Affine", [3, 2]), graph.get_operation("SoftmaxLoss")
    x, y = np.random.default_rng(0).standard_normal((4, 3)), np.array([0, 1, 1, 0])
    twin = tg.Graph("g", seed=0)
    t_affine, t_loss = twin.get_operation("Affine", [3, 2]), twin.get_operation("SoftmaxLoss")
    loss(affine(x))
    t_loss(t_affine(x))
    graph.eval()
    prediction = loss(affine(np.ones((7, 3))))  # a prediction of another batch, in eval mode
    assert loss.loss(np.zeros(7, dtype=int)) > 0  # a validation loss pairs with that eval application
    graph.train()
    assert prediction.shape == (7, 2) and len(graph.forward_ops) == 2  # the tape holds the pass in flight only
    assert loss.loss(y) == t_loss.loss(y)  # the train-mode loss pairs with the train-mode forward
    graph.backward()
    t_loss.loss(y)
    twin.backward()
    assert np.array_equal(affine.W.grad, t_affine.W.grad)
