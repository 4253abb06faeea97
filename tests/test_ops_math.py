"""Math ops: forward values against numpy, broadcasting gradients, bad inputs, properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tapegrad as tg


def run(name, *inputs, args=None, **kwargs):
    g = tg.Graph(seed=0)
    op = g.get_operation(name, args, **kwargs)
    variables = [tg.Variable(np.asarray(x, dtype=float)) for x in inputs]
    return g, op, variables, op(*variables)


@pytest.mark.parametrize(
    "name, ref",
    [
        ("Add", lambda a, b: a + b),
        ("Subtract", lambda a, b: a - b),
        ("Multiply", lambda a, b: a * b),
        ("Divide", lambda a, b: a / b),
    ],
)
def test_binary_forward_matches_numpy_with_broadcasting(name, ref, rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal(3) + 3.0
    _, _, _, out = run(name, a, b)
    assert np.allclose(out.value, ref(a, b))


def test_binary_gradients_are_summed_over_broadcast_axes(rng):
    g, _, (a, b), out = run("Multiply", rng.standard_normal((2, 1, 3)), rng.standard_normal((4, 1)))
    seed = rng.standard_normal((2, 4, 3))
    g.backward(grads={out: seed})
    assert a.grad.shape == (2, 1, 3) and b.grad.shape == (4, 1)
    assert np.allclose(a.grad, (seed * b.value).sum(axis=1, keepdims=True))
    assert np.allclose(b.grad, (seed * a.value).sum(axis=(0, 2))[:, None])


def test_add_takes_any_number_of_inputs(rng):
    xs = [rng.standard_normal((2, 2)) for _ in range(4)]
    g, _, variables, out = run("Add", *xs)
    assert np.allclose(out.value, sum(xs))
    g.backward(grads={out: np.ones((2, 2))})
    assert all(np.array_equal(v.grad, np.ones((2, 2))) for v in variables)


def test_matmul_reductions_and_shape_ops_match_numpy(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    assert np.allclose(run("Matmul", a, b)[3].value, a @ b)
    x = rng.standard_normal((2, 3, 4))
    assert np.allclose(run("Sum", x, axis=1)[3].value, x.sum(axis=1))
    assert np.allclose(run("Sum", x, axis=(0, 2), keepdims=True)[3].value, x.sum(axis=(0, 2), keepdims=True))
    assert np.allclose(run("Mean", x)[3].value, x.mean())
    assert np.allclose(run("Mean", x, axis=-1, keepdims=True)[3].value, x.mean(axis=-1, keepdims=True))
    assert run("Reshape", x, args=[(4, -1)])[3].shape == (4, 6)
    assert np.array_equal(run("Transpose", x, args=[(2, 0, 1)])[3].value, x.transpose(2, 0, 1))
    assert np.array_equal(run("Transpose", x)[3].value, x.T)
    parts = [rng.standard_normal((2, k)) for k in (1, 3)]
    assert np.array_equal(run("Concat", *parts, axis=1)[3].value, np.hstack(parts))
    assert np.allclose(run("Exp", a)[3].value, np.exp(a))
    assert np.allclose(run("Log", np.abs(a) + 1)[3].value, np.log(np.abs(a) + 1))


def test_concat_splits_the_gradient_back(rng):
    parts = [rng.standard_normal((k, 2)) for k in (1, 2)]
    g, _, (a, b), out = run("Concat", *parts)
    seed = np.arange(6.0).reshape(3, 2)
    g.backward(grads={out: seed})
    assert np.array_equal(a.grad, seed[:1]) and np.array_equal(b.grad, seed[1:])


@pytest.mark.parametrize(
    "name, inputs, kwargs, error, match",
    [
        ("Add", [np.ones((2, 3)), np.ones((4,))], {}, tg.ShapeError, r"Add.*\(2, 3\), \(4,\)"),
        ("Multiply", [np.ones((2, 3)), np.ones((3, 2))], {}, tg.ShapeError, "do not broadcast"),
        ("Matmul", [np.ones((2, 3)), np.ones((2, 3))], {}, tg.ShapeError, r"Matmul.*inner dimensions"),
        ("Matmul", [np.ones(3), np.ones((3, 2))], {}, tg.ShapeError, "at least 2 dimensions"),
        ("Sum", [np.ones((2, 3))], {"axis": 2}, tg.ShapeError, "axis 2 is out of range"),
        ("Mean", [np.ones((2, 3))], {"axis": -3}, tg.ShapeError, "out of range"),
        ("Reshape", [np.ones((2, 3))], {"shape": (4, 2)}, tg.ShapeError, r"cannot reshape.*\(2, 3\)"),
        ("Transpose", [np.ones((2, 3))], {"axes": (0,)}, tg.ShapeError, "not a permutation"),
        ("Transpose", [np.ones((2, 3))], {"axes": (0, 5)}, tg.ShapeError, "out of range"),
        ("Sum", [np.ones((2, 3))], {"axis": (0, -2)}, tg.ShapeError, "names one axis twice"),
        ("Concat", [np.ones((2, 3)), np.ones((3, 2))], {"axis": 0}, tg.ShapeError, "must match"),
        ("Concat", [np.ones((2, 3))], {"axis": 5}, tg.ShapeError, "out of range"),
        ("Log", [np.array([1.0, 0.0])], {}, tg.OperationError, r"Log.*positive"),
        ("Divide", [np.ones(2), np.array([1.0, 0.0])], {}, tg.OperationError, "division by zero"),
        ("Exp", [np.array([800.0])], {}, tg.OperationError, "overflows"),
    ],
)
def test_bad_inputs_raise_framework_errors_naming_the_op(name, inputs, kwargs, error, match):
    g = tg.Graph()
    op = g.get_operation(name, **kwargs)
    with pytest.raises(error, match=match):
        op(*[tg.Variable(x) for x in inputs])


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
finite = st.floats(-10, 10, allow_nan=False, width=64)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), name=st.sampled_from(["Add", "Subtract", "Multiply", "Divide"]))
def test_property_broadcasting_ops_match_numpy_and_gradients_have_input_shapes(data, name):
    shape_a, shape_b = data.draw(hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4)).input_shapes
    a = data.draw(hnp.arrays(np.float64, shape_a, elements=finite))
    b = data.draw(hnp.arrays(np.float64, shape_b, elements=st.floats(0.5, 10, width=64)))
    g = tg.Graph()
    va, vb = tg.Variable(a), tg.Variable(b)
    out = g.get_operation(name)(va, vb)
    ref = {"Add": np.add, "Subtract": np.subtract, "Multiply": np.multiply, "Divide": np.divide}[name](a, b)
    assert np.allclose(out.value, ref)
    g.backward(grads={out: np.ones_like(out.value)})
    assert va.grad.shape == a.shape and vb.grad.shape == b.shape
    if name == "Add":
        assert np.allclose(va.grad, np.broadcast_to(1.0, ref.shape).sum() / a.size)


@settings(max_examples=30, deadline=None)
@given(x=hnp.arrays(np.float64, shapes, elements=finite), name=st.sampled_from(["Exp", "Sigmoid", "Tanh", "Relu", "LeakyRelu"]))
def test_property_elementwise_ops_keep_shape_and_pass_gradcheck(x, name):
    if name in ("Relu", "LeakyRelu"):
        x = np.where(np.abs(x) < 0.05, 0.5, x)  # stay away from the kink
    g = tg.Graph()
    op = g.get_operation(name)
    out = op(tg.Variable(x))
    assert out.shape == x.shape and np.isfinite(out.value).all()
    assert tg.gradcheck(op, [x])
