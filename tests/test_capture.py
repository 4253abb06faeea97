"""Captured steps (``graph.capture``, ``tapegrad.capture``): replays equal to eager, bit for bit.

Every parity test runs a captured model and an eager twin built from the same seed through the
same calls, and asserts bit-for-bit equality: arrays with ``np.array_equal`` and equal dtypes,
losses with ``==``. Each parity test also counts the calls of the step function, so that it fails
if nothing was ever replayed (a first call records, the second one verifies, later ones replay).
This file also holds the cache, nesting, copies and pickles, errors inside a replay, and the
Trainer and estimators; the other files ``test_capture_*.py`` hold the refusals and their messages
(``_refusals``), never silently wrong on many calls (``_guarantees``) and what a hostile probe found
(``_probes``).
They import their helpers from this module.
"""

from __future__ import annotations

import copy
import functools
import pickle
import re
import warnings
from collections import namedtuple
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.capture import CapturedStep
from tapegrad.datasets import load_digits
from tapegrad.errors import BackwardError, CaptureError, NonFiniteError, OperationError, TrainingError
from tapegrad.optim import SGD, Adam

# -- helpers ----------------------------------------------------------------------------------------


class Net:
    """Affine -> Tanh [-> Dropout] -> Affine -> SoftmaxLoss on a graph of its own."""

    def __init__(self, n_in: int = 6, hidden: int = 5, n_out: int = 3, *, dropout: float = 0.0, seed: int = 0,
                 dtype: Any = np.float64) -> None:
        self.graph = tg.Graph("net", seed=seed, dtype=dtype)
        g = self.graph
        self.first = g.get_operation("Affine", [n_in, hidden])
        self.act = g.get_operation("Tanh")
        self.dropout = g.get_operation("Dropout", [dropout]) if dropout else None
        self.last = g.get_operation("Affine", [hidden, n_out])
        self.loss_op = g.get_operation("SoftmaxLoss")

    def hidden(self, x: Any) -> tg.Variable:
        h = self.act.forward(self.first.forward(x))
        return self.dropout.forward(h) if self.dropout is not None else h

    def forward(self, x: Any) -> tg.Variable:
        return self.loss_op.forward(self.last.forward(self.hidden(x)))

    def loss(self, y: Any) -> float:
        return self.loss_op.loss(y)


class Counted:
    """A step function that counts its (eager) calls. (No attribute may be called ``fn``: see
    test_capturing_a_callable_object_or_a_captured_step_keeps_the_options.)"""

    def __init__(self, target: Any) -> None:
        self.target, self.calls = target, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.target(*args, **kwargs)


def train_fn(net: Any, opt: Any, prepare: Any = tg.Variable) -> Any:
    """The usual step: forward of ``prepare(x)``, loss, backward, the optimizer's step and zero_grad."""

    def step(x: np.ndarray, y: np.ndarray) -> Any:
        net.forward(prepare(x))
        loss = net.loss(tg.Variable(y))
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return step


def simple_step(net: Net, opt: Any, ret: Any) -> Any:
    """The usual step on ``tg.Variable(x)`` returning ``ret(loss, output, x)``."""

    def fn(x: np.ndarray, y: np.ndarray) -> Any:
        out = net.forward(tg.Variable(x))
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return ret(loss, out, x)

    return fn


def state(graph: tg.Graph) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    return {
        name: (v.value.copy(), None if v.peek_grad() is None else np.array(v.peek_grad()))
        for name, v in graph.parameter.variable_dict.items()
    }


def assert_same_array(a: Any, b: Any) -> None:
    """Equal dtype, shape and values, bit for bit (signed zeros too)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert np.array_equal(a, b), "arrays differ"
    assert a.tobytes() == b.tobytes(), "arrays differ in their bits"


def assert_same_graphs(a: tg.Graph, b: tg.Graph) -> None:
    """Every parameter's value and gradient equal, bit for bit."""
    sa, sb = state(a), state(b)
    assert list(sa) == list(sb)
    for name in sa:
        assert_same_array(sa[name][0], sb[name][0])
        ga, gb = sa[name][1], sb[name][1]
        zeros = np.zeros_like(sa[name][0])
        assert_same_array(zeros if ga is None else ga, zeros if gb is None else gb)


def assert_same_losses(a: list[float], b: list[float]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert type(x) is type(y) is float
        assert x == y, f"loss {i}: {x!r} captured, {y!r} eager"


def batches(n: int, batch: int, epochs: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(epochs):
        order = rng.permutation(n)
        out.extend(order[b : b + batch] for b in range(0, n, batch))
    return out


def data(n: int = 100, n_in: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)), rng.integers(0, classes, n)


OPTIMIZERS = {
    "sgd": lambda p: SGD(p, lr=0.3),
    "sgd-momentum-decay": lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    "adam": lambda p: Adam(p, lr=0.01, weight_decay=0.001),
}


# -- bit-identical to eager ---------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize(("batch", "records"), [(1, 1), (32, 2), (100, 1)])
def test_captured_training_equals_eager(optimizer, batch, records):
    """Several epochs of 100 samples: batch 1, batch 32 (its last batch of 4 gets its own record)
    and one full batch; SGD (plain, with momentum and weight decay) and Adam."""
    x, y = data()
    nets = [Net(), Net()]
    opts = [OPTIMIZERS[optimizer](n.graph.parameter) for n in nets]
    fn = Counted(train_fn(nets[0], opts[0]))
    step = nets[0].graph.capture(fn)
    eager = train_fn(nets[1], opts[1])
    order = batches(len(x), batch, epochs=3)
    captured = [step(x[i], y[i]) for i in order]
    expected = [eager(x[i], y[i]) for i in order]
    assert_same_losses(captured, expected)
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert opts[0].state_dict().keys() == opts[1].state_dict().keys()
    if optimizer == "adam":
        assert [e["step"] for e in opts[0].state_dict()["state"]] == [len(order)] * len(opts[0].variables)
    assert len(step.records) == records
    assert all(r.verified for r in step.records.values())
    assert fn.calls == 2 * records  # one recording and one verification per record; the rest replayed


def test_float32_graph_equals_eager():
    x, y = data(40)
    x = x.astype(np.float32)
    nets = [Net(dtype=np.float32), Net(dtype=np.float32)]
    opts = [Adam(n.graph.parameter, lr=0.01) for n in nets]
    step = nets[0].graph.capture(train_fn(nets[0], opts[0]))
    eager = train_fn(nets[1], opts[1])
    order = batches(len(x), 8, epochs=2)
    assert_same_losses([step(x[i], y[i]) for i in order], [eager(x[i], y[i]) for i in order])
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert nets[0].first.W.value.dtype == np.float32


def test_integer_inputs_are_converted_as_eager():
    """Integer features reach Affine converted to the graph's dtype, in replay as eagerly."""
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, (30, 6)), rng.integers(0, 3, 30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.1) for n in nets]
    step = nets[0].graph.capture(train_fn(nets[0], opts[0]))
    eager = train_fn(nets[1], opts[1])
    order = batches(len(x), 10, epochs=2)
    assert_same_losses([step(x[i], y[i]) for i in order], [eager(x[i], y[i]) for i in order])
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_dropout_draws_a_fresh_mask_every_step_as_eager():
    x, y = data(24)
    nets = [Net(dropout=0.5, seed=4), Net(dropout=0.5, seed=4)]
    opts = [SGD(n.graph.parameter, lr=0.2, momentum=0.5) for n in nets]

    def make(net: Net, opt: Any) -> Any:
        def step(x: np.ndarray, y: np.ndarray) -> Any:
            dropped = net.hidden(x)
            net.loss_op.forward(net.last.forward(dropped))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return loss, dropped

        return step

    fn = Counted(make(nets[0], opts[0]))
    step = nets[0].graph.capture(fn)
    eager = make(nets[1], opts[1])
    masks = []
    for i in batches(len(x), 8, epochs=3):
        (loss, dropped), (loss_e, dropped_e) = step(x[i], y[i]), eager(x[i], y[i])
        assert loss == loss_e
        assert_same_array(dropped.value, dropped_e.value)
        masks.append(dropped.value == 0)
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert nets[0].graph.rng.bit_generator.state == nets[1].graph.rng.bit_generator.state
    # the same batch twice in a row: two replays, two different masks
    a, b = step(x[:8], y[:8])[1], step(x[:8], y[:8])[1]
    assert not np.array_equal(a.value == 0, b.value == 0)
    eager(x[:8], y[:8]), eager(x[:8], y[:8])
    assert any(not np.array_equal(m, masks[0]) for m in masks[1:])
    # the rate and the generator are read live: a new p, a new generator object
    for net in nets:
        net.dropout.p = 0.25
        net.graph.rng = np.random.default_rng(11)
    for i in batches(len(x), 8, epochs=1, seed=2):
        (loss, dropped), (loss_e, dropped_e) = step(x[i], y[i]), eager(x[i], y[i])
        assert loss == loss_e
        assert_same_array(dropped.value, dropped_e.value)
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_eval_mode_prediction_capture_equals_eager():
    """A prediction step captured in eval mode (Dropout is the identity there), interleaved
    with captured training in train mode: each mode has its own record."""
    x, y = data(40)
    x_test = np.random.default_rng(9).standard_normal((7, 6))
    nets = [Net(dropout=0.3), Net(dropout=0.3)]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    step = nets[0].graph.capture(train_fn(nets[0], opts[0]))
    eager = train_fn(nets[1], opts[1])
    predict_fn = Counted(nets[0].forward)
    predict = nets[0].graph.capture(predict_fn)
    for epoch in range(4):
        for i in batches(len(x), 10, epochs=1, seed=epoch):
            assert step(x[i], y[i]) == eager(x[i], y[i])
        for net in nets:
            net.graph.eval()
        out, out_e = predict(x_test), nets[1].forward(x_test)
        assert isinstance(out, tg.Variable)
        assert_same_array(out.value, out_e.value)
        for net in nets:
            net.graph.train()
    assert predict_fn.calls == 2
    assert [key[0] for key in predict.records] == [False]  # the record's key holds the mode
    assert len(nets[0].graph.forward_ops) == 0


class _Replaced:
    """Ways of changing parameters between steps, applied to both twins."""

    @staticmethod
    def load(graph: tg.Graph, source: tg.Graph, tmp_path: Any) -> None:
        path = tmp_path / "weights.npz"
        if not path.exists():
            source.parameter.save(path)
        graph.parameter.load(path)

    @staticmethod
    def load_state_dict(graph: tg.Graph, source: tg.Graph, tmp_path: Any) -> None:
        graph.parameter.load_state_dict(source.parameter.state_dict())

    @staticmethod
    def assign_in_place(graph: tg.Graph, source: tg.Graph, tmp_path: Any) -> None:
        for name, v in graph.parameter.variable_dict.items():
            v.value[...] = source.parameter[name].value

    @staticmethod
    def rebind(graph: tg.Graph, source: tg.Graph, tmp_path: Any) -> None:
        for name, v in graph.parameter.variable_dict.items():
            v.value = source.parameter[name].value.copy()


@pytest.mark.parametrize("how", ["load", "load_state_dict", "assign_in_place", "rebind"])
def test_parameters_changed_after_capture_are_used_by_the_replay(how, tmp_path):
    x, y = data(30)
    source = Net(seed=7).graph
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3, momentum=0.9) for n in nets]
    fn = Counted(train_fn(nets[0], opts[0]))
    step = nets[0].graph.capture(fn)
    predict = nets[0].graph.capture(nets[0].forward)
    eager = train_fn(nets[1], opts[1])
    order = batches(len(x), 10, epochs=1)
    for i in order:  # recorded, verified, replayed
        assert step(x[i], y[i]) == eager(x[i], y[i])
    nets[0].graph.eval()
    predict(x[:5])
    predict(x[:5])  # recorded and verified
    for net in nets:
        getattr(_Replaced, how)(net.graph, source, tmp_path)
    assert_same_array(nets[0].first.W.value, source.parameter["affine_0.W"].value)
    out = predict(x[:5])  # a replay, in eval mode, after the change
    nets[1].graph.eval()
    assert_same_array(out.value, nets[1].forward(x[:5]).value)
    for net in nets:
        net.graph.train()
    for i in batches(len(x), 10, epochs=2, seed=5):
        assert step(x[i], y[i]) == eager(x[i], y[i])
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert not np.array_equal(nets[0].first.W.value, source.parameter["affine_0.W"].value)  # it trained on


def test_a_layer_replaced_after_capture_is_used():
    """Fine-tuning: a new head from graph.get_operation replaces the old one in the model."""
    x, y = data(30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    step, eager = nets[0].graph.capture(train_fn(nets[0], opts[0])), train_fn(nets[1], opts[1])
    for i in batches(len(x), 10, epochs=1):
        assert step(x[i], y[i]) == eager(x[i], y[i])
    for net, opt in zip(nets, opts):
        net.last = net.graph.get_operation("Affine", [5, 3])
        opt.variables = list(net.graph.parameter)
    for i in batches(len(x), 10, epochs=1, seed=2):
        assert step(x[i], y[i]) == eager(x[i], y[i])
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_hyperparameters_are_read_live():
    x, y = data(30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3, momentum=0.9) for n in nets]
    step = nets[0].graph.capture(train_fn(nets[0], opts[0]))
    eager = train_fn(nets[1], opts[1])
    for epoch, (lr, momentum, decay) in enumerate([(0.3, 0.9, 0.0), (0.05, 0.5, 0.01), (0.01, 0.0, 0.1)]):
        for opt in opts:
            opt.lr, opt.momentum, opt.weight_decay = lr, momentum, decay
        for i in batches(len(x), 10, epochs=1, seed=epoch):
            assert step(x[i], y[i]) == eager(x[i], y[i])
    assert_same_graphs(nets[0].graph, nets[1].graph)


def lstm_model(seed: int = 0, D: int = 3, H: int = 4, classes: int = 3) -> Any:
    pytest.importorskip("tapegrad_rnn")
    graph = tg.Graph("lstm", seed=seed)
    cell = graph.get_operation("rnn:LSTMCell", [D, H])
    head = graph.get_operation("Affine", [H, classes])
    loss_op = graph.get_operation("SoftmaxLoss")
    opt = SGD(graph.parameter, lr=0.2)

    def step(xs: list[np.ndarray], h: np.ndarray, c: np.ndarray, y: np.ndarray) -> Any:
        for x in xs:
            h, c = cell.forward(x, h, c)
        loss_op.forward(head.forward(h))
        loss = loss_op.loss(y)
        graph.backward()
        opt.step()
        opt.zero_grad()
        return loss, h

    return graph, step


def test_lstm_cell_unrolled_through_the_graph_equals_eager():
    """A contrib LSTMCell unrolled over T steps, the T inputs passed as a list and the initial states as
    arguments; a new T re-records."""
    rng = np.random.default_rng(2)
    (graph, fn), (graph_e, eager) = lstm_model(), lstm_model()
    fn = Counted(fn)
    step = graph.capture(fn)
    for t in [5, 5, 5, 5, 3, 3, 3, 5]:
        xs, y = [rng.standard_normal((2, 3)) for _ in range(t)], rng.integers(0, 3, 2)
        h0, c0 = rng.standard_normal((2, 4)), np.zeros((2, 4))
        (loss, h), (loss_e, h_e) = step(xs, h0, c0, y), eager(xs, h0, c0, y)
        assert loss == loss_e
        assert_same_array(h.value, h_e.value)
    assert len(step.records) == 2
    assert fn.calls == 4
    assert_same_graphs(graph, graph_e)
    assert step.last_record is step.records[next(reversed(step.records))]


def test_gradients_accumulated_over_several_steps_and_backwards():
    """A step with two backward() calls and no optimizer (gradient accumulation); the
    optimizer runs outside the step every other call. Weight sharing: one op applied twice."""
    x, y = data(40)

    def make(net: Net) -> Any:
        def fn(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> Any:
            losses = []
            for xb, yb in ((x1, y1), (x2, y2)):
                h = net.act.forward(net.first.forward(xb))
                h = net.act.forward(net.first.forward(h))  # the same Affine (5 -> 5) again
                net.loss_op.forward(net.last.forward(h))
                losses.append(net.loss(yb))
                net.graph.backward()
            return losses

        return fn

    nets = [Net(n_in=5), Net(n_in=5)]
    x = x[:, :5].copy()
    opts = [SGD(n.graph.parameter, lr=0.1) for n in nets]
    fn = Counted(make(nets[0]))
    step = nets[0].graph.capture(fn)
    eager = make(nets[1])
    for k, i in enumerate(batches(len(x), 10, epochs=3)):
        a, b = i[:5], i[5:]
        assert step(x[a], y[a], x[b], y[b]) == eager(x[a], y[a], x[b], y[b])
        assert_same_graphs(nets[0].graph, nets[1].graph)  # the accumulated gradients too
        if k % 2:
            for opt in opts:
                opt.step()
                opt.zero_grad()
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_explicit_seed_gradients_and_loss_grad():
    """backward(grads={output: g}) with g a step argument, and backward(loss_grad=s) with s a
    non-array argument (part of the key)."""
    rng = np.random.default_rng(5)

    def make(graph: tg.Graph) -> Any:
        affine = graph.get_operation("Affine", [4, 3])
        sq = graph.get_operation("SquareLoss")

        def fn(x: np.ndarray, g: np.ndarray, target: np.ndarray, scale: float) -> Any:
            out = affine.forward(x)
            sq.forward(out)
            loss = sq.loss(target)
            graph.backward(grads={out: g}, loss_grad=scale)
            return loss

        return fn

    graphs = [tg.Graph("a", seed=0), tg.Graph("a", seed=0)]
    fn = Counted(make(graphs[0]))
    step, eager = graphs[0].capture(fn), make(graphs[1])
    for scale in [1.0, 0.5, 1.0, 0.5, 1.0, 0.5]:
        args = (rng.standard_normal((2, 4)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3)), scale)
        assert step(*args) == eager(*args)
        assert_same_graphs(*graphs)
    assert len(step.records) == 2
    assert fn.calls == 4


def test_variables_passed_as_arguments_receive_their_gradients():
    rng = np.random.default_rng(6)
    nets = [Net(), Net()]

    def make(net: Net) -> Any:
        def fn(v: tg.Variable, y: np.ndarray) -> Any:
            net.forward(v)
            loss = net.loss(y)
            net.graph.backward()
            net.graph.parameter.clear_grads()
            return loss

        return fn

    fn = Counted(make(nets[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1])
    for k in range(5):
        value, y = rng.standard_normal((4, 6)), rng.integers(0, 3, 4)
        v, v_e = tg.Variable(value.copy()), tg.Variable(value.copy())
        if k % 2:  # a gradient already there: the step adds to it
            v.add_grad(np.ones((4, 6)))
            v_e.add_grad(np.ones((4, 6)))
        assert step(v, y) == eager(v_e, y)
        assert_same_array(v.grad, v_e.grad)
        assert np.any(v.grad != (k % 2))
    assert fn.calls == 2
    assert len(step.records) == 1


Pair = namedtuple("Pair", "loss probs")


@pytest.mark.parametrize("shape", ["tuple", "list", "dict", "namedtuple", "none", "output"])
def test_structured_return_values(shape):
    x, y = data(30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]

    def make(net: Net, opt: Any) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            h = net.hidden(x)
            probs = net.loss_op.forward(net.last.forward(h))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return {
                "tuple": (loss, probs, h),
                "list": [loss, [probs, (h,)]],
                "dict": {"loss": loss, 3: probs, ("h",): {"hidden": h}},
                "namedtuple": Pair(loss, probs),
                "none": None,
                "output": probs,
            }[shape]

        return fn

    def flat(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [("key", k) for k in value] + [f for v in value.values() for f in flat(v)]
        if isinstance(value, (tuple, list)):
            return [("type", type(value))] + [f for v in value for f in flat(v)]
        return [value]

    fn = Counted(make(nets[0], opts[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1], opts[1])
    for i in batches(len(x), 10, epochs=2):
        got, expected = flat(step(x[i], y[i])), flat(eager(x[i], y[i]))
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            if isinstance(b, tg.Variable):
                assert type(a) is tg.Variable
                assert_same_array(a.value, b.value)
            else:
                assert type(a) is type(b) and a == b
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_returned_op_outputs_carry_their_gradient_as_eager():
    x, y = data(30)
    nets = [Net(), Net()]

    def make(net: Net) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            h = net.hidden(x)
            net.loss_op.forward(net.last.forward(h))
            loss = net.loss(y)
            net.graph.backward()
            net.graph.parameter.clear_grads()
            return loss, h

        return fn

    step, eager = nets[0].graph.capture(make(nets[0])), make(nets[1])
    for i in batches(len(x), 10, epochs=1):
        (_, h), (_, h_e) = step(x[i], y[i]), eager(x[i], y[i])
        assert np.any(h_e.grad != 0)
        assert_same_array(h.grad, h_e.grad)


def test_eval_mode_loss_value_can_be_returned():
    """A validation step in eval mode returning its loss (and the probabilities)."""
    x, y = data(30)
    nets = [Net(), Net()]
    for net in nets:
        net.graph.eval()

    def make(net: Net) -> Any:
        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            probs = net.forward(x)
            return net.loss(y), probs

        return fn

    step, eager = nets[0].graph.capture(make(nets[0])), make(nets[1])
    for i in batches(len(x), 10, epochs=2):
        (loss, probs), (loss_e, probs_e) = step(x[i], y[i]), eager(x[i], y[i])
        assert loss == loss_e
        assert_same_array(probs.value, probs_e.value)


def test_kwargs_and_nested_argument_structures():
    """Arrays inside lists and dicts, passed by keyword too, are the step's inputs."""
    x, y = data(30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]

    def make(net: Net, opt: Any) -> Any:
        def fn(batch: dict[str, Any], *, extra: tuple[Any, ...]) -> Any:
            net.forward(batch["x"][0])
            loss = net.loss(batch["y"])
            net.graph.backward(loss_grad=extra[0])
            opt.step()
            opt.zero_grad()
            return loss

        return fn

    fn = Counted(make(nets[0], opts[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1], opts[1])
    for i in batches(len(x), 10, epochs=2):
        args = {"x": [x[i]], "y": y[i]}
        assert step(args, extra=(0.5, "tag")) == eager(args, extra=(0.5, "tag"))
    assert fn.calls == 2
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_in_place_changes_of_an_argument_are_seen():
    """The same array object, changed in place between calls, is read afresh by each replay."""
    x, y = data(10)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    step, eager = nets[0].graph.capture(train_fn(nets[0], opts[0])), train_fn(nets[1], opts[1])
    buffer = x[:5].copy()
    for k in range(5):
        buffer[...] = x[k : k + 5]
        assert step(buffer, y[:5]) == eager(buffer, y[:5])
    assert_same_graphs(nets[0].graph, nets[1].graph)


class RunningMean(tg.Operation):
    """Subtracts a running mean of its input, kept in a non-trainable parameter updated by
    forward in train mode (the way batch normalisation keeps its statistics)."""

    def __init__(self, size: int) -> None:
        self.mean = self.parameter("mean", (size,), init="zeros", trainable=False)

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        if ctx.training:
            self.mean.value *= 0.9
            self.mean.value += 0.1 * x.mean(axis=0)
        return x - self.mean.value

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        return grad


def test_state_an_op_keeps_in_a_parameter_advances_as_eager():
    """Also: a frozen layer (trainable=False) and an optimizer over a subset of the parameters,
    zero_grad called first (so the other layers' gradients accumulate from step to step)."""
    x, y = data(30)

    def make() -> tuple[Net, Any, Any]:
        net = Net()
        norm = net.graph.get_operation(RunningMean, [6])
        net.first.b.trainable = False
        opt = SGD([net.first.W, net.first.b, net.last.W], lr=0.2)

        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            opt.zero_grad()
            out = net.forward(norm.forward(x))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            return loss, out

        return net, norm, fn

    (net, norm, fn), (net_e, _, eager) = make(), make()
    fn = Counted(fn)
    step = net.graph.capture(fn)
    for i in batches(len(x), 10, epochs=3):
        (loss, out), (loss_e, out_e) = step(x[i], y[i]), eager(x[i], y[i])
        assert loss == loss_e
        assert_same_array(out.value, out_e.value)
    assert fn.calls == 2
    assert_same_graphs(net.graph, net_e.graph)  # last.b's gradient accumulated over all steps, as eagerly
    assert np.any(net.last.b.peek_grad() != 0) and np.any(norm.mean.value != 0)


class PlainRunningMean(tg.Operation):
    """RunningMean with its statistics in a plain attribute (rebound, or changed in place), and
    a list of what it saw: the first replay's check must put back what its replay changed."""

    def __init__(self, size: int, how: str) -> None:
        self.mean, self.how, self.seen, self.stats = np.zeros(size), how, [], {"mean": np.zeros(size)}

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        if ctx.training:
            if self.how == "in-place":
                self.mean *= 0.9
                self.mean += 0.1 * x.mean(axis=0)
            elif self.how == "in-a-dict":
                mean = self.stats["mean"]
                mean *= 0.9
                mean += 0.1 * x.mean(axis=0)
                self.mean = mean
            else:
                self.mean = 0.9 * self.mean + 0.1 * x.mean(axis=0)
            self.seen.append(x.shape[0])
        return x - self.mean

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        return grad


@pytest.mark.parametrize("how", ["rebound", "in-place", "in-a-dict"])
def test_state_an_op_keeps_in_plain_attributes_advances_as_eager(how):
    x, y = data(30)

    def make() -> tuple[Net, Any, Any]:
        net = Net()
        norm = net.graph.get_operation(PlainRunningMean, [6, how])
        opt = SGD(net.graph.parameter, lr=0.2)
        return net, norm, train_fn(_Normed(net, norm), opt)

    (net, norm, fn), (net_e, norm_e, eager) = make(), make()
    fn = Counted(fn)
    step = net.graph.capture(fn)
    for i in batches(len(x), 10, epochs=2):
        assert step(x[i], y[i]) == eager(x[i], y[i])
    assert fn.calls == 2  # recorded, verified, then replayed
    assert_same_array(norm.mean, norm_e.mean)
    assert_same_array(norm.stats["mean"], norm_e.stats["mean"])
    assert norm.seen == norm_e.seen and len(norm.seen) == 6
    assert_same_graphs(net.graph, net_e.graph)


class _Normed:
    def __init__(self, net: Net, norm: Any) -> None:
        self.net, self.norm, self.graph = net, norm, net.graph

    def forward(self, x: Any) -> Any:
        return self.net.forward(self.norm.forward(x))

    def loss(self, y: Any) -> float:
        return self.net.loss(y)


def test_ops_that_apply_other_ops_are_replayed_as_one_application(composite_ops):
    """An op whose forward and backward apply other ops (and a loss computed through another
    Loss): the replay runs each op's own code once, the tape stays empty, values equal eager."""
    softsign2, through_square_loss = composite_ops

    def make() -> tuple[tg.Graph, Any]:
        g = tg.Graph("g", seed=0)
        first, op = g.get_operation("Affine", [4, 3]), g.get_operation(softsign2, [3])
        loss = g.get_operation(through_square_loss)
        opt = Adam(g.parameter, lr=0.01)

        def fn(x: np.ndarray, t: np.ndarray) -> Any:
            out = loss.forward(op(first(x)))
            value = loss.loss(t)
            g.backward()
            opt.step()
            opt.zero_grad()
            return value, out

        return g, fn

    (g, fn), (g_e, eager) = make(), make()
    fn = Counted(fn)
    step = g.capture(fn)
    rng = np.random.default_rng(3)
    for _ in range(6):
        x, t = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
        (value, out), (value_e, out_e) = step(x, t), eager(x, t)
        assert value == value_e
        assert_same_array(out.value, out_e.value)
        assert g.forward_ops == [] and g.tape.inside == 0
    assert fn.calls == 2
    names = [app.op.name for app in next(iter(step.records.values())).recording.apps]
    assert names == ["affine_0", "softsign2_0", "through_square_loss_0"]
    assert_same_graphs(g, g_e)


def test_record_run_replays_an_op_applying_other_ops_without_recording_them(composite_ops):
    softsign2, through_square_loss = composite_ops
    g = tg.Graph("g", seed=0)
    op, loss = g.get_operation(softsign2, [3]), g.get_operation(through_square_loss)

    def fn(x: np.ndarray, t: np.ndarray) -> float:
        loss.forward(op(x))
        value = loss.loss(t)
        g.backward()
        return value

    step = g.capture(fn)
    x, t = np.ones((2, 3)), np.zeros((2, 3))
    step(x, t)
    step(x, t)
    (record,) = step.records.values()
    value = record.run(x, t)
    assert g.forward_ops == [] and g.tape.inside == 0 and value == step(x, t)


# -- aliasing ---------------------------------------------------------------------------------------------


def _subtract_graph() -> tuple[tg.Graph, Any]:
    graph = tg.Graph("alias", seed=0)
    sub, sq = graph.get_operation("Subtract"), graph.get_operation("SquareLoss")
    target = tg.constant(np.zeros((2, 3)))

    def fn(a: np.ndarray, b: np.ndarray) -> float:
        sq.forward(sub.forward(tg.Variable(a), tg.Variable(b)))
        loss = sq.loss(target)
        graph.backward()
        return loss

    return graph, fn


@pytest.mark.parametrize("check", [True, False])
def test_the_same_array_passed_twice_on_the_first_call(check):
    """step(x, x) records; step(a, b) must still compute a - b (silently 0.0 with check=False)."""
    rng = np.random.default_rng(0)
    graph, fn = _subtract_graph()
    _, eager = _subtract_graph()
    step = graph.capture(fn, check=check)
    x = rng.standard_normal((2, 3))
    assert step(x, x) == eager(x, x) == 0.0
    for _ in range(3):
        a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
        assert step(a, b) == eager(a, b) != 0.0


def test_the_same_variable_passed_twice_on_the_first_call():
    rng = np.random.default_rng(0)
    graph = tg.Graph("alias")
    sub, sq = graph.get_operation("Subtract"), graph.get_operation("SquareLoss")
    target = tg.constant(np.zeros((2, 3)))

    def fn(a: tg.Variable, b: tg.Variable) -> float:
        sq.forward(sub.forward(a, b))
        loss = sq.loss(target)
        graph.backward()
        return loss

    step = graph.capture(fn, check=False)
    v = tg.Variable(rng.standard_normal((2, 3)))
    step(v, v)
    a, b = tg.Variable(rng.standard_normal((2, 3))), tg.Variable(rng.standard_normal((2, 3)))
    a_e, b_e = tg.Variable(a.value.copy()), tg.Variable(b.value.copy())
    assert step(a, b) == fn(a_e, b_e) != 0.0
    assert_same_array(a.grad, a_e.grad)
    assert_same_array(b.grad, b_e.grad)
    w, w_e = tg.Variable(a.value.copy()), tg.Variable(a.value.copy())
    assert step(w, w) == fn(w_e, w_e) == 0.0  # its own record, each use bound to the one Variable
    assert_same_array(w.grad, w_e.grad)


# -- errors inside a replay ---------------------------------------------------------------------------------


class NoNaN(tg.Operation):
    """The identity, refusing NaN in forward and huge gradients in backward."""

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        if np.isnan(x).any():
            raise ValueError("NaN in the input")
        return x * 1.0

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        if np.abs(grad).max() > 1e6:
            raise ValueError("gradient too large")
        return grad


def _through(first: type[tg.Operation]) -> tuple[tg.Graph, Any]:
    """A graph and a step: ``first``, Affine, SquareLoss, backward, clear."""
    graph = tg.Graph(first.__name__, seed=0)
    op, affine = graph.get_operation(first), graph.get_operation("Affine", [3, 2])
    sq = graph.get_operation("SquareLoss")

    def fn(x: np.ndarray, t: np.ndarray) -> float:
        sq.forward(affine.forward(op.forward(x)))
        loss = sq.loss(t)
        graph.backward()
        graph.parameter.clear_grads()
        return loss

    return graph, fn


def _guarded() -> tuple[tg.Graph, Any]:
    return _through(NoNaN)


def _replayed_and_eager_errors(x: np.ndarray, t: np.ndarray) -> tuple[BaseException, BaseException]:
    graph, fn = _guarded()
    step = graph.capture(fn)
    for _ in range(3):
        step(np.ones((2, 3)), np.zeros((2, 2)))
    assert step.last_record.verified
    errors = []
    for run in (step, _guarded()[1]):
        with pytest.raises(tg.TapegradError) as info:
            run(x, t)
        errors.append(info.value)
    return errors[0], errors[1]


def test_an_error_in_a_replayed_forward_names_the_op():
    replayed, eager = _replayed_and_eager_errors(np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]]), np.zeros((2, 2)))
    assert type(replayed) is type(eager) is OperationError
    assert "NoNaN (no_na_n_0): forward failed" in str(replayed) and "NaN in the input" in str(replayed)


class Picky(tg.Operation):
    """The identity, raising what an author's code may raise on some inputs."""

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        if x.sum() > 100:
            raise KeyError("too big")
        if x.sum() < -100:
            raise RuntimeError("too small")
        if np.isnan(x).any():
            raise ValueError("NaN in the input")
        return x * 1.0

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        if np.abs(grad).max() > 1e6:
            return grad * ctx.scale  # never set
        return grad


def _picky() -> Any:
    return _through(Picky)


@pytest.mark.parametrize(
    ("x", "t"),
    [
        (np.array([[1.0, np.nan, 0.0], [0.0, 0.0, 0.0]]), np.zeros((2, 2))),
        (np.full((2, 3), 100.0), np.zeros((2, 2))),
        (np.full((2, 3), -100.0), np.zeros((2, 2))),
        (np.ones((2, 3)), np.full((2, 2), 1e9)),
    ],
    ids=["forward-ValueError", "forward-KeyError", "forward-RuntimeError", "backward-AttributeError"],
)
def test_an_error_in_a_replayed_op_is_eagers(x, t):
    """Type and message as eager raises them: eager lets a KeyError or RuntimeError through,
    names the input shapes, and hints at ctx attributes set in forward."""
    graph, fn = _picky()
    step = graph.capture(fn)
    for _ in range(3):
        step(np.ones((2, 3)), np.zeros((2, 2)))
    errors = []
    for run in (step, _picky()[1]):
        with pytest.raises(Exception) as info:
            run(x, t)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1])
    if isinstance(errors[1], BackwardError):  # the replay may say it was a replay; the hint must stay
        assert "(set it on ctx in forward or loss before backward reads it)" in str(errors[0])
    else:
        assert str(errors[0]) == str(errors[1])


def test_an_error_in_a_replayed_backward_names_the_op():
    replayed, eager = _replayed_and_eager_errors(np.ones((2, 3)), np.full((2, 2), 1e9))
    assert type(replayed) is type(eager) is BackwardError
    for error in (replayed, eager):
        assert "NoNaN (no_na_n_0): backward failed" in str(error) and "gradient too large" in str(error)


def test_a_nan_loss_in_a_replay_raises_nonfinite_error_as_eager():
    x, y = data(10)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    step, eager = nets[0].graph.capture(train_fn(nets[0], opts[0])), train_fn(nets[1], opts[1])
    for _ in range(3):
        assert step(x[:5], y[:5]) == eager(x[:5], y[:5])
    bad = x[5:].copy()
    bad[2, 1] = np.nan
    errors = []
    for run in (step, eager):
        with pytest.raises(NonFiniteError) as info:
            run(bad, y[5:])
        errors.append(str(info.value))
    assert errors[0] == errors[1]
    assert "SoftmaxLoss (softmax_loss_0)" in errors[0]
    nets[1].graph.clear()
    assert_same_graphs(nets[0].graph, nets[1].graph)  # nothing was applied
    assert step(x[:5], y[:5]) == eager(x[:5], y[:5])  # and both go on


class Positive(tg.Operation):
    """The identity on non-negative inputs; refuses negative ones."""

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        if (x < 0).any():
            raise ValueError("negative input")
        return x * 1.0

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        return grad


def _skipping(graph: tg.Graph, use: list[bool]) -> Any:
    positive, affine, sq = (graph.get_operation(Positive), graph.get_operation("Affine", [3, 2]),
                            graph.get_operation("SquareLoss"))
    opt = Adam(graph.parameter, lr=0.1)
    target = tg.constant(np.ones((2, 2)))

    def fn(x: np.ndarray) -> float:
        h = positive.forward(x) if use[0] else x  # a branch on the caller's flag: no guard sees it
        sq.forward(affine.forward(h))
        loss = sq.loss(target)
        graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    return fn


def test_a_first_replay_that_fails_where_eager_succeeds_is_a_capture_error():
    """A branch on a flag no guard sees skips an op on the second call: the replay (on copies) fails in
    that op where the eager run does not; the eager run decides, and its effects are those of one call."""
    graphs, flags = [tg.Graph("skip", seed=0), tg.Graph("skip", seed=0)], [[True], [True]]
    step, eager = graphs[0].capture(_skipping(graphs[0], flags[0])), _skipping(graphs[1], flags[1])
    assert step(np.ones((2, 3))) == eager(np.ones((2, 3)))
    flags[0][0] = flags[1][0] = False
    with pytest.raises(CaptureError) as info:
        step(-np.ones((2, 3)))
    expected = eager(-np.ones((2, 3)))
    message = str(info.value)
    assert "Positive (positive_0)" in message and "branch" in message
    assert "pass the condition as an argument" in message  # the fix
    assert isinstance(info.value.__cause__, OperationError) and "negative input" in str(info.value.__cause__)
    assert info.value.eager_result == expected
    assert_same_graphs(*graphs)


def test_an_error_on_the_first_replay_is_eagers_and_the_record_verifies_later():
    """The verification's eager run decides: its error is raised as it is, and the record is
    verified by the next call that succeeds."""
    x, y = data(15)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.1) for n in nets]
    fn = Counted(train_fn(nets[0], opts[0]))
    step, eager = nets[0].graph.capture(fn), train_fn(nets[1], opts[1])
    assert step(x[:5], y[:5]) == eager(x[:5], y[:5])
    bad = x[5:10].copy()
    bad[0, 0] = np.inf
    messages = []
    for run in (step, eager):  # (which error depends on where numpy sees the infinity: forward or backward)
        with pytest.raises((NonFiniteError, tg.BackwardError)) as info:
            run(bad, y[5:10])
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]
    assert not step.last_record.verified
    for net in nets:
        net.graph.clear()
    for _ in range(3):
        assert step(x[10:15], y[10:15]) == eager(x[10:15], y[10:15])
    assert step.last_record.verified and fn.calls == 3  # the recording, the failed verification, the verification
    assert_same_graphs(nets[0].graph, nets[1].graph)


def test_an_error_while_recording_leaves_no_record_and_no_recording():
    from tapegrad.capture.recording import active

    x, y = data(5)
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.3)
    fail = [True]

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        net.forward(x)
        if fail[0]:
            raise KeyError("user code failed")
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = net.graph.capture(fn)
    with pytest.raises(KeyError):
        step(x, y)
    assert active() is None and not step.records
    net.graph.clear()
    fail[0] = False
    assert type(step(x, y)) is float and len(step.records) == 1


def test_a_failed_first_call_leaves_the_tape_clear_for_the_next():
    net, twin = Net(), Net()
    step = net.graph.capture(train_fn(net, SGD(net.graph.parameter, lr=0.3)))
    eager = train_fn(twin, SGD(twin.graph.parameter, lr=0.3))
    x = np.ones((2, 6))
    with pytest.raises(tg.OutOfRangeError):
        step(x, np.array([0, 7]))
    assert net.graph.forward_ops == [] and not net.graph.tape.losses
    for y in ([0, 1], [0, 1], [1, 1], [2, 0]):
        assert step(x, np.array(y)) == eager(x, np.array(y))
    assert_same_graphs(net.graph, twin.graph)


def test_an_op_reading_ctx_inputs_gets_a_message_naming_that_cause():
    class ReadsInputs(tg.Operation):
        def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
            return x * 2.0

        def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
            return grad * 2.0 + 0.0 * ctx.inputs[0].value

    net = Net()
    op = net.graph.get_operation(ReadsInputs)
    loss = net.graph.get_operation("SquareLoss")

    def fn(x: np.ndarray, t: np.ndarray) -> float:
        loss.forward(op(tg.Variable(x)))
        value = loss.loss(t)
        net.graph.backward()
        return value

    step = net.graph.capture(fn)
    step(np.ones((2, 3)), np.zeros((2, 3)))
    with pytest.raises(CaptureError, match=r"reads ctx\.inputs or ctx\.outputs"):
        step(np.ones((2, 3)), np.zeros((2, 3)))


# -- the cache ------------------------------------------------------------------------------------------


def test_the_cache_is_bounded_least_recently_used_out_first():
    x, y = data(20)
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.1)
    fn = Counted(train_fn(net, opt))
    step = net.graph.capture(fn, max_records=2)
    a, b, c = 2, 3, 4  # batch sizes: three signatures
    step(x[:a], y[:a])
    step(x[:b], y[:b])
    first = step.records[next(iter(step.records))]
    step(x[:a], y[:a])  # a is used again (verified): b is now the least recently used
    assert fn.calls == 3
    step(x[:c], y[:c])  # evicts b
    assert len(step.records) == 2
    sizes = [record.shapes[0][0] for record in step.records.values()]
    assert sizes == [a, c]
    assert step.records[next(iter(step.records))] is first and first.verified
    calls = fn.calls
    step(x[:b], y[:b])  # recorded again, evicting a
    assert fn.calls == calls + 1
    assert [record.shapes[0][0] for record in step.records.values()] == [c, b]
    assert not step.last_record.verified
    assert len(step.records) <= step.max_records


@pytest.mark.parametrize(
    "change",
    ["shape", "dtype", "mode", "value", "variable", "list-length", "kwarg"],
)
def test_the_signature_decides_reuse_and_re_recording(change):
    """Each change of signature gets its own record; the same signature with new data does not."""
    x, y = data(12)
    nets = [Net(), Net()]

    def make(net: Net) -> Any:
        def fn(x: Any, y: np.ndarray, scale: float = 1.0, extra: Any = ()) -> Any:
            out = net.forward(x)
            if not net.graph.train_state:
                return out
            loss = net.loss(y)
            net.graph.backward(loss_grad=scale)
            net.graph.parameter.clear_grads()
            return loss

        return fn

    fn = Counted(make(nets[0]))
    step, eager = nets[0].graph.capture(fn), make(nets[1])
    base = (x[:4], y[:4])
    variants = {
        "shape": ((x[:5], y[:5]), {}),
        "dtype": ((x[:4].astype(np.float32), y[:4]), {}),
        "mode": (base, {}),
        "value": ((*base, 0.5), {}),
        "variable": ((tg.Variable(x[:4]), y[:4]), {}),
        "list-length": ((*base, 1.0, [1, 2]), {}),
        "kwarg": (base, {"scale": 1.0}),
    }
    other_args, other_kwargs = variants[change]
    for k in range(3):
        for args, kwargs in ((base, {}), (other_args, other_kwargs)):
            mode = change == "mode" and args is other_args and kwargs is other_kwargs
            for net in nets:
                net.graph.train_state = not mode
            new = tuple(a + k if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args)
            got, expected = step(*new, **kwargs), eager(*new, **kwargs)
            if isinstance(expected, tg.Variable):
                assert_same_array(got.value, expected.value)
            else:
                assert got == expected
    assert len(step.records) == 2
    assert fn.calls == 4  # two records, each recorded once and verified once


def test_same_signature_reuses_the_record():
    x, y = data(30)
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.1)
    fn = Counted(train_fn(net, opt))
    step = net.graph.capture(fn)
    step(x[:5], y[:5])
    record = step.last_record
    for k in range(1, 6):
        step(x[5 * k : 5 * k + 5], y[5 * k : 5 * k + 5])
        assert step.last_record is record
    assert fn.calls == 2 and list(step.records.values()) == [record]
    assert record.verified
    assert "def replay(" in record.source


# -- nesting ---------------------------------------------------------------------------------------------


def test_a_captured_step_called_inside_another_steps_recording():
    x, y = data(30)
    nets = [Net(), Net()]
    opts = [SGD(n.graph.parameter, lr=0.3) for n in nets]
    inner_fn = Counted(train_fn(nets[0], opts[0]))
    inner = nets[0].graph.capture(inner_fn)
    outer = nets[0].graph.capture(lambda x1, y1, x2, y2: (inner(x1, y1), inner(x2, y2)))
    eager = train_fn(nets[1], opts[1])
    order = batches(len(x), 5, epochs=2)
    for i, j in zip(order[::2], order[1::2]):
        assert outer(x[i], y[i], x[j], y[j]) == (eager(x[i], y[i]), eager(x[j], y[j]))
        assert inner(x[i], y[i]) == eager(x[i], y[i])  # the inner step, on its own
    assert_same_graphs(nets[0].graph, nets[1].graph)
    assert len(outer.records) == len(inner.records) == 1
    assert inner_fn.calls == 2 * 2 + 2  # outer: recorded, verified (two inner calls each); inner: the same


def test_another_graphs_ops_inside_a_step_are_refused_by_name():
    x, y = data(5)
    net, other = Net(), Net()
    other.graph.name = "teacher"
    net.graph.name = "student"
    other.graph.eval()
    opt = SGD(net.graph.parameter, lr=0.3)

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        other.forward(x)
        return simple_step(net, opt, lambda loss, out, x: loss)(x, y)

    with pytest.raises(CaptureError, match="belongs to graph 'teacher', not to the captured graph 'student'"):
        net.graph.capture(fn)(x, y)


def test_capturing_a_callable_object_or_a_captured_step_keeps_the_options():
    net = Net()
    net.graph.eval()

    class Predict:
        def __init__(self) -> None:
            self.check, self.records, self.fn = "user attribute", "user attribute", None

        def __call__(self, x: np.ndarray) -> Any:
            return net.forward(x)

    step = net.graph.capture(Predict(), check=False)
    assert step.check is False
    assert_same_array(step(np.ones((2, 6))).value, net.forward(np.ones((2, 6))).value)
    inner = net.graph.capture(net.forward, max_records=2)
    outer = net.graph.capture(inner, check=False, max_records=5)
    assert outer.check is False and outer.max_records == 5 and outer.records is not inner.records


# -- copies and pickles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_model_whose_step_was_captured_copies_and_trains_eagerly(how):
    """The graph keeps nothing of a captured step that stops a copy: a pickled or deep-copied
    model trains eagerly exactly as the original would, and can be captured anew."""
    x, y = data(30)
    net = Net(dropout=0.2)
    opt = Adam(net.graph.parameter, lr=0.01)
    step = net.graph.capture(train_fn(net, opt))
    for i in batches(len(x), 10, epochs=1):
        step(x[i], y[i])
    clone = pickle.loads(pickle.dumps(net)) if how == "pickle" else copy.deepcopy(net)
    assert_same_graphs(net.graph, clone.graph)
    assert clone.graph.rng.bit_generator.state == net.graph.rng.bit_generator.state
    opts = [Adam(n.graph.parameter, lr=0.01) for n in (net, clone)]
    for o in opts:
        o.load_state_dict(opt.state_dict())
    steps = [train_fn(net, opts[0]), clone.graph.capture(train_fn(clone, opts[1]))]
    for i in batches(len(x), 10, epochs=2, seed=3):
        assert steps[0](x[i], y[i]) == steps[1](x[i], y[i])
    assert_same_graphs(net.graph, clone.graph)


def _trainer(capture: bool = True) -> tuple[Any, tg.Trainer]:
    net = Net()
    return net, tg.Trainer(net, SGD(net.graph.parameter, lr=0.3), batch_size=8, progress=False, verbose=False,
                           capture=capture)


def test_an_eager_trainer_deep_copies_and_pickles():
    """The reference for the two tests below: without capture a Trainer copies."""
    x, y = data(30)
    _, trainer = _trainer(capture=False)
    trainer.train(x, y, epochs=1)
    for clone in (copy.deepcopy(trainer), pickle.loads(pickle.dumps(trainer))):
        before = state(trainer.graph)
        clone.train(x, y, epochs=1)
        for name, (value, _) in state(trainer.graph).items():
            assert_same_array(value, before[name][0])


def test_a_capturing_trainer_deep_copies_and_the_copy_trains_alone():
    x, y = data(30)
    _, trainer = _trainer()
    _, twin = _trainer(capture=False)
    trainer.train(x, y, epochs=2)
    twin.train(x, y, epochs=2)
    clone = copy.deepcopy(trainer)
    before = state(trainer.graph)
    history = clone.train(x, y, epochs=2)
    for name, (value, _) in state(trainer.graph).items():  # the original is untouched
        assert_same_array(value, before[name][0])
    assert_same_losses(history.train_loss, twin.train(x, y, epochs=2).train_loss)
    assert_same_graphs(clone.graph, twin.graph)


def test_a_capturing_trainer_pickles():
    x, y = data(30)
    _, trainer = _trainer()
    trainer.train(x, y, epochs=1)
    clone = pickle.loads(pickle.dumps(trainer))
    assert_same_losses(clone.train(x, y, epochs=1).train_loss, trainer.train(x, y, epochs=1).train_loss)


# -- the Trainer and the scikit-learn estimators ------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, ...]:
    pytest.importorskip("sklearn")
    x_train, x_test, y_train, y_test = load_digits(seed=0)
    return x_train[:120], x_test[:40], y_train[:120], y_test[:40]


class DigitsNet(Net):
    input_size, output_size = 64, 10

    def __init__(self, *, dropout: float = 0.0) -> None:
        super().__init__(64, 12, 10, dropout=dropout, seed=0)


@pytest.mark.parametrize(
    ("batch", "optimizer", "dropout", "epochs"),
    [(1, "sgd", 0.0, 2), (32, "sgd-momentum-decay", 0.0, 3), (32, "adam", 0.2, 3), (7, "adam", 0.0, 2)],
)
def test_trainer_capture_equals_trainer_eager(digits, batch, optimizer, dropout, epochs):
    x_train, x_test, y_train, y_test = digits
    results = []
    for capture in (True, False):
        net = DigitsNet(dropout=dropout)
        trainer = tg.Trainer(net, OPTIMIZERS[optimizer](net.graph.parameter), batch_size=batch, progress=False,
                             verbose=False, capture=capture)
        history = trainer.train(x_train, y_train, x_test, y_test, epochs=epochs)
        results.append((history, net, trainer))
    (h_cap, net_cap, t_cap), (h_eager, net_eager, _) = results
    assert_same_losses(h_cap.train_loss, h_eager.train_loss)
    assert h_cap.test_accuracy == h_eager.test_accuracy
    assert_same_graphs(net_cap.graph, net_eager.graph)
    assert_same_array(t_cap.predict(x_test), results[1][2].predict(x_test))
    assert isinstance(t_cap._train_step, CapturedStep)
    partial = len(x_train) % batch != 0
    assert len(t_cap._train_step.records) == 1 + partial  # the last, shorter batch has its own record
    assert all(r.verified for r in t_cap._train_step.records.values()) or epochs < 3


def test_trainer_divergence_during_a_replay_stops_as_eager(digits):
    """A step that overflows in a replay (the third step) stops training exactly as eagerly."""

    class Linear:
        def __init__(self) -> None:
            self.graph = tg.Graph("linear", seed=0)
            self.affine = self.graph.get_operation("Affine", [64, 10])
            self.loss_op = self.graph.get_operation("SoftmaxLoss")

        def forward(self, x: Any) -> Any:
            return self.loss_op.forward(self.affine.forward(x))

        def loss(self, y: Any) -> float:
            return self.loss_op.loss(y)

    x_train, _, y_train, _ = digits
    outcomes = []
    for capture in (True, False):
        model = Linear()
        trainer = tg.Trainer(model, SGD(model.graph.parameter, lr=2e307), batch_size=8, progress=False,
                             verbose=False, capture=capture)
        with pytest.raises(TrainingError) as info:
            trainer.train(x_train, y_train, epochs=3)
        outcomes.append((str(info.value), model))
    found = re.search(r"at epoch (\d+), step (\d+) of", outcomes[0][0])
    assert found and (int(found[1]), int(found[2])) >= (1, 3)  # after the recording and the verification
    assert outcomes[0][0] == outcomes[1][0]
    assert_same_graphs(outcomes[0][1].graph, outcomes[1][1].graph)
    assert np.isfinite(outcomes[0][1].affine.W.value).all()


def test_trainer_uses_an_optimizer_assigned_after_training(digits):
    x_train, _, y_train, _ = digits
    results = []
    for capture in (True, False):
        net = DigitsNet()
        trainer = tg.Trainer(net, SGD(net.graph.parameter, lr=0.3), batch_size=32, progress=False, verbose=False,
                             capture=capture)
        trainer.train(x_train, y_train, epochs=2)
        trainer.optimizer = Adam(net.graph.parameter, lr=0.01)
        results.append((trainer.train(x_train, y_train, epochs=2), net))
    assert_same_losses(results[0][0].train_loss, results[1][0].train_loss)
    assert_same_graphs(results[0][1].graph, results[1][1].graph)


class _Linear:
    """Affine -> SoftmaxLoss on digits; subclasses do Python-side work in forward."""

    input_size, output_size = 64, 10

    def __init__(self) -> None:
        self.graph = tg.Graph("linear", seed=0)
        self.affine = self.graph.get_operation("Affine", [64, 10])
        self.loss_op = self.graph.get_operation("SoftmaxLoss")

    def forward(self, x: Any) -> Any:
        return self.loss_op.forward(self.affine.forward(self.prepare(x)))

    def prepare(self, x: Any) -> Any:
        return x

    def loss(self, y: Any) -> float:
        return self.loss_op.loss(y)


class _ArrayOut(_Linear):
    def forward(self, x: Any) -> Any:
        return super().forward(x).value  # Trainer.predict accepts arrays from forward


class _Rescaled(_Linear):
    def prepare(self, x: Any) -> Any:
        return x * 16.0


class _Flattened(_Linear):
    def prepare(self, x: Any) -> Any:
        return x.reshape(len(x), -1)


def test_trainer_predicts_with_a_model_whose_forward_returns_an_array(digits):
    x_train, x_test, y_train, y_test = digits
    accuracies = []
    for capture in (False, True):
        model = _ArrayOut()
        trainer = tg.Trainer(model, SGD(model.graph.parameter, lr=0.3), batch_size=16, progress=False,
                             verbose=False, capture=capture)
        if capture:  # forward reads its output's value: refused at the first training step, then eager
            refused = r"training step cannot be captured.*reads a Variable of shape \(16, 10\).s value"
            with pytest.warns(tg.CaptureWarning, match=refused):
                accuracies.append(trainer.train(x_train, y_train, x_test, y_test, epochs=2).test_accuracy)
        else:
            accuracies.append(trainer.train(x_train, y_train, x_test, y_test, epochs=2).test_accuracy)
    assert accuracies[0] == accuracies[1]


@pytest.mark.parametrize("model", [_Rescaled, _Flattened], ids=["x*16", "reshape"])
def test_a_model_whose_step_cannot_be_captured_trains_eagerly_with_a_warning(digits, model):
    """A model that trains eagerly but does Python-side work on its input in forward: the
    Trainer's user never wrote "the step", so the Trainer goes on eagerly, warning how to choose it."""
    x_train, x_test, y_train, y_test = digits
    results = []
    for capture in (False, True):
        net = model()
        trainer = tg.Trainer(net, SGD(net.graph.parameter, lr=0.3), batch_size=16, progress=False,
                             verbose=False, capture=capture)
        if capture:
            eager = r"training and prediction run eagerly from now on.*Trainer\(capture=False\)"
            with pytest.warns(tg.CaptureWarning, match=eager):
                history = trainer.train(x_train, y_train, x_test, y_test, epochs=2)
        else:
            history = trainer.train(x_train, y_train, x_test, y_test, epochs=2)
        results.append((history.train_loss, history.test_accuracy, [v.value.copy() for v in net.graph.parameter]))
    (loss_e, acc_e, params_e), (loss_c, acc_c, params_c) = results
    assert loss_e == loss_c and acc_e == acc_c  # not a step lost or applied twice
    for a, b in zip(params_e, params_c):
        assert_same_array(a, b)


def test_trainer_predictions_of_a_model_with_python_work_on_its_input_are_never_stale(digits):
    """Prediction with a model computing x * 16 in Python: refused at its first call (the old rules froze
    it and caught it only on other data), answered eagerly from then on, equal to eager every time."""
    x_train, x_test, _, _ = digits
    net, twin = _Rescaled(), _Rescaled()
    trainer = tg.Trainer(net, None, batch_size=len(x_test), progress=False, verbose=False)
    eager = tg.Trainer(twin, None, progress=False, verbose=False, capture=False)
    refused = r"prediction step cannot be captured.*computes multiply on step argument"
    with pytest.warns(tg.CaptureWarning, match=refused):
        assert np.array_equal(trainer.predict(x_test), eager.predict(x_test))
    with warnings.catch_warnings():
        warnings.simplefilter("error", tg.CaptureWarning)
        for _ in range(2):
            assert np.array_equal(trainer.predict(x_test), eager.predict(x_test))
        assert np.array_equal(trainer.predict(x_train[: len(x_test)]), eager.predict(x_train[: len(x_test)]))
        assert np.array_equal(trainer.predict(x_train[:50]), eager.predict(x_train[:50]))


def test_sklearn_estimator_fits_identically_and_as_eager(digits, monkeypatch):
    from tapegrad import sklearn as tg_sklearn

    x_train, x_test, y_train, _ = digits
    params = dict(hidden_layer_sizes=(10,), max_epochs=4, batch_size=32, random_state=0, tol=None)
    fits = [tg_sklearn.MLPClassifier(**params).fit(x_train, y_train) for _ in range(2)]
    monkeypatch.setattr(tg_sklearn, "Trainer", functools.partial(tg.Trainer, capture=False))
    fits.append(tg_sklearn.MLPClassifier(**params, optimizer="sgd").fit(x_train, y_train))
    adam = [tg_sklearn.MLPClassifier(**params, optimizer="adam", learning_rate=0.01).fit(x_train, y_train)]
    monkeypatch.undo()
    adam.append(tg_sklearn.MLPClassifier(**params, optimizer="adam", learning_rate=0.01).fit(x_train, y_train))
    for group in (fits, adam):
        for other in group[1:]:
            for a, b in zip(group[0].coefs_ + group[0].intercepts_, other.coefs_ + other.intercepts_):
                assert_same_array(a, b)
            assert_same_losses(group[0].loss_curve_, other.loss_curve_)
            assert_same_array(group[0].predict_proba(x_test), other.predict_proba(x_test))


# -- optimizers and models the step holds -----------------------------------------------------
def test_a_users_optimizer_keeping_its_own_list_still_updates_the_model():
    from tapegrad.optim import Optimizer

    class PlainSGD(Optimizer):
        def __init__(self, parameter: Any, lr: float) -> None:
            super().__init__(parameter, lr)
            self.params = self.trainable

        def step(self) -> None:
            for v in self.params:
                g = v.peek_grad()
                if g is not None:
                    v.value -= self.lr * g

    x, y = data(64)
    losses = []
    for capture in (False, True):
        net = Net()
        opt = PlainSGD(net.graph.parameter, lr=0.5)
        trainer = tg.Trainer(net, opt, batch_size=16, verbose=False, progress=False, capture=capture)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tg.CaptureWarning)
            losses.append(trainer.train(x, y, epochs=4).train_loss)
        assert all(p is q for p, q in zip(opt.params, net.graph.parameter.trainable_variables()))
    assert losses[0] == losses[1] and losses[1][-1] < losses[1][0]


def test_a_replayed_call_with_an_array_argument_is_refused_when_recorded():
    class Scaled(SGD):
        def step(self, scale: Any = None) -> None:
            super().step()

    g = tg.Graph(seed=0)
    w = g.get_variable("w", (2,), "ones")
    mul, total = g.get_operation("math:Multiply"), g.get_operation("math:Sum")
    opt = Scaled(g.parameter, lr=0.1)

    @g.capture
    def step(x: np.ndarray, seed: np.ndarray, scale: np.ndarray) -> Any:
        out = total(mul(tg.Variable(x), w))
        g.backward(grads={out: seed})
        opt.step(scale)
        opt.zero_grad()
        return out

    refused = r"Scaled.step\(\) was called with an array at .*test_capture.py:\d+.*attribute"
    with pytest.raises(CaptureError, match=refused):
        step(np.ones(2), np.ones(()), np.array([1.0]))


def test_a_variable_and_its_own_array_passed_together_key_a_record_of_their_own():
    g = tg.Graph(seed=0).eval()
    add = g.get_operation("math:Add")
    step = g.capture(lambda v, x: add(v, x))
    for i in range(3):
        v = tg.Variable(np.full(2, float(i)))
        assert np.array_equal(step(v, v.value).value, [2.0 * i] * 2)
    v, x = tg.Variable(np.zeros(2)), np.full(2, 100.0)
    assert np.array_equal(step(v, x).value, [100.0, 100.0])  # the record binds argument 1, never v.value


def test_gradcheck_leaves_a_users_loss_paired_with_the_users_forward():
    x, y = data(8)
    net = Net()
    net.forward(x)
    tg.gradcheck(net.loss_op, [np.random.default_rng(0).standard_normal((8, 3))], target=y)
    assert len(net.graph.forward_ops) == 4
    assert np.isfinite(net.loss(y))
    net.graph.backward()


def test_the_optimizers_state_survives_copies_and_a_failed_step_changes_nothing():
    x, y = data(8)
    net = Net()
    opt = Adam(net.graph.parameter, lr=0.01)

    def train(n: Net, o: Adam) -> None:
        n.forward(x)
        n.loss(y)
        n.graph.backward()
        o.step()
        o.zero_grad()

    for _ in range(3):
        train(net, opt)
    twins = [copy.deepcopy((net, opt)), pickle.loads(pickle.dumps((net, opt)))]
    train(net, opt)
    for twin_net, twin_opt in twins:
        train(twin_net, twin_opt)
        assert_same_graphs(net.graph, twin_net.graph)

    a, b = tg.Variable(np.ones(2), name="a"), tg.Variable(np.ones(2), name="b")
    adam = Adam([a, b], lr=0.1)
    a.add_grad(np.ones(2))
    b.add_grad(np.array([1e300, 1.0]))
    state = pickle.dumps(adam.state_dict())
    with np.errstate(over="raise"), pytest.raises(tg.NonFiniteError, match="would overflow"):
        adam.step()
    assert pickle.dumps(adam.state_dict()) == state and np.array_equal(a.value, np.ones(2))


def test_a_pass_in_flight_stops_training_clearly_and_keeps_capture():
    x, y = data(40)
    net = Net()
    net.forward(x[:2])  # a look at the output in train mode: recorded
    trainer = tg.Trainer(net, SGD(net.graph.parameter, lr=0.1), batch_size=8, verbose=False, progress=False)
    with pytest.raises(tg.TrainingError, match=r"forward pass in flight.*backward\(\) or graph.clear\(\)"):
        trainer.train(x, y, epochs=1)
    assert len(net.graph.forward_ops) == 4  # the user's pass is left alone
    net.graph.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tg.CaptureWarning)
        trainer.train(x, y, epochs=2)
    assert isinstance(trainer._train_step, CapturedStep)


def test_a_pickled_model_after_an_eval_pass_carries_no_activations():
    x, _ = data(2000)
    net = Net()
    small = len(pickle.dumps(net))
    net.graph.eval()
    net.forward(x)
    assert len(pickle.dumps(net)) < small + 20_000
