"""``tg.profile``: counts, own times and shares of the step, eager and captured; free when off."""

import contextlib
import importlib
import itertools
import math
import re
import types

import numpy as np
import pytest

import tapegrad as tg
import tapegrad.events as events
from tapegrad.capture import Record
from tapegrad.datasets import load_digits
from tapegrad.models import MLP
from tapegrad.optim import SGD, Adam
from tapegrad.profile import Profile

OPS = {"affine_0": "Affine", "sigmoid_0": "Sigmoid", "affine_1": "Affine", "softmax_loss_0": "SoftmaxLoss"}


@pytest.fixture(scope="module")
def data():
    x_train, x_test, y_train, y_test = load_digits(seed=0)
    return x_train[:40], y_train[:40], x_test[:30], y_test[:30]


def train(data, capture, batch_size=8, epochs=2, optimizer=SGD, profiled=True):
    x, y, x_test, y_test = data
    model = MLP(64, 10, 10, seed=0)
    trainer = tg.Trainer(
        model, optimizer(model.graph.parameter, lr=0.1), batch_size=batch_size, capture=capture, verbose=False,
        progress=False,
    )
    prof = tg.profile(model.graph)
    if profiled:
        with prof:
            trainer.train(x, y, x_test, y_test, epochs=epochs)
    else:
        trainer.train(x, y, x_test, y_test, epochs=epochs)
    return model, prof


@pytest.mark.parametrize("capture", [False, True])
@pytest.mark.parametrize("batch_size", [1, 8, 7])  # 7: a last, shorter batch gets its own record
def test_counts_equal_the_applications(data, capture, batch_size):
    epochs = 2
    steps = epochs * math.ceil(40 / batch_size)
    _, prof = train(data, capture, batch_size, epochs)
    numbers = prof.to_dict()
    for name, cls in OPS.items():
        row = numbers["by_instance"][name]
        assert row["class"] == cls
        assert row["calls"] == steps + epochs  # a training step each, and each epoch's test prediction
        assert row["backward_calls"] == steps
        assert row["loss_calls"] == (steps if cls == "SoftmaxLoss" else 0)
    assert numbers["by_class"]["Affine"]["calls"] == 2 * (steps + epochs)
    assert numbers["calls"]["SGD.step"]["calls"] == steps
    assert numbers["calls"]["SGD.zero_grad"]["calls"] == steps + epochs  # and once at each epoch's start
    replayed = numbers["by_instance"]["sigmoid_0"]["replayed"]
    if capture:  # each record's first call runs eagerly, and its first replay is checked by an eager run
        records = 1 + (40 % batch_size != 0)
        assert replayed == steps - 2 * records  # (the two test predictions: recorded, then checked eagerly)
        # per replayed step: 4 forwards, a loss, 4 backwards, the optimizer's step and zero_grad
        assert prof.replayed_timings == 11 * replayed
    else:
        assert replayed == 0


@pytest.mark.parametrize("capture", [False, True])
def test_shares_sum_to_the_step(data, capture):
    _, prof = train(data, capture)
    numbers = prof.to_dict()
    shares, seconds = numbers["shares"], numbers["seconds"]
    assert set(shares) == {"ops", "framework", "optimizer", "profiler"}
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-12)
    assert sum(seconds[k] for k in shares) == pytest.approx(numbers["total_seconds"], rel=1e-12)
    assert seconds["ops"] == pytest.approx(seconds["ops_forward"] + seconds["ops_backward"])
    assert all(value >= 0 for value in seconds.values()) and numbers["total_seconds"] == prof.total > 0
    assert seconds["optimizer"] == pytest.approx(sum(c["seconds"] for c in numbers["calls"].values()))
    assert seconds["ops"] == pytest.approx(sum(r["seconds"] for r in numbers["by_class"].values()))
    assert seconds["ops"] == pytest.approx(sum(r["seconds"] for r in numbers["by_instance"].values()))


@pytest.fixture
def clock(monkeypatch):
    """A clock that advances one second per reading: every timing becomes exact."""
    ticks = itertools.count()
    # (tapegrad.profile is the function; its module is tapegrad's submodule of that name)
    monkeypatch.setattr(importlib.import_module("tapegrad.profile"), "perf_counter", lambda: float(next(ticks)))


class Outer(tg.Operation):
    """Applies another op inside its own forward."""

    def __init__(self):
        self.inner = self.graph.get_operation("Tanh")

    def forward(self, ctx, x):
        return self.inner(x).value * 2.0

    def backward(self, ctx, grad):
        return grad * 2.0


def test_times_are_each_ops_own(clock, monkeypatch):
    monkeypatch.setattr(Profile, "calibrate", lambda self: 0.0)  # (the timers cost nothing here)
    g = tg.Graph("nested")
    outer = g.get_operation(Outer)
    with tg.profile(g) as prof:  # reading 0
        outer(np.ones(3))  # outer begins at 1, inner runs 2..3, outer ends at 4
    # exit reads 5
    rows = prof.to_dict()["by_instance"]
    assert rows["outer_0"]["forward_seconds"] == 2.0 and rows["tanh_0"]["forward_seconds"] == 1.0
    assert prof.to_dict()["total_seconds"] == 5.0 and prof.to_dict()["seconds"]["framework"] == 2.0


def test_the_profilers_own_share_is_its_timed_calls_times_their_measured_cost(clock, monkeypatch):
    def run():
        g = tg.Graph("nested")
        outer = g.get_operation(Outer)
        with tg.profile(g) as prof:  # reading 0 (after calibrating)
            outer(np.ones(3))  # readings 1 to 4: the outer op's own 2, the inner one's 1
            g.get_operation("Tanh")(np.ones(3))  # readings 5 and 6: 1
        return prof, prof.to_dict()  # exit: reading 7

    prof, numbers = run()
    # each clock reading takes one second: what a timed call costs beyond what it charges is one reading
    assert prof.cost == 1.0
    assert numbers["timed_calls"] == 3 and numbers["total_seconds"] == 7.0 and numbers["seconds"]["ops"] == 4.0
    assert numbers["seconds"]["profiler"] == 3.0 and numbers["seconds"]["framework"] == 0.0
    monkeypatch.setattr(Profile, "calibrate", lambda self: 0.5)
    _, numbers = run()
    assert numbers["seconds"]["profiler"] == 1.5 and numbers["seconds"]["framework"] == 1.5
    monkeypatch.setattr(Profile, "calibrate", lambda self: 2.0)  # an estimate above the rest is capped
    _, numbers = run()
    assert numbers["seconds"]["profiler"] == 3.0 and numbers["seconds"]["framework"] == 0.0
    assert sum(numbers["shares"].values()) == 1.0


def test_a_profile_covers_its_graph_only():
    mine, other = tg.Graph("mine"), tg.Graph("other")
    a, b = mine.get_operation("Tanh"), other.get_operation("Tanh")
    with tg.profile(mine) as prof:
        a(np.ones(2))
        b(np.ones(2))
        b(np.ones(2))
    assert list(prof.to_dict()["by_instance"]) == ["tanh_0"] and prof.to_dict()["by_class"]["Tanh"]["calls"] == 1
    with tg.profile() as everything:
        a(np.ones(2))
        b(np.ones(2))
    assert sorted(everything.to_dict()["by_instance"]) == ["tanh_0", "tanh_0 (other)"]


def test_a_profile_counts_its_graphs_optimizer_calls_only():
    graphs = [tg.Graph("mine"), tg.Graph("other")]
    steps = []
    for g in graphs:
        affine, loss = g.get_operation("Affine", [2, 2]), g.get_operation("SquareLoss")
        opt = SGD(g.parameter, lr=0.1)

        def step(g=g, affine=affine, loss=loss, opt=opt):
            loss.forward(affine(np.ones((1, 2))))
            loss.loss(np.zeros((1, 2)))
            g.backward()
            opt.step()
            opt.zero_grad()
            g.parameter.clear_grads()

        steps.append(step)
    with tg.profile(graphs[0]) as prof:
        steps[0]()
        steps[1]()
        steps[1]()
    calls = {name: c["calls"] for name, c in prof.to_dict()["calls"].items()}
    assert calls == {"SGD.step": 1, "SGD.zero_grad": 1, "Parameter.clear_grads": 1}


def test_profiling_changes_no_number(data):
    plain, _ = train(data, capture=True, optimizer=Adam, profiled=False)
    profiled, _ = train(data, capture=True, optimizer=Adam)
    eager, _ = train(data, capture=False, optimizer=Adam)
    for name, v in plain.graph.parameter.variable_dict.items():
        assert v.value.tobytes() == profiled.graph.parameter.variable_dict[name].value.tobytes()
        assert v.value.tobytes() == eager.graph.parameter.variable_dict[name].value.tobytes()


def test_the_table_is_sorted_and_agrees_with_the_numbers(data):
    _, prof = train(data, capture=True)
    numbers = prof.to_dict()
    table = prof.table()
    lines = table.splitlines()
    assert lines[1].split()[:4] == ["Name", "Calls", "Replayed", "Forward"]
    rows = [line.split() for line in lines[3:lines.index(lines[0], 3)]]
    op_rows = [r for r in rows if r[0] in numbers["by_class"]]
    assert [r[0] for r in op_rows] == list(numbers["by_class"])  # the most time first
    totals = [numbers["by_class"][r[0]]["seconds"] for r in op_rows]
    assert totals == sorted(totals, reverse=True)
    for r in op_rows:
        assert int(r[1]) == numbers["by_class"][r[0]]["calls"] and int(r[2]) == numbers["by_class"][r[0]]["replayed"]
    assert {r[0] for r in rows if "." in r[0]} == {"SGD.step", "SGD.zero_grad"}
    footer = lines[lines.index(lines[0], 3) + 1:]
    assert footer[0].startswith("Step total (the profiled block):")
    assert [line.split()[0] for line in footer[1:]] == ["ops'", "framework", "optimizer", "the"]
    shown = [float(re.search(r"([\d.]+)%", line)[1]) for line in footer[1:]]
    assert sum(shown) == pytest.approx(100.0, abs=0.25)
    by_instance = prof.table(by="instance")
    assert all(name in by_instance for name in OPS)
    with pytest.raises(tg.ArgumentError, match="by must be 'class' or 'instance'"):
        prof.table(by="op")


def test_one_profiler_at_a_time_and_clear_errors():
    g = tg.Graph()
    with tg.profile(g) as outer:
        with pytest.raises(tg.GraphError, match="another profiler is running"):
            tg.profile(g).__enter__()
        assert events.observer is outer
    assert events.observer is None
    with pytest.raises(tg.InputTypeError, match="expected a Graph, a model with a .graph, or None, got int"):
        tg.profile(3)
    assert tg.profile(MLP(2, 2, 2)).graph.name == "MLP"


def test_a_failing_op_ends_the_block_cleanly_and_errors_read_alike(data):
    class Picky(tg.Operation):
        def forward(self, ctx, x):
            if x.sum() < 0:
                raise ValueError("negative")
            return x

        def backward(self, ctx, grad):
            return grad

    g = tg.Graph("picky")
    op, loss = g.get_operation(Picky), g.get_operation("SquareLoss")

    def step(x, target):
        loss(op(x))
        value = loss.loss(target)
        g.backward()
        return value

    captured = g.capture(step)
    for _ in range(3):
        captured(np.ones(2), np.zeros(2))
    errors = []
    for profiled in (False, True):
        with tg.profile(g) if profiled else contextlib.nullcontext():
            with pytest.raises(tg.OperationError) as info:
                captured(-np.ones(2), np.zeros(2))
            errors.append(str(info.value))
    assert errors[0] == errors[1] and "Picky" in errors[0] and "negative" in errors[0]
    assert events.observer is None


# -- off costs nothing ---------------------------------------------------------------------------------
def test_when_off_no_profiler_is_touched(data, monkeypatch):
    model, prof = train(data, capture=True)  # leaves compiled, observed replay variants behind
    before = prof.to_dict()

    def touched(*args, **kwargs):
        raise AssertionError("a profiler was touched while none runs")

    for name in ("run", "begin", "end", "end_call", "covers", "covers_call", "applied", "loss", "backward", "created"):
        monkeypatch.setattr(Profile, name, touched)
    monkeypatch.setattr(Record, "observed", touched)
    x, y, x_test, y_test = data
    for capture in (True, False):
        trainer = tg.Trainer(
            model, SGD(model.graph.parameter, lr=0.1), batch_size=8, capture=capture, verbose=False, progress=False
        )
        trainer.train(x, y, x_test, y_test, epochs=2)
    assert prof.to_dict()["by_class"] == before["by_class"]


def test_each_event_is_one_test_of_one_global(monkeypatch):
    """Every event the kernel reports (a Variable made, an op's code run, an application, a loss, a
    backward) reads events.observer once; a captured step reads it once per call, its program never."""
    reads = []

    class Counting(types.ModuleType):
        @property
        def observer(self):
            reads.append(1)
            return None

    model = MLP(4, 3, 2, seed=0)
    x, y = np.ones((2, 4)), np.array([0, 1])

    def step(x, y):
        model.forward(x)
        value = model.loss(y)
        model.graph.backward()
        return value

    captured = model.graph.capture(step)
    captured(x, y)
    captured(x, y)  # recorded, verified: later calls replay
    monkeypatch.setattr(events, "__class__", Counting)
    step(x, y)
    # per application: its code run, its output made, the application; the loss: its code, the loss;
    # backward: one read for the walk (its four backward calls share it)
    assert len(reads) == 4 * 3 + 2 + 1
    reads.clear()
    captured(x, y)
    assert len(reads) == 1  # the replay program itself tests nothing
