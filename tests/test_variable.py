import numpy as np
import pytest

import tapegrad as tg


def test_list_becomes_float64_and_grad_reads_zeros():
    v = tg.Variable([[1, 2], [3, 4]], name="x")
    assert v.dtype == np.float64
    assert v.shape == (2, 2)
    assert np.array_equal(v.grad, np.zeros((2, 2)))
    assert v.name == "x" and v.trainable


def test_integer_arrays_stay_integer_and_have_no_grad():
    v = tg.Variable(np.array([1, 2, 3]))
    assert v.dtype.kind == "i"
    assert v.grad is None
    with pytest.raises(tg.InputTypeError, match="integer"):
        v.grad = np.ones(3)


def test_non_numeric_value_is_rejected_with_a_clear_error():
    with pytest.raises(tg.InputTypeError, match="numeric"):
        tg.Variable(np.array(["a", "b"]))
    with pytest.raises(TypeError):
        tg.Variable({"a": 1})


def test_grad_setter_copies_and_checks_shape():
    v = tg.Variable(np.zeros(3))
    mine = np.ones(3)
    v.grad = mine
    v.grad += 1.0
    assert np.array_equal(mine, np.ones(3)), "setting .grad must not alias the caller's array"
    assert np.array_equal(v.grad, np.full(3, 2.0))
    with pytest.raises(tg.ShapeError):
        v.grad = np.ones(4)


def test_add_grad_never_writes_into_the_array_it_was_given():
    v = tg.Variable(np.zeros(3))
    g = np.ones(3)
    v.add_grad(g)
    v.add_grad(g)
    v.add_grad(g)
    assert np.array_equal(g, np.ones(3))
    assert np.array_equal(v.grad, np.full(3, 3.0))


def test_reading_a_shared_grad_gives_a_private_copy():
    v = tg.Variable(np.zeros(2))
    shared = np.ones(2)
    v.add_grad(shared)
    v.grad *= 5
    assert np.array_equal(shared, np.ones(2))


def test_clear_grad_and_repr():
    v = tg.Variable(np.ones((2, 3)), name="w", trainable=False)
    v.grad += 3
    v.clear_grad()
    assert not v.grad.any()
    assert "w" in repr(v) and "(2, 3)" in repr(v) and "trainable=False" in repr(v)


def test_setting_grad_never_aliases_what_was_set():
    import copy

    other = tg.Variable(np.ones(2))
    v = tg.Variable(np.zeros(2))
    v.grad = other  # a Variable converts to its value: the gradient must be a copy of it
    v.grad += 1
    v.add_grad(np.ones(2))
    assert np.array_equal(other.value, np.ones(2))

    class Buffer(np.ndarray):
        pass

    buffer = np.ones(3).view(Buffer)
    w = tg.Variable(np.ones(3))
    w.grad = buffer
    w.add_grad(np.ones(3))
    assert np.array_equal(np.asarray(buffer), np.ones(3))

    original = tg.Variable(np.zeros(2))
    original.grad = np.ones(2)
    twin = copy.copy(original)
    twin.grad += 10
    twin.add_grad(np.ones(2))
    assert np.array_equal(original.grad, np.ones(2)) and np.array_equal(twin.grad, np.full(2, 12.0))
    original.add_grad(np.ones(2))
    assert np.array_equal(twin.grad, np.full(2, 12.0))


def test_asking_numpy_for_a_copy_of_a_variable_gives_one():
    v = tg.Variable(np.zeros(2))
    array = np.array(v, copy=True)
    array[0] = 5
    assert v.value[0] == 0
