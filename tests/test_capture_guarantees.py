"""Captured steps are never silently wrong: Python that changes state in the step, the check never
replacing what the user holds, gradients of returned outputs, clipping and schedules, arguments and
returns; and what is asked of the check, of memory and of the generated program.

Every reproducer runs a captured step and an eager twin through many calls and asserts that each call
either equals eager bit for bit (results, parameters and their gradients, optimizer and generator
state) or raises ``CaptureError`` no later than the second call, its eager effects then being the
twin's: never a silent difference, never a raw error (``never_silently_wrong``).
"""

from __future__ import annotations

import collections
import gc
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.errors import CaptureError, OperationError
from tapegrad.optim import SGD, Adam, ExponentialLR, StepLR, clip_grad_norm, clip_grad_value
from test_capture import Counted, Net, assert_same_array, assert_same_graphs, data


def same(a: Any, b: Any, where: str = "result") -> None:
    """``a`` (captured) equals ``b`` (eager) bit for bit: containers of the same types, Variables with
    their values and gradients, floats by their bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} captured, {type(b).__name__} eagerly"
    if isinstance(b, tg.Variable):
        assert_same_array(a.value, b.value)
        ga, gb = a.peek_grad(), b.peek_grad()
        assert (ga is None) == (gb is None), f"{where}'s gradient: {ga is None} captured, {gb is None} eagerly"
        if gb is not None:
            assert_same_array(ga, gb)
    elif isinstance(b, dict):
        assert list(a) == list(b), where
        assert getattr(a, "default_factory", None) == getattr(b, "default_factory", None), where
        for key in b:
            same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), where
        for i, (p, q) in enumerate(zip(a, b)):
            same(p, q, f"{where}[{i}]")
    elif isinstance(b, float):
        assert math.copysign(1.0, a) == math.copysign(1.0, b) and (a == b or (a != a and b != b)), (where, a, b)
    elif isinstance(b, np.ndarray):
        assert_same_array(a, b)
    else:
        assert a == b, (where, a, b)


def same_state(a: tg.Graph, b: tg.Graph, opts: tuple[Any, Any] | None = None) -> None:
    assert_same_graphs(a, b)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.train_state == b.train_state
    if opts is not None:
        sa, sb = opts[0].state_dict(), opts[1].state_dict()
        assert opts[0].lr == opts[1].lr
        same(sa["state"], sb["state"], "optimizer state")


def never_silently_wrong(
    make: Callable[[], tuple[tg.Graph, Callable[..., Any], Any]], calls: list[tuple[Any, ...]], **capture: Any
) -> tuple[list[str], Any]:
    """Run ``make()``'s step captured and its twin's eagerly through ``calls`` (argument tuples; a callable
    item is called to make the argument, once per twin). Each call must equal eager bit for bit, or raise
    CaptureError no later than the second call (then its ``eager_result`` and effects must be eager's).
    Returns each call's outcome ("equal" or "refused") and the captured step."""
    graph, fn, opt = make()
    twin, eager, opt_twin = make()
    counted = Counted(fn)
    step = graph.capture(counted, **capture)
    outcomes = []
    for k, args in enumerate(calls):
        mine = tuple(a() if callable(a) else a for a in args)
        theirs = tuple(a() if callable(a) else a for a in args)
        try:
            result = step(*mine)
        except CaptureError as exc:
            assert k <= 1 or "refused" in outcomes, f"call {k}: refused only after the second call: {exc}"
            result = exc.eager_result
            outcomes.append("refused")
        else:
            outcomes.append("equal")
        expected = eager(*theirs)
        same(result, expected, f"call {k}'s result")
        for m, t in zip(mine, theirs):
            if isinstance(t, tg.Variable):
                same(m, t, f"call {k}'s argument")
        same_state(graph, twin, None if opt is None else (opt, opt_twin))
    return outcomes, step


def batches(n: int, rows: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = data(100, seed=seed)
    starts = [(rows * k) % 95 for k in range(n)]
    return [(x[s : s + rows], y[s : s + rows]) for s in starts]


# -- Python that changes state in the step --------------------------------------------------------------


def test_item1_halving_the_learning_rate_in_the_step_is_never_silently_wrong():
    def make() -> Any:
        net = Net()
        opt = SGD(net.graph.parameter, lr=0.1)

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(x)
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            opt.lr *= 0.5
            return loss

        return net.graph, fn, opt

    outcomes, _ = never_silently_wrong(make, batches(8))
    assert "refused" in outcomes


def test_item1_sibling_changing_a_schedulers_base_rate_in_the_step_is_never_silently_wrong():
    def make() -> Any:
        net = Net()
        opt = SGD(net.graph.parameter, lr=0.1)
        scheduler = StepLR(opt, step_size=2, gamma=0.5)

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(x)
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            scheduler.base_lr *= 0.9
            scheduler.step()
            return loss

        return net.graph, fn, opt

    outcomes, _ = never_silently_wrong(make, batches(8))
    assert "refused" in outcomes


def _eval_inside(whole: bool) -> Any:
    net = Net(dropout=0.5, seed=2)
    opt = SGD(net.graph.parameter, lr=0.2)

    def fn(x: np.ndarray, y: np.ndarray) -> Any:
        net.forward(x)
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        net.graph.eval()
        seen = net.forward(x) if whole else net.dropout.forward(x)
        net.graph.train()
        return loss, seen

    return net.graph, fn, opt


@pytest.mark.parametrize("whole", [False, True], ids=["dropout-alone", "sibling-whole-model"])
def test_item1_an_eval_mode_prediction_inside_the_step_is_replayed_and_equal(whole):
    outcomes, step = never_silently_wrong(lambda: _eval_inside(whole), batches(10))
    assert outcomes == ["equal"] * 10
    assert step.fn.calls == 2  # recorded, checked, then replayed
    assert "graph_eval()" in step.last_record.source and "graph_train()" in step.last_record.source


@pytest.mark.parametrize("attribute", ["dropout-p", "sibling-layernorm-eps"])
def test_item1_changing_an_ops_attribute_in_the_step_is_refused_at_the_first_call(attribute):
    def make() -> Any:
        net = Net(dropout=0.5)
        norm = net.graph.get_operation("LayerNorm", [6])
        opt = SGD(net.graph.parameter, lr=0.1)

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(norm.forward(x))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            if attribute == "dropout-p":
                net.dropout.p *= 0.5
            else:
                norm.eps *= 2.0
            return loss

        return net.graph, fn, opt

    outcomes, _ = never_silently_wrong(make, batches(6))
    assert outcomes == ["refused"] * 6


# -- the check never replaces what the user holds ----------------------------------------------------------


class UsesVariable(tg.Operation):
    """x @ W for a W given to the op (not in the parameter store), or two such factors multiplied."""

    def __init__(self, W: tg.Variable, scale: tg.Variable | None = None) -> None:
        self.Wv = W
        self.scale = scale

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        ctx.save(x)
        out = x @ self.Wv.value
        return out * self.scale.value if self.scale is not None else out

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        (x,) = ctx.saved
        if self.scale is not None:
            self.scale.add_grad((grad * (x @ self.Wv.value)).sum(axis=0))
            grad = grad * self.scale.value
        self.Wv.add_grad(x.T @ grad)
        return grad @ self.Wv.value.T


class OwnWeights:
    """A model whose op holds a Variable the parameter store does not (``m.W``), for the Trainer."""

    input_size, output_size = 6, 3

    def __init__(self, sibling: bool = False) -> None:
        self.graph = tg.Graph("own", seed=0)
        rng = np.random.default_rng(0)
        self.W = tg.Variable(rng.standard_normal((6, 3)) * 0.3, name="W")
        self.scale = tg.Variable(np.ones(3), name="scale") if sibling else None
        self.op = self.graph.get_operation(UsesVariable, [self.W, self.scale])
        self.loss_op = self.graph.get_operation("SoftmaxLoss")

    def forward(self, x: Any) -> Any:
        return self.loss_op.forward(self.op.forward(x))

    def loss(self, y: Any) -> float:
        return self.loss_op.loss(y)


@pytest.mark.parametrize("sibling", [False, True], ids=["sgd", "sibling-two-variables-adam"])
def test_item2_an_op_given_a_variable_keeps_it_and_it_trains_under_the_trainer(sibling):
    x, y = data(60)
    results = []
    for capture in (True, False):
        model = OwnWeights(sibling)
        held = [model.W] + ([model.scale] if sibling else [])
        opt = Adam(held, lr=0.05) if sibling else SGD(held, lr=0.2)
        start = [v.value.copy() for v in held]
        trainer = tg.Trainer(model, opt, batch_size=10, progress=False, verbose=False, capture=capture)
        with warnings.catch_warnings():
            warnings.simplefilter("error", tg.CaptureWarning)
            history = trainer.train(x, y, epochs=3)
        assert model.op.Wv is model.W and (not sibling or model.op.scale is model.scale)
        assert opt.variables[0] is model.W
        assert all(not np.array_equal(a, v.value) for a, v in zip(start, held))  # it trained
        results.append((history.train_loss, [v.value.copy() for v in held]))
        if capture:
            assert trainer._train_step.fn.__self__ is trainer and trainer._train_step.records
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert_same_array(a, b)


class Noise(tg.Operation):
    """Adds normal noise from a generator it keeps: the graph's (``self.rng = self.graph.rng``), or its own."""

    def __init__(self, own: bool = False) -> None:
        self.rng = np.random.default_rng(5) if own else self.graph.rng

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        return x + 0.1 * self.rng.standard_normal(x.shape)

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        return grad


@pytest.mark.parametrize("own", [False, True], ids=["graph-generator", "sibling-own-generator"])
def test_item2_an_op_keeping_a_generator_keeps_it_and_draws_as_eager(own):
    ops = []

    def make() -> Any:
        net = Net(dropout=0.3)
        noise = net.graph.get_operation(Noise, [own])
        ops.append(noise)
        opt = SGD(net.graph.parameter, lr=0.1)

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.loss_op.forward(net.last.forward(noise.forward(net.hidden(x))))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return net.graph, fn, opt

    outcomes, step = never_silently_wrong(make, batches(10))
    assert outcomes == ["equal"] * 10
    captured, twin = ops
    assert (captured.rng is step.graph.rng) is not own
    assert captured.rng.bit_generator.state == twin.rng.bit_generator.state


class Holder(tg.Operation):
    """The identity times two, holding a user object (its ``owner``)."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
        return x * 2.0

    def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
        return grad * 2.0


class Owner:
    """A user's object holding the optimizer (and, for the sibling, the graph and a dict of both)."""


@pytest.mark.parametrize("sibling", [False, True], ids=["optimizer", "sibling-graph-and-dict"])
def test_item2_an_op_holding_a_user_object_keeps_it(sibling):
    held = []

    def make() -> Any:
        net = Net()
        owner = Owner()
        owner.opt = SGD(net.graph.parameter, lr=0.1)
        if sibling:
            owner.graph, owner.both = net.graph, {"opt": owner.opt, "graph": net.graph}
        holder = net.graph.get_operation(Holder, [owner])
        held.append((owner, owner.opt, holder))

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.loss_op.forward(net.last.forward(holder.forward(net.hidden(x))))
            loss = net.loss(y)
            net.graph.backward()
            holder.owner.opt.step()
            holder.owner.opt.zero_grad()
            return loss

        return net.graph, fn, owner.opt

    outcomes, step = never_silently_wrong(make, batches(8))
    assert outcomes == ["equal"] * 8
    owner, opt, holder = held[0]
    assert holder.owner is owner and owner.opt is opt
    if sibling:
        assert owner.graph is step.graph and owner.both["opt"] is opt and owner.both["graph"] is step.graph


# -- gradients of returned op outputs --------------------------------------------------------------


@pytest.mark.parametrize("producer", ["SoftmaxLoss", "sibling-Softmax-used-twice"])
def test_item3_a_returned_output_consumed_by_another_op_carries_eagers_gradient(producer):
    def make() -> Any:
        g = tg.Graph("g", seed=0)
        affine = g.get_operation("Affine", [6, 3])
        first = g.get_operation("SoftmaxLoss" if producer == "SoftmaxLoss" else "Softmax")
        multiply, square = g.get_operation("Multiply"), g.get_operation("SquareLoss")
        target = tg.constant(np.zeros((5, 3)))

        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            p = first.forward(affine.forward(x))
            losses = [first.loss(y)] if producer == "SoftmaxLoss" else []
            q = multiply.forward(p, 2.0) if producer == "SoftmaxLoss" else multiply.forward(p, p)
            square.forward(q)
            losses.append(square.loss(target))
            g.backward()
            g.parameter.clear_grads()
            return losses, p, q

        return g, fn, None

    outcomes, _ = never_silently_wrong(make, batches(8))
    assert outcomes == ["equal"] * 8


@pytest.mark.parametrize("seeded", [False, True], ids=["two-losses", "sibling-explicit-seeds"])
def test_item3_an_output_reused_in_a_second_pass_gets_both_passes_gradients(seeded):
    def make() -> Any:
        g = tg.Graph("g", seed=0)
        affine, tanh = g.get_operation("Affine", [6, 3]), g.get_operation("Tanh")
        first, second = g.get_operation("SquareLoss"), g.get_operation("SquareLoss")

        def fn(x: np.ndarray, t: np.ndarray, s: np.ndarray) -> Any:
            h = affine.forward(x)
            if seeded:
                g.backward(grads={h: s})
                u = tanh.forward(h)
                g.backward(grads={u: t})
                losses: Any = None
            else:
                first.forward(h)
                losses = [first.loss(t)]
                g.backward()
                second.forward(tanh.forward(h))
                losses.append(second.loss(t))
                g.backward()
            g.parameter.clear_grads()
            return losses, h

        return g, fn, None

    rng = np.random.default_rng(1)
    calls = [(x, rng.standard_normal((5, 3)), rng.standard_normal((5, 3))) for x, _ in batches(8)]
    outcomes, _ = never_silently_wrong(make, calls)
    assert outcomes == ["equal"] * 8


# -- clipping and schedules ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["clip_grad_norm", "sibling-clip_grad_value"])
def test_item4_clipping_with_the_replayable_utilities_equals_eager_when_it_starts_late(how):
    """A regression whose targets grow after 20 calls: clipping (max_norm 1.0, clip_value 0.05) starts only
    then; the step returns the norm clip_grad_norm returned."""

    def make() -> Any:
        g = tg.Graph("regression", seed=0)
        first, act, last = g.get_operation("Affine", [6, 5]), g.get_operation("Tanh"), g.get_operation("Affine", [5, 2])
        square = g.get_operation("SquareLoss")
        opt = SGD(g.parameter, lr=0.05)

        def fn(x: np.ndarray, t: np.ndarray) -> Any:
            square.forward(last.forward(act.forward(first.forward(x))))
            loss = square.loss(t)
            g.backward()
            result: Any = None
            if how == "clip_grad_norm":
                result = clip_grad_norm(opt.variables, 1.0)
            else:
                clip_grad_value(opt.variables, 0.05)
            opt.step()
            opt.zero_grad()
            return loss, result

        return g, fn, opt

    rng = np.random.default_rng(4)
    scales = [0.01] * 20 + [30.0] * 12
    calls = [(x, rng.standard_normal((3, 2)) * scale) for (x, _), scale in zip(batches(32, rows=3), scales)]
    outcomes, step = never_silently_wrong(make, calls)
    assert outcomes == ["equal"] * 32
    assert step.fn.calls == 2
    if how == "clip_grad_norm":  # it did start late: small norms first, then clipped ones
        _, fn, _ = make()
        norms = [fn(*args)[1] for args in calls]
        assert max(norms[:20]) < 1.0 < min(norms[20:])


def test_item4_a_replayed_norm_is_a_float_and_computing_with_it_in_the_step_is_refused():
    net = Net()
    opt = SGD(net.graph.parameter, lr=0.3)

    def fn(x: np.ndarray, y: np.ndarray) -> Any:
        net.forward(x)
        loss = net.loss(y)
        net.graph.backward()
        norm = clip_grad_norm(opt.variables, 1.0)
        if norm > 0.5:
            opt.step()
        opt.zero_grad()
        return loss

    with pytest.raises(CaptureError, match="computes with a float a replayable call returned"):
        net.graph.capture(fn)(*batches(1)[0])


@pytest.mark.parametrize("where", ["inside", "outside", "sibling-both"])
def test_item4_schedulers_stepped_inside_and_outside_the_step_equal_eager(where):
    schedulers = []

    def make() -> Any:
        net = Net()
        opt = SGD(net.graph.parameter, lr=0.5, momentum=0.9)
        inner, outer = ExponentialLR(opt, gamma=0.9), StepLR(opt, step_size=3, gamma=0.5)
        schedulers.append((inner, outer))

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(x)
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            if where != "outside":
                inner.step()
            return loss

        return net.graph, fn, opt

    graph, fn, opt = make()
    twin, eager, opt_twin = make()
    step = graph.capture(Counted(fn))
    for k, (x, y) in enumerate(batches(12)):
        assert step(x, y) == eager(x, y)
        if where != "inside" and k % 2:
            for _, outer in schedulers:
                outer.step()
        assert opt.lr == opt_twin.lr
    assert step.fn.calls == 2
    assert_same_graphs(graph, twin)
    assert schedulers[0][0].last_epoch == schedulers[1][0].last_epoch == (12 if where != "outside" else 0)


# -- arguments, returns, seeds and the profiler ------------------------------------------------------------------------


@pytest.mark.parametrize("check", [False, True], ids=["check-False", "sibling-check-True"])
def test_item5_backward_seeding_a_loss_ops_output_inside_a_step(check):
    def make() -> Any:
        g = tg.Graph("g", seed=0)
        affine, loss_op = g.get_operation("Affine", [6, 3]), g.get_operation("SoftmaxLoss")

        def fn(x: np.ndarray, y: np.ndarray, seed: np.ndarray) -> Any:
            p = loss_op.forward(affine.forward(x))
            loss = loss_op.loss(y)
            g.backward(grads={p: seed})
            return loss, p

        return g, fn, None

    rng = np.random.default_rng(2)
    calls = [(x, y, rng.standard_normal((5, 3))) for x, y in batches(6)]
    outcomes, _ = never_silently_wrong(make, calls, check=check)
    assert outcomes == ["equal"] * 6


@pytest.mark.parametrize(
    "loss_grad", [np.float32(0.1), np.float64(0.5), 2, 0.25], ids=["np.float32", "np.float64", "int", "float"]
)
def test_item5_backward_with_a_numpy_scalar_loss_grad_works(loss_grad):
    def make() -> Any:
        net = Net()
        opt = SGD(net.graph.parameter, lr=0.1)

        def fn(x: np.ndarray, y: np.ndarray) -> float:
            net.forward(x)
            loss = net.loss(y)
            net.graph.backward(loss_grad=loss_grad)
            opt.step()
            opt.zero_grad()
            return loss

        return net.graph, fn, opt

    outcomes, _ = never_silently_wrong(make, batches(6))
    assert outcomes == ["equal"] * 6


Pair = collections.namedtuple("Pair", "loss out")


class Tagged(dict):  # type: ignore[type-arg]
    """A dict subclass a step may return."""


@pytest.mark.parametrize(
    "kind",
    ["OrderedDict", "defaultdict", "sibling-namedtuple", "sibling-dict-subclass", "sibling-nested"],
)
def test_item5_a_returned_mapping_keeps_its_type(kind):
    def make() -> Any:
        net = Net()
        opt = SGD(net.graph.parameter, lr=0.1)

        def fn(x: np.ndarray, y: np.ndarray) -> Any:
            out = net.forward(x)
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            if kind == "OrderedDict":
                return collections.OrderedDict([("out", out), ("loss", loss)])
            if kind == "defaultdict":
                made = collections.defaultdict(list)
                made["loss"] = loss
                return made
            if kind == "sibling-namedtuple":
                return Pair(loss, out)
            if kind == "sibling-dict-subclass":
                return Tagged(loss=loss)
            return [collections.OrderedDict(a=(loss, collections.defaultdict(int, b=out)))]

        return net.graph, fn, opt

    outcomes, step = never_silently_wrong(make, batches(6))
    assert outcomes == ["equal"] * 6


def test_item5_arguments_zero_and_negative_zero_make_two_records():
    def make() -> Any:
        g = tg.Graph("g", seed=0)
        affine, mul, sq = g.get_operation("Affine", [6, 3]), g.get_operation("Multiply"), g.get_operation("SquareLoss")
        target = tg.constant(np.zeros((5, 3)))

        def fn(x: np.ndarray, c: float) -> Any:
            out = mul.forward(affine.forward(x), c)
            sq.forward(out)
            loss = sq.loss(target)
            g.backward()
            g.parameter.clear_grads()
            return loss, out

        return g, fn, None

    calls = [(x, c) for (x, _), c in zip(batches(8), [0.0, -0.0] * 4)]
    outcomes, step = never_silently_wrong(make, calls)
    assert outcomes == ["equal"] * 8
    assert len(step.records) == 2


def test_item5_sibling_nan_arguments_share_a_record_and_other_floats_do_not():
    g = tg.Graph("g", seed=0).eval()
    mul = g.get_operation("Multiply")
    fn = Counted(lambda x, c: mul.forward(x, c))
    step = g.capture(fn)
    x = np.array([1.0, -2.0])
    for c in (math.nan, float("nan"), 1.0, 1.0 + 2**-52):
        result, expected = step(x, c).value, mul.forward(x, c).value
        assert result.dtype == expected.dtype and result.tobytes() == expected.tobytes()
    assert len(step.records) == 3


def _profiled_counts(replay: bool, make: Callable[[], tuple[tg.Graph, Callable[..., Any]]], calls: list[Any]) -> Any:
    graph, fn = make()
    run = graph.capture(fn) if replay else fn
    with tg.profile(graph) as prof:
        for args in calls:
            try:
                run(*args)
            except OperationError:
                graph.clear()
    return {name: (row.calls, row.backward_calls, row.loss_calls) for name, row in prof.rows("instance").items()}, prof


def test_item5_the_profiler_counts_ops_inside_a_composite_op_once_per_application(composite_ops):
    softsign2, through_square_loss = composite_ops

    def make() -> Any:
        g = tg.Graph("g", seed=0)
        first, op = g.get_operation("Affine", [4, 3]), g.get_operation(softsign2, [3])
        loss = g.get_operation(through_square_loss)
        opt = SGD(g.parameter, lr=0.1)

        def fn(x: np.ndarray, t: np.ndarray) -> float:
            loss.forward(op(first(x)))
            value = loss.loss(t)
            g.backward()
            opt.step()
            opt.zero_grad()
            return value

        return g, fn

    rng = np.random.default_rng(0)
    calls = [(rng.standard_normal((5, 4)), rng.standard_normal((5, 3))) for _ in range(7)]
    captured, prof = _profiled_counts(True, make, calls)
    eager, _ = _profiled_counts(False, make, calls)
    assert captured == eager
    assert captured["sigmoid_0"] == (7, 0, 0) and captured["multiply_0"] == (7, 0, 0)
    assert captured["softsign2_0"] == (7, 7, 0) and captured["square_loss_0"] == (7, 0, 7)
    assert prof.rows("instance")["affine_0"].replayed == 5  # recorded, checked, then 5 replays


def test_item5_the_profiler_counts_a_replayed_op_call_that_raises():
    class Picky(tg.Operation):
        def forward(self, ctx: Any, x: np.ndarray) -> np.ndarray:
            if np.isnan(x).any():
                raise ValueError("NaN in the input")
            return x * 1.0

        def backward(self, ctx: Any, grad: np.ndarray) -> np.ndarray:
            return grad

    def make() -> Any:
        g = tg.Graph("g").eval()
        picky = g.get_operation(Picky)
        return g, lambda x: picky(x)

    good, bad = np.ones(3), np.array([np.nan, 1.0, 1.0])
    calls = [(good,), (good,), (good,), (bad,), (good,), (bad,)]
    captured, prof = _profiled_counts(True, make, calls)
    eager, _ = _profiled_counts(False, make, calls)
    assert captured == eager == {"picky_0": (6, 0, 0)}
    assert prof.rows("instance")["picky_0"].replayed == 4  # both failing calls were replays


# -- the first replay's check ------------------------------------------------------------------------------


def _touching(what: str) -> Any:
    """A step whose Python changes, where no guard sees it, one kind of state the check compares."""
    net = Net(dropout=0.3)
    opt = SGD(net.graph.parameter, lr=0.1, momentum=0.9)
    weights = net.first.W.value  # read outside the step
    stats = {"seen": 0}
    net.dropout.stats = stats  # an op attribute: a dict changed in place
    state = opt.__dict__

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        net.forward(x)
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        if what == "parameter value":
            np.multiply(weights, 0.5, out=weights)
        elif what == "op attribute":
            stats["seen"] += 1
        elif what == "optimizer attribute":
            state["momentum"] = state["momentum"] * 0.5
        elif what == "generator":
            net.graph.rng.random()
        elif what == "graph attribute":
            vars(net.graph)["name"] = net.graph.name + "!"
        return loss

    return net, fn


@pytest.mark.parametrize(
    ("what", "named"),
    [
        ("parameter value", "affine_0.W"),
        ("op attribute", "Dropout (dropout_0).stats"),
        ("optimizer attribute", "SGD.momentum"),
        ("generator", "random generator"),
        ("graph attribute", "name"),
    ],
)
def test_the_check_compares_everything_either_run_could_change(what, named):
    net, fn = _touching(what)
    step = net.graph.capture(fn)
    x, y = data(10)
    step(x[:5], y[:5])
    with pytest.raises(CaptureError, match="the first replay of this step differs from an eager run") as info:
        step(x[5:], y[5:])
    assert named in str(info.value)


def _held(graph: tg.Graph, opt: Any, extra: list[Any]) -> list[Any]:
    """Everything a user may hold: the graph, its parameter store and generator, every op and what its
    attributes hold, every parameter Variable, the optimizer and its list, and ``extra``."""
    held = [graph, graph.parameter, graph.rng, graph.tape, opt, opt.variables, *extra]
    for op in graph.operations.values():
        held.append(op)
        held.extend(v for v in vars(op).values() if not isinstance(v, (int, float, str, bool, type(None))))
    held.extend(graph.parameter)
    return held


def test_the_check_never_replaces_what_the_user_holds():
    net = Net(dropout=0.3)
    noise = net.graph.get_operation(Noise)
    owner = Owner()
    opt = Adam(net.graph.parameter, lr=0.01)
    owner.opt = opt
    holder = net.graph.get_operation(Holder, [owner])
    scheduler = ExponentialLR(opt, 0.9)
    given = tg.Variable(np.ones((5, 6)), name="given")
    constant = tg.constant(np.zeros((5, 6)))
    add = net.graph.get_operation("Add")

    def fn(v: tg.Variable, y: np.ndarray) -> float:
        h = holder.forward(noise.forward(net.hidden(add.forward(v, constant))))
        net.loss_op.forward(net.last.forward(h))
        loss = net.loss(y)
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        scheduler.step()
        return loss

    before = _held(net.graph, opt, [owner, scheduler, given, constant, holder.owner, noise.rng, scheduler.optimizer])
    ids = [id(obj) for obj in before]
    step = net.graph.capture(fn)
    for x, y in batches(5):
        given.value[...] = x
        step(given, y)
        after = _held(net.graph, opt, [owner, scheduler, given, constant, holder.owner, noise.rng, scheduler.optimizer])
        assert [id(obj) for obj in after] == ids
    assert step.last_record.verified and noise.rng is net.graph.rng and owner.opt is opt
    assert given.peek_grad() is not None


# -- memory and the program ---------------------------------------------------------------------------------


def _reachable_batch_arrays(roots: list[Any], batch: np.ndarray, allowed: list[Any]) -> list[str]:
    """Arrays reachable from ``roots`` (through gc.get_referents) that share memory with ``batch`` or have
    its leading size, other than ``allowed`` (parameters and their gradients)."""
    allowed_ids = {id(a) for a in allowed if a is not None}
    seen, stack, found = set(), list(roots), []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type) or type(obj).__name__ == "module":
            continue
        seen.add(id(obj))
        batch_sized = isinstance(obj, np.ndarray) and obj.ndim > 0 and obj.shape[0] == len(batch)
        if isinstance(obj, np.ndarray) and id(obj) not in allowed_ids and (batch_sized or np.shares_memory(obj, batch)):
            found.append(f"{obj.dtype}{obj.shape}")
        stack.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("model", ["mlp", "dropout-adam"])
def test_after_a_replayed_call_no_array_of_the_batch_is_reachable(model):
    from tapegrad.models import MLP

    if model == "mlp":
        net: Any = MLP(64, 30, 10, seed=0)
        opt: Any = SGD(net.graph.parameter, lr=0.3)
    else:
        net = Net(64, 30, 10, dropout=0.2)
        opt = Adam(net.graph.parameter, lr=0.01)

    def fn(x: np.ndarray, y: np.ndarray) -> float:
        net.forward(tg.Variable(x))
        loss = net.loss(tg.Variable(y))
        net.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step = net.graph.capture(fn)
    rng = np.random.default_rng(0)
    for k in range(4):
        x, y = rng.standard_normal((2000, 64)), rng.integers(0, 10, 2000)
        step(x, y)
        allowed = [v.value for v in net.graph.parameter] + [v.peek_grad() for v in net.graph.parameter]
        for batch in (x, y):
            assert _reachable_batch_arrays([step, net, opt], batch, allowed) == [], f"call {k}"
        del x, y
    assert step.last_record.verified


def test_the_generated_program_reads_like_the_model():
    from tapegrad.models import MLP

    model = MLP(64, 30, 10, seed=0)
    opt = SGD(model.graph.parameter, lr=0.3)

    @model.graph.capture
    def train_step(x: np.ndarray, y: np.ndarray) -> float:
        model.forward(tg.Variable(x))
        loss = model.loss(tg.Variable(y))
        model.graph.backward()
        opt.step()
        opt.zero_grad()
        return loss

    rng = np.random.default_rng(0)
    for _ in range(3):
        train_step(rng.standard_normal((4, 64)), rng.integers(0, 10, 4))
    (key,) = train_step.records
    source = train_step.records[key].source
    lines = source.splitlines()
    assert lines[0] == "def replay(x, y):"
    ops = [("affine_0", "Affine"), ("sigmoid_0", "Sigmoid"), ("affine_1", "Affine"), ("softmax_loss_0", "SoftmaxLoss")]
    for op, cls in ops:
        forward = [line for line in lines if f"= {op}_forward({op}_ctx" in line]
        assert len(forward) == 1 and forward[0].endswith(f"  # {cls}"), (op, source)
        backward = [line for line in lines if f"{op}_backward({op}_ctx" in line]
        assert len(backward) == 1 and backward[0].endswith(f"  # {cls}"), (op, source)
    assert "softmax_loss_0_loss(softmax_loss_0_ctx, y)" in source
    stripped = [line.strip() for line in lines]
    assert "sgd_step()" in stripped and "sgd_zero_grad()" in stripped
    assert "return loss0" in source
    for cryptic in ("OBJ", "F2(", "M21(", "OP3"):
        assert cryptic not in source


def test_a_refused_reproducer_and_its_fix_side_by_side():
    """The README's branch on ``x[0, 10] > 0.3``: refused at the first call; passing the condition as an
    argument captures both branches, one record each, equal to eager."""
    x_all, y_all = data(40, n_in=12)

    def make() -> Any:
        net = Net(n_in=12)
        net.extra = net.graph.get_operation("Sigmoid")
        opt = SGD(net.graph.parameter, lr=0.3)

        def body(x: np.ndarray, y: np.ndarray, use_tanh: bool) -> float:
            h = net.first.forward(x)
            h = net.act.forward(h) if use_tanh else net.extra.forward(h)
            net.loss_op.forward(net.last.forward(h))
            loss = net.loss(y)
            net.graph.backward()
            opt.step()
            opt.zero_grad()
            return loss

        return net, body

    net, body = make()
    refused = net.graph.capture(lambda x, y: body(x, y, x[0, 10] > 0.3))
    with pytest.raises(CaptureError, match=r"the step indexes step argument 0 \(\[\(0, 10\)\]\)"):
        refused(x_all[:4], y_all[:4])
    (net, body), (twin, eager) = make(), make()
    step = net.graph.capture(Counted(body))
    for k in range(10):
        x, y = x_all[4 * k : 4 * k + 4], y_all[4 * k : 4 * k + 4]
        use_tanh = bool(x[0, 10] > 0.3)  # outside the step
        assert step(x, y, use_tanh) == eager(x, y, use_tanh)
    assert len(step.records) == 2 and step.fn.calls == 4
    assert_same_graphs(net.graph, twin.graph)
