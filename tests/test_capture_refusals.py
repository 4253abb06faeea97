"""Captured steps: what is refused while recording (issue 19), and what each refusal says.

A step whose own Python reads a tapegrad value, computes with an argument's values, writes tapegrad
state, feeds an op an array made inside the step or creates ops is refused while its first call
records: that call completes eagerly (its effects are those of one eager call, checked against an
eager twin), then raises ``CaptureError`` carrying the eager result (``eager_result``), naming the
file and line of the offending statement, what it did, and the fix. Each case marks its offending
line with a comment ``# refused: <case>``; the tests find that line in this file's text.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.capture import CapturedStep
from tapegrad.errors import CaptureError
from tapegrad.optim import SGD, ExponentialLR
from test_capture import Counted, Net, assert_same_array, assert_same_graphs, data, simple_step, state, train_fn

HERE = Path(__file__)
SOURCE = HERE.read_text().splitlines()


def where(case: str) -> str:
    """``file:line`` of the line marked ``# refused: <case>`` in this file, as a refusal names it."""
    marker = f"# refused: {case}"
    lines = [number for number, text in enumerate(SOURCE, start=1) if text.rstrip().endswith(marker)]
    assert len(lines) == 1, f"marker {marker!r} must be on exactly one line, found {len(lines)}"
    return f"{HERE}:{lines[0]}"


class Model:
    """A Net (with Dropout), an Add op, an optimizer and a scheduler: what a step's Python can touch."""

    def __init__(self) -> None:
        self.net = Net(dropout=0.5, seed=3)
        self.graph = self.net.graph
        self.add = self.graph.get_operation("Add")
        self.opt = SGD(self.graph.parameter, lr=0.2, momentum=0.5)
        self.scheduler = ExponentialLR(self.opt, gamma=0.9)


# Each case is the body of a training step with one offending statement, marked.
def _read_value(m: Model, x: Any, y: Any) -> Any:
    scale = float(m.net.first.W.value.sum())  # refused: read_value
    m.net.forward(x)
    return m.net.loss(y), scale


def _read_grad(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    m.graph.backward()
    big = m.net.first.W.grad.max()  # refused: read_grad
    return loss, big


def _peek_grad(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    m.graph.backward()
    seen = m.net.last.b.peek_grad()  # refused: peek_grad
    return loss, seen


def _asarray_variable(m: Model, x: Any, y: Any) -> Any:
    weights = np.asarray(m.net.last.W)  # refused: asarray_variable
    m.net.forward(x)
    return m.net.loss(y), weights


def _read_output(m: Model, x: Any, y: Any) -> Any:
    probs = m.net.forward(x)
    confident = probs.value.max()  # refused: read_output
    return m.net.loss(y), confident


def _loss_arithmetic(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    doubled = loss * 2  # refused: loss_arithmetic
    return loss, doubled


def _loss_comparison(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    if loss > 100.0:  # refused: loss_comparison
        m.graph.clear()
    return loss


def _loss_truth(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    assert loss  # refused: loss_truth
    return loss


def _argument_divided(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x / 16)  # refused: argument_divided
    return m.net.loss(y)


def _argument_branch(m: Model, x: Any, y: Any) -> Any:
    h = m.net.first.forward(x)
    if x[0, 1] > 0.3:  # refused: argument_branch
        h = m.net.act.forward(h)
    m.net.loss_op.forward(m.net.last.forward(h))
    return m.net.loss(y)


def _argument_mean(m: Model, x: Any, y: Any) -> Any:
    centre = x.mean()  # refused: argument_mean
    m.net.forward(x)
    return m.net.loss(y), centre


def _set_value(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    m.net.first.b.value = np.zeros(5)  # refused: set_value
    return loss


def _set_grad(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    m.graph.backward()
    m.net.first.b.grad = np.ones(5)  # refused: set_grad
    return loss


def _set_op_attribute(m: Model, x: Any, y: Any) -> Any:
    m.net.dropout.p *= 0.5  # refused: set_op_attribute
    m.net.forward(x)
    return m.net.loss(y)


def _set_optimizer_attribute(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    loss = m.net.loss(y)
    m.graph.backward()
    m.opt.step()
    m.opt.lr *= 0.5  # refused: set_optimizer_attribute
    return loss


def _set_scheduler_attribute(m: Model, x: Any, y: Any) -> Any:
    m.scheduler.gamma = 0.5  # refused: set_scheduler_attribute
    m.net.forward(x)
    return m.net.loss(y)


def _set_graph_attribute(m: Model, x: Any, y: Any) -> Any:
    m.graph.rng = np.random.default_rng(7)  # refused: set_graph_attribute
    m.net.forward(x)
    return m.net.loss(y)


def _array_to_an_op(m: Model, x: Any, y: Any) -> Any:
    shifted = m.add.forward(x, np.full(x.shape, 0.5))  # refused: array_to_an_op
    m.net.forward(shifted)
    return m.net.loss(y)


def _array_as_a_target(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(x)
    return m.net.loss_op.loss(np.zeros(x.shape[0], dtype=int))  # refused: array_as_a_target


def _array_as_a_seed(m: Model, x: Any, y: Any) -> Any:
    h = m.net.hidden(x)
    m.graph.backward(grads={h: np.ones(h.shape)})  # refused: array_as_a_seed
    return h


def _variable_around_an_array(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(m.add.forward(x, tg.Variable(np.ones(x.shape))))  # refused: variable_around_an_array
    return m.net.loss(y)


def _variable_around_an_argument_slice(m: Model, x: Any, y: Any) -> Any:
    m.net.forward(tg.Variable(x[:, :6]))  # refused: variable_around_an_argument_slice
    return m.net.loss(y)


def _op_created(m: Model, x: Any, y: Any) -> Any:
    extra = m.graph.get_operation("Tanh")  # refused: op_created
    m.net.loss_op.forward(m.net.last.forward(extra.forward(m.net.hidden(x))))
    return m.net.loss(y)


READ_FIX = "Compute it with ops, do it outside the step, or use a replayable utility"
LOSS_FIX = "Return it and compute outside the step, or compute with ops"
ARGUMENT_FIX = "do it outside the step and pass the result as an argument"
WRITE_FIX = "Change tapegrad state with replayable calls"
MADE_FIX = "Pass it as an argument of the step"
CONSTANT_FIX = "tg.constant(array)"

# case: (the step's body, what the message says was done, the fix it gives)
CASES = {
    "read_value": (_read_value, "the step reads Variable 'affine_0.W''s value", READ_FIX),
    "read_grad": (_read_grad, "the step reads Variable 'affine_0.W''s gradient", READ_FIX),
    "peek_grad": (_peek_grad, "the step reads Variable 'affine_1.b''s gradient", READ_FIX),
    "asarray_variable": (_asarray_variable, "the step reads Variable 'affine_1.W''s value (np.asarray)", READ_FIX),
    "read_output": (_read_output, "the step reads a Variable of shape (5, 3)'s value", READ_FIX),
    "loss_arithmetic": (_loss_arithmetic, "the step computes with a loss value (__mul__)", LOSS_FIX),
    "loss_comparison": (_loss_comparison, "the step computes with a loss value (__gt__)", LOSS_FIX),
    "loss_truth": (_loss_truth, "the step computes with a loss value (__bool__)", LOSS_FIX),
    "argument_divided": (_argument_divided, "the step computes divide on step argument 0's values", ARGUMENT_FIX),
    "argument_branch": (_argument_branch, "the step indexes step argument 0 ([(0, 1)])", "pass the slice itself"),
    "argument_mean": (_argument_mean, "on step argument 0's values", ARGUMENT_FIX),
    "set_value": (_set_value, "the step sets Variable 'affine_0.b''s value", WRITE_FIX),
    "set_grad": (_set_grad, "the step sets Variable 'affine_0.b''s gradient", WRITE_FIX),
    "set_op_attribute": (_set_op_attribute, "the step sets Dropout (dropout_0)'s attribute 'p'", WRITE_FIX),
    "set_optimizer_attribute": (_set_optimizer_attribute, "the step sets SGD's attribute 'lr'", WRITE_FIX),
    "set_scheduler_attribute": (_set_scheduler_attribute, "the step sets ExponentialLR's attribute 'gamma'", WRITE_FIX),
    "set_graph_attribute": (_set_graph_attribute, "the step sets graph 'net''s attribute 'rng'", WRITE_FIX),
    "array_to_an_op": (_array_to_an_op, "Add (add_0) input 1 is an array made by Python inside the step", MADE_FIX),
    "array_as_a_target": (
        _array_as_a_target, "SoftmaxLoss (softmax_loss_0) target is an array made by Python inside the step", MADE_FIX
    ),
    "array_as_a_seed": (
        _array_as_a_seed,
        "a gradient passed to backward(grads=...) is an array made by Python inside the step",
        MADE_FIX,
    ),
    "variable_around_an_array": (
        _variable_around_an_array,
        "Add (add_0) input 1 is a Variable the step made around an array made by Python inside the step",
        CONSTANT_FIX,
    ),
    "variable_around_an_argument_slice": (
        _variable_around_an_argument_slice, "the step indexes step argument 0", "pass the slice itself"
    ),
    "op_created": (
        _op_created, "the step creates an op (Tanh)", "Create the ops once, before the step"
    ),
}


def _step(body: Any, m: Model) -> Any:
    """A training step around ``body``: backward (unless the body ran it), the optimizer, the scheduler."""

    def fn(x: np.ndarray, y: np.ndarray) -> Any:
        result = body(m, x, y)
        if m.graph.tape.entries:
            m.graph.backward()
        m.opt.step()
        m.opt.zero_grad()
        m.scheduler.step()
        return result

    return fn


def _same_results(a: Any, b: Any) -> None:
    if isinstance(b, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for p, q in zip(a, b):
            _same_results(p, q)
    elif isinstance(b, tg.Variable):
        assert_same_array(a.value, b.value)
    elif isinstance(b, np.ndarray):
        assert_same_array(a, b)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refusal_names_the_line_what_was_done_and_the_fix(case):
    body, what, fix = CASES[case]
    m = Model()
    step = m.graph.capture(_step(body, m))
    x, y = data(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CaptureError) as info:
            step(x, y)
    message = str(info.value)
    assert message.startswith("this step cannot be captured: "), message
    assert what in message, message
    assert where(case) in message, message
    assert fix in message, message


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_refused_first_call_completes_eagerly_once_and_carries_its_result(case):
    """Its effects are one eager call's (parameters, gradients, optimizer and generator state, lr), the
    function ran once, and ``eager_result`` is what the eager twin returned; nothing is cached."""
    body, _, _ = CASES[case]
    m, twin = Model(), Model()
    fn = Counted(_step(body, m))
    step = m.graph.capture(fn)
    x, y = data(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CaptureError) as info:
            step(x, y)
        expected = _step(body, twin)(x, y)
    assert fn.calls == 1
    _same_results(info.value.eager_result, expected)
    assert_same_graphs(m.graph, twin.graph)
    assert m.opt.state_dict()["state"] and m.opt.lr == twin.opt.lr
    assert m.graph.rng.bit_generator.state == twin.graph.rng.bit_generator.state
    assert m.net.dropout.p == twin.net.dropout.p
    assert not step.records and step.last_record is None
    assert not m.graph.tape.entries and not m.graph.tape.losses
    for variable in m.graph.parameter:  # the guards are gone: the caller reads freely again
        assert type(variable) is tg.Variable
        variable.value.sum()


def test_a_caller_falling_back_to_eager_does_not_run_the_step_twice():
    x, y = data(20)
    m, twin = Model(), Model()
    fn = Counted(_step(_argument_divided, m))
    step = m.graph.capture(fn)
    eager = _step(_argument_divided, twin)
    losses = []
    for k in range(4):
        rows = slice(5 * k, 5 * k + 5)
        try:
            losses.append(step(x[rows], y[rows]))
        except CaptureError as exc:  # what a caller going on eagerly does
            losses.append(exc.eager_result)
    assert fn.calls == 4  # each call refused, each ran once
    assert losses == [eager(x[5 * k : 5 * k + 5], y[5 * k : 5 * k + 5]) for k in range(4)]
    assert_same_graphs(m.graph, twin.graph)


def test_only_the_first_refusal_is_named_with_a_count_of_the_others():
    m = Model()

    def fn(x: np.ndarray, y: np.ndarray) -> Any:
        m.net.forward(x / 16)  # refused: first_of_three
        loss = m.net.loss(y)
        m.graph.backward()
        m.net.first.b.grad = None
        m.opt.step()
        return loss, loss * 2

    with pytest.raises(CaptureError) as info:
        m.graph.capture(fn)(*data(5))
    message = str(info.value)
    assert where("first_of_three") in message
    assert re.search(r"\(\d+ more refusals after it\)$", message), message


def test_reading_shapes_and_dtypes_is_allowed():
    x, y = data(12)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]

    def make(net: Net, opt: Any) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            assert x.ndim == 2 and x.dtype == np.float64 and len(x) == y.shape[0] and x.size == 24
            out = net.forward(x)
            assert out.shape == (x.shape[0], 3) and out.dtype == np.float64 and np.shape(x) == (4, 6)
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return fn

    fn = Counted(make(nets[0], opts[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1], opts[1])
    for k in range(3):
        assert step(x[4 * k : 4 * k + 4], y[4 * k : 4 * k + 4]) == eager(x[4 * k : 4 * k + 4], y[4 * k : 4 * k + 4])
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_an_op_outputs_value_passed_on_is_refused():
    """``op(h.value)`` stopped gradients under the old rules (the array was frozen as a constant); now the
    read is refused, naming the line."""
    x, y = data(10)
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.3)

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        h = net.act.forward(net.first.forward(x))
        net.loss_op.forward(net.last.forward(h.value))  # refused: detached
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    with pytest.raises(CaptureError, match="reads a Variable of shape") as info:
        net.graph.capture(fn)(x, y)
    assert where("detached") in str(info.value)


@pytest.mark.parametrize(
    ("view", "shape", "words"),
    [
        (lambda x: x[:, :6], (4, 9), "the step indexes step argument 0"),
        (lambda x: x[0:4], (8, 6), "the step indexes step argument 0"),
        (lambda x: x.reshape(4, 6), (24,), "is a view or copy of step argument 0"),
        (lambda x: x[..., :], (4, 6), "the step indexes step argument 0"),
        (lambda x: x.T, (6, 4), "is a view or copy of step argument 0"),
        (lambda x: x * 2, (4, 6), "the step computes multiply on step argument 0's values"),
        (lambda x: x[[0, 1, 2, 3]], (4, 6), "the step indexes step argument 0"),
        (lambda x: np.tanh(x), (4, 6), "the step computes tanh on step argument 0's values"),
        (lambda x: x.astype(np.float32), (4, 6), "is a view or copy of step argument"),
    ],
    ids=["columns", "rows", "reshape", "ellipsis", "transpose", "times-2", "fancy-index", "np.tanh", "astype"],
)
def test_python_work_on_an_input_is_refused_at_the_first_call(view, shape, words):
    """Under the old rules these were frozen (a slice) or caught only on the first call with other data
    (``x * 2``); now each is refused while recording, whatever data comes."""
    x, y = np.random.default_rng(0).standard_normal(shape), np.array([0, 1, 2, 0])
    nets = [Net(), Net()]
    fns = [train_fn(n, SGD(n.graph.parameter, lr=0.3), prepare=view) for n in nets]
    step = nets[0].graph.capture(fns[0])
    with pytest.raises(CaptureError) as info:
        step(x, y)
    assert words in str(info.value)
    assert "argument" in str(info.value) and "with ops" in str(info.value)  # the fix
    assert info.value.eager_result == fns[1](x, y)
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert not step.records


def test_a_slice_of_a_target_is_refused_while_recording():
    x, y = data(8)
    net = Net()
    step = net.graph.capture(lambda x, y: (net.forward(x), net.loss(y[:4]), net.graph.backward())[1])
    with pytest.raises(CaptureError, match=r"the step indexes step argument 1 \(\[slice\(None, 4, None\)\]\)"):
        step(x[:4].copy(), y)


def test_a_value_computed_from_an_argument_is_refused_even_when_the_calls_repeat_their_data():
    """The old rules pinned a record to the data ``x / 16`` was first computed from; now the first call
    is refused, and so is every later one, with the same data or other data."""
    x, _ = data(10)
    net, twin = Net(), Net()
    for n in (net, twin):
        n.graph.eval()
    fn = Counted(lambda x: net.forward(tg.Variable(x / 16)))
    step = net.graph.capture(fn)
    for rows in (slice(0, 5), slice(0, 5), slice(5, 10)):
        with pytest.raises(CaptureError, match="computes divide on step argument 0") as info:
            step(x[rows])
        assert_same_array(info.value.eager_result.value, twin.forward(x[rows] / 16).value)
    assert fn.calls == 3 and not step.records


def test_an_argument_modified_in_place_by_the_step_is_refused():
    x, _ = data(5)
    net = Net()
    net.graph.eval()

    def fn(x: np.ndarray) -> Any:
        x[...] = 0.0  # refused: write_argument
        return net.forward(x)

    with pytest.raises(CaptureError, match="the step writes into step argument 0") as info:
        net.graph.capture(fn)(x.copy())
    assert where("write_argument") in str(info.value)


def test_a_hand_written_update_is_refused_and_its_state_is_one_eager_calls():
    """The README's row ``v.value -= 0.1 * v.grad``: refused at the first call (the old rules caught it at the
    second), the update applied once, as eagerly."""
    x, y = data(10)
    nets = [Net(), Net()]

    def make(net: Net) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(x)
            loss = net.loss(y)
            net.graph.backward()
            for v in net.graph.parameter:
                v.value -= 0.1 * v.grad  # refused: hand_update
            net.graph.parameter.clear_grads()
            return loss

        return fn

    step, eager = nets[0].graph.capture(make(nets[0])), make(nets[1])
    with pytest.raises(CaptureError) as info:
        step(x[:5], y[:5])
    assert info.value.eager_result == eager(x[:5], y[:5])
    message = str(info.value)
    assert where("hand_update") in message and "Variable 'affine_0.W'" in message
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert not np.array_equal(nets[0].first.W.value, Net().first.W.value)  # it was applied, once


# -- tg.constant -----------------------------------------------------------------------------------


def test_a_constant_receives_no_gradient_is_kept_by_the_record_and_read_live():
    """``tg.constant`` made outside the step: no gradient reaches it, the record reads it (not a copy of
    it) on every replay, so changing it outside the step (in place, or a new value) is seen, as eagerly."""
    x, y = data(30)
    nets = [Net(), Net()]
    adds = [n.graph.get_operation("Add") for n in nets]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    offsets = [tg.constant(np.zeros((5, 6)), name="offset") for _ in nets]

    def make(net: Net, add: Any, opt: Any, offset: tg.Variable) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            net.forward(add.forward(x, offset))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return fn

    fn = Counted(make(nets[0], adds[0], opts[0], offsets[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1], adds[1], opts[1], offsets[1])
    for k in range(6):
        rows = slice(5 * k, 5 * k + 5)
        if k == 3:
            for offset in offsets:
                offset.value[...] = 0.5  # changed in place, outside the step
        if k == 5:
            for offset in offsets:
                offset.value = np.full((5, 6), -2.0)  # a new value, outside the step
        assert step(x[rows], y[rows]) == eager(x[rows], y[rows])
        assert offsets[0].grad is None and offsets[0].peek_grad() is None
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert "offset" in step.last_record.source  # the record reads the constant itself


def test_a_constant_made_inside_the_step_is_refused_until_made_outside():
    x, _ = data(5)
    net = Net()
    net.graph.eval()
    add = net.graph.get_operation("Add")
    step = net.graph.capture(lambda x: net.forward(add(x, tg.Variable(np.zeros((5, 6))))))
    with pytest.raises(CaptureError, match=r"make it once with tg.constant\(array\)"):
        step(x)
    zeros = tg.constant(np.zeros((5, 6)))
    fn = Counted(lambda x: net.forward(add(x, zeros)))
    step = net.graph.capture(fn)
    for _ in range(4):
        assert_same_array(step(x).value, net.forward(x).value)
    assert fn.calls == 2


# -- what the step returns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ret", "words"),
    [
        (lambda loss, out, x: loss * 2, ["computes with a loss value (__mul__)"]),
        (lambda loss, out, x: np.float64(loss), ["returned a float64", "return the loss itself"]),
        (lambda loss, out, x: out.value, ["reads a Variable of shape (10, 3)'s value"]),
        (lambda loss, out, x: tg.Variable(x), ["not an output of an op", "return op outputs"]),
        (lambda loss, out, x: (loss, "done"), ["returned a str", "a captured step returns those"]),
        (lambda loss, out, x: {"loss": loss, "n": 3}, ["returned a int", "return the loss itself"]),
        (lambda loss, out, x: [loss, x], ["returned a TracedArray", "a captured step returns those"]),
    ],
    ids=["loss*2", "np.float64", "array", "variable", "tuple-with-str", "dict-with-int", "argument"],
)
def test_a_return_value_that_is_not_a_loss_or_output_is_refused_while_recording(ret, words):
    x, y = data(10)
    net, twin = Net(), Net()
    opt, opt_twin = SGD(net.graph.parameter, lr=0.3), SGD(twin.graph.parameter, lr=0.3)
    fn = Counted(simple_step(net, opt, ret))
    step = net.graph.capture(fn)
    with pytest.raises(CaptureError) as info:
        step(x, y)
    for word in words:
        assert word in str(info.value)
    assert len(step.records) == 0 and step.last_record is None
    simple_step(twin, opt_twin, ret)(x, y)
    assert_same_graphs(net.graph, twin.graph)  # the eager run happened, once
    with pytest.raises(CaptureError):
        step(x, y)  # refused again: nothing was cached
    assert fn.calls == 2


def test_a_parameter_variable_returned_is_refused():
    x, _ = data(5)
    net = Net()
    net.graph.eval()
    step = net.graph.capture(lambda x: (net.forward(x), net.first.W))
    with pytest.raises(CaptureError, match="not an output of an op.*read other Variables outside the step"):
        step(x)


# -- what no guard sees: caught by the first replay's check ---------------------------------------------


def _flagged(net: Net, opt: Any, flag: list[bool]) -> Any:
    def fn(x: np.ndarray, y: np.ndarray) -> float:
        h = net.first.forward(x)
        h = net.act.forward(h) if flag[0] else net.extra.forward(h)  # a branch on the caller's own state
        if net.dropout is not None:
            h = net.dropout.forward(h)
        net.loss_op.forward(net.last.forward(h))
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return fn


def test_a_python_branch_that_changed_by_the_second_call_is_caught_and_state_is_eager():
    """Dropout and Adam: after the failure, parameters, Adam's state and the generator are what
    the eager run made them."""
    from tapegrad.optim import Adam

    x, y = data(10)
    nets, flags = [Net(dropout=0.2), Net(dropout=0.2)], [[True], [True]]
    for net in nets:
        net.extra = net.graph.get_operation("Sigmoid")
    opts = [Adam(n.graph.parameter, lr=0.01) for n in nets]
    step, eager = nets[0].graph.capture(_flagged(nets[0], opts[0], flags[0])), _flagged(nets[1], opts[1], flags[1])
    assert step(x[:5], y[:5]) == eager(x[:5], y[:5])
    flags[0][0] = flags[1][0] = False
    with pytest.raises(CaptureError) as info:
        step(x[5:], y[5:])
    assert info.value.eager_result == eager(x[5:], y[5:])
    message = str(info.value)
    assert "Tanh" in message and "Sigmoid" in message
    assert "branch" in message and "argument" in message
    assert_same_graphs(nets[0].graph, nets[1].graph)
    states = [o.state_dict()["state"] for o in opts]
    assert [e["step"] for e in states[0]] == [e["step"] for e in states[1]] == [2] * len(opts[0].variables)
    for a, b in zip(*states):
        for key in ("exp_avg", "exp_avg_sq"):
            assert_same_array(a[key], b[key])
    assert nets[0].graph.rng.bit_generator.state == nets[1].graph.rng.bit_generator.state
    assert not nets[0].graph.forward_ops
    assert step.last_record is None and not step.records  # the record is dropped: the next call records anew


def test_a_python_loop_whose_count_changed_by_the_second_call_is_caught():
    x, y = data(10)
    net = Net(n_in=5, hidden=5)
    opt = SGD(net.graph.parameter, lr=0.1)
    count = [1]

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        h = x
        for _ in range(count[0]):
            h = net.act.forward(net.first.forward(h))
        net.loss_op.forward(net.last.forward(h))
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = net.graph.capture(fn)
    step(x[:5, :5], y[:5])
    count[0] = 2
    with pytest.raises(CaptureError, match=r"Python loop or branch changed|a Python branch took another way"):
        step(x[5:, :5], y[5:])


def test_math_on_a_loss_value_that_changes_by_the_second_call_is_caught():
    """``math.log(loss)`` reads the float where no guard sees it; used as a number fed to an op, the
    recorded number differs from the second call's: the check says so."""
    x, y = data(10)
    net = Net()
    mul = net.graph.get_operation("Multiply")
    opt = SGD(net.graph.parameter, lr=0.3)

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        net.forward(x)
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        net.graph.eval()
        scaled = mul.forward(net.hidden(x), math.log(loss))
        net.graph.train()
        return loss, scaled

    step = net.graph.capture(fn)
    step(x[:5], y[:5])
    with pytest.raises(CaptureError, match="differs from an eager run"):
        step(x[5:], y[5:])


def test_check_false_skips_the_check_but_not_the_guards():
    x, y = data(20)
    nets, flags = [Net(), Net()], [[True], [True]]
    for net in nets:
        net.extra = net.graph.get_operation("Sigmoid")
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    fn = Counted(_flagged(nets[0], opts[0], flags[0]))
    step, eager = nets[0].graph.capture(fn, check=False), _flagged(nets[1], opts[1], flags[1])
    for k in range(4):
        assert step(x[5 * k : 5 * k + 5], y[5 * k : 5 * k + 5]) == eager(x[5 * k : 5 * k + 5], y[5 * k : 5 * k + 5])
    assert fn.calls == 1 and step.last_record.verified
    assert_same_graphs(nets[0].graph, nets[1].graph)
    refused = nets[0].graph.capture(train_fn(nets[0], opts[0], prepare=lambda x: x / 16), check=False)
    with pytest.raises(CaptureError, match="computes divide on step argument 0"):
        refused(x[:5], y[:5])


# -- refused before anything runs, and the cache's arguments ----------------------------------------------


def test_a_forward_pass_in_flight_is_refused_before_anything_runs():
    x, y = data(5)
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.3)
    fn = Counted(simple_step(net, opt, lambda loss, out, x: loss))
    step = net.graph.capture(fn)
    net.forward(x)
    before = state(net.graph)
    in_flight = r"forward pass in flight \(4 applications.*graph.backward\(\) or graph.clear\(\)"
    with pytest.raises(CaptureError, match=in_flight):
        step(x, y)
    assert fn.calls == 0 and not step.records
    net.loss(y)
    with pytest.raises(CaptureError, match="in flight"):
        step(x, y)  # a loss queued too
    for name, (value, _) in state(net.graph).items():
        assert_same_array(value, before[name][0])
    net.graph.clear()
    step(x, y)
    assert fn.calls == 1


def test_a_step_leaving_applications_on_the_tape_is_refused():
    x, y = data(5)
    net = Net()
    step = net.graph.capture(lambda x, y: (net.forward(x), net.loss(y))[1])
    with pytest.raises(CaptureError) as info:
        step(x, y)
    message = str(info.value)
    assert "left 4 applications on the tape" in message
    assert "graph.backward()" in message and "graph.eval()" in message
    assert not step.records and len(net.graph.forward_ops) == 4  # as the eager call left them


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [(({1, 2},), {}), (([np.zeros(2), {"a": [1, {3}]}],), {}), ((), {"options": {1}}), ((bytearray(b"x"),), {})],
    ids=["set", "nested-set", "keyword-set", "bytearray"],
)
def test_an_unhashable_argument_is_refused(args, kwargs):
    net = Net()
    net.graph.eval()
    fn = Counted(lambda *a, **k: net.forward(np.ones((2, 6))))
    step = net.graph.capture(fn)
    with pytest.raises(CaptureError, match="neither an array, a Variable nor hashable"):
        step(*args, **kwargs)
    assert fn.calls == 0


def test_an_unhashable_argument_message_names_it_and_says_what_to_do():
    net = Net()
    net.graph.eval()
    step = net.graph.capture(lambda x, options: net.forward(x))
    with pytest.raises(CaptureError) as info:
        step(np.ones((2, 6)), options={"drop": {1, 2}})
    message = str(info.value)
    assert "options" in message  # which argument
    assert "tuple" in message or "frozenset" in message  # what to pass instead


def test_graph_capture_arguments_are_checked():
    graph = tg.Graph()
    with pytest.raises(CaptureError, match="needs a function, got int"):
        graph.capture(3)
    for bad in (0, -1, True, 2.5, None):
        with pytest.raises(CaptureError, match="max_records must be a whole number"):
            graph.capture(lambda: None, max_records=bad)
    step = graph.capture(check=False, max_records=3)(lambda x: None)
    assert isinstance(step, CapturedStep) and step.check is False and step.max_records == 3


def test_hand_written_clipping_is_refused_with_clip_grad_norm_as_the_fix():
    """Issue 19 item 4: the natural hand-written clipping ran twice in 30 calls under the old rules."""
    x, y = data(10)
    net, twin = Net(), Net()
    opts = [SGD(n.graph.parameter, lr=0.5) for n in (net, twin)]

    def make(n: Net, opt: Any) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> float:
            n.forward(x)
            loss = n.loss(y)
            n.graph.backward()
            norm = math.sqrt(sum(float((v.grad * v.grad).sum()) for v in n.graph.parameter))  # refused: clipping
            if norm > 0.1:
                for v in n.graph.parameter:
                    v.grad *= 0.1 / norm
            opt.step()
            opt.zero_grad()
            return loss

        return fn

    step = net.graph.capture(make(net, opts[0]))
    with pytest.raises(CaptureError) as info:
        step(x, y)
    message = str(info.value)
    assert where("clipping") in message and "reads Variable 'affine_0.W''s gradient" in message
    assert "tapegrad.optim.clip_grad_norm" in message
    assert info.value.eager_result == make(twin, opts[1])(x, y)
    assert_same_graphs(net.graph, twin.graph)  # (the fix, clip_grad_norm, is tested in test_capture_guarantees.py)
