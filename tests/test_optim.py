"""tapegrad.optim: optimizers, clipping and schedules against values computed here, their state, their
refusals, the all-or-nothing step and its memory. (Against PyTorch itself: torch_tests/test_optim_torch.py.)"""

from __future__ import annotations

import copy
import math
import pickle
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tapegrad as tg
from tapegrad import optim
from tapegrad.models import MLP
from tapegrad.optim import (
    SGD,
    Adam,
    AdamW,
    CosineAnnealingLR,
    ExponentialLR,
    LRScheduler,
    Optimizer,
    StepLR,
    clip_grad_norm,
    clip_grad_value,
)

SHAPES = [(4, 3), (3,), ()]


def variables(seed: int = 0, shapes: list[tuple[int, ...]] = SHAPES, dtype: Any = np.float64) -> list[tg.Variable]:
    rng = np.random.default_rng(seed)
    return [tg.Variable(rng.standard_normal(s).astype(dtype), name=f"p{i}") for i, s in enumerate(shapes)]


def gradient_schedule(steps: int, shapes: list[tuple[int, ...]] = SHAPES, seed: int = 1) -> list[list[Any]]:
    """Per step, per Variable: a gradient, or None (nothing arrived). Among them: steps with no gradient,
    gradients that are exactly zero, tiny ones (1e-8), and ones with some entries exactly zero."""
    rng = np.random.default_rng(seed)
    schedule = []
    for k in range(steps):
        grads: list[Any] = []
        for i, shape in enumerate(shapes):
            kind = (k + 2 * i) % 9
            g = rng.standard_normal(shape)
            if kind == 3:
                grads.append(None)
                continue
            if kind == 5:
                g = np.zeros(shape)
            elif kind in (1, 7):
                g = g * 1e-8
            elif kind == 8 and g.ndim:
                g[rng.random(shape) < 0.5] = 0.0
            grads.append(g)
        schedule.append(grads)
    return schedule


def run(optimizer: Optimizer, schedule: list[list[Any]]) -> None:
    for grads in schedule:
        optimizer.zero_grad()
        for v, g in zip(optimizer.variables, grads):
            if g is not None:
                v.add_grad(g.astype(v.dtype))
        optimizer.step()


def assert_close(actual: list[tg.Variable], expected: list[np.ndarray], tol: float = 1e-12) -> None:
    for v, e in zip(actual, expected):
        np.testing.assert_allclose(v.value, e, rtol=0, atol=tol)


# -- each optimizer against the formulas, computed here ------------------------------------------------------


def textbook_sgd(values, schedule, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    values = [np.array(v, dtype=float) for v in values]
    buffers: list[Any] = [None] * len(values)
    for grads in schedule:
        for i, g in enumerate(grads):
            if g is None:
                continue
            d = g + weight_decay * values[i]
            if momentum:
                buffers[i] = d.copy() if buffers[i] is None else momentum * buffers[i] + (1 - dampening) * d
                d = d + momentum * buffers[i] if nesterov else buffers[i]
            values[i] = values[i] - lr * d
    return values


def textbook_adam(values, schedule, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False):
    """Algorithm 1 of Kingma & Ba: m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t), value -= lr * m_hat /
    (sqrt(v_hat) + eps), t counting the steps where the Variable had a gradient."""
    b1, b2 = betas
    values = [np.array(v, dtype=float) for v in values]
    m = [np.zeros_like(v) for v in values]
    v2 = [np.zeros_like(v) for v in values]
    top = [np.zeros_like(v) for v in values]
    t = [0] * len(values)
    for grads in schedule:
        for i, g in enumerate(grads):
            if g is None:
                continue
            t[i] += 1
            if decoupled:
                values[i] = values[i] * (1 - lr * weight_decay)
            else:
                g = g + weight_decay * values[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * g * g
            top[i] = np.maximum(top[i], v2[i])
            m_hat = m[i] / (1 - b1 ** t[i])
            v_hat = (top[i] if amsgrad else v2[i]) / (1 - b2 ** t[i])
            values[i] = values[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return values


SGD_SETTINGS = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 0.05},
    {"momentum": 0.8, "dampening": 0.5, "weight_decay": 0.05},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
]


@pytest.mark.parametrize("settings_", SGD_SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "plain")
def test_sgd_equals_the_formula_over_many_steps(settings_):
    schedule = gradient_schedule(150)
    start = [v.value.copy() for v in variables()]
    optimizer = SGD(variables(), lr=0.05, **settings_)
    run(optimizer, schedule)
    assert_close(optimizer.variables, textbook_sgd(start, schedule, lr=0.05, **settings_))


ADAM_SETTINGS = [
    (Adam, {}),
    (Adam, {"weight_decay": 0.1}),
    (Adam, {"amsgrad": True}),
    (Adam, {"betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.02, "amsgrad": True}),
    (AdamW, {}),
    (AdamW, {"weight_decay": 0.3, "amsgrad": True}),
]


@pytest.mark.parametrize(("cls", "settings_"), ADAM_SETTINGS, ids=lambda s: getattr(s, "__name__", None) or str(s))
def test_adam_and_adamw_equal_algorithm_1_over_many_steps(cls, settings_):
    schedule = gradient_schedule(200)
    start = [v.value.copy() for v in variables()]
    optimizer = cls(variables(), lr=0.01, **settings_)
    run(optimizer, schedule)
    decay = settings_.get("weight_decay", 0.01 if cls is AdamW else 0.0)
    expected = textbook_adam(start, schedule, lr=0.01, decoupled=cls is AdamW, **{**settings_, "weight_decay": decay})
    assert_close(optimizer.variables, expected)
    counts = [sum(grads[i] is not None for grads in schedule) for i in range(len(SHAPES))]
    assert [entry["step"] for entry in optimizer.state_dict()["state"]] == counts


def test_the_adam_reproducer_of_issue_21():
    """One parameter 1.0, gradient 1e-8, one step: lr * m_hat / (sqrt(v_hat) + eps) = 1e-3 * 1e-8 / 2e-8."""
    w = tg.Variable(np.array([1.0]))
    w.add_grad(np.array([1e-8]))
    Adam([w]).step()
    assert 1.0 - w.value[0] == pytest.approx(5.0e-4, rel=1e-12)


def test_closed_forms_for_a_constant_gradient():
    """SGD with momentum m: after T steps of gradient g, value = -lr g sum_t (1 - m^t) / (1 - m). Adam:
    m_hat = g and v_hat = g^2 at every step, so each step moves lr g / (|g| + eps), whatever skipped steps
    came between (the step count is the Variable's own)."""
    w = tg.Variable(np.zeros(2))
    sgd = SGD([w], lr=0.1, momentum=0.5)
    for _ in range(20):
        w.add_grad(np.array([1.0, -2.0]))
        sgd.step()
        sgd.zero_grad()
    factor = sum((1 - 0.5**t) / (1 - 0.5) for t in range(1, 21))
    np.testing.assert_allclose(w.value, -0.1 * np.array([1.0, -2.0]) * factor, rtol=1e-13)

    a, b = tg.Variable(np.zeros(2)), tg.Variable(np.zeros(()))
    adam = Adam([a, b], lr=0.01)
    for k in range(30):
        a.add_grad(np.array([3.0, -1e-3]))
        if k % 3 == 0:
            b.add_grad(np.array(2.0))
        adam.step()
        adam.zero_grad()
    np.testing.assert_allclose(
        a.value, -30 * 0.01 * np.array([3.0, -1e-3]) / (np.array([3.0, 1e-3]) + 1e-8), rtol=1e-12
    )
    np.testing.assert_allclose(b.value, -10 * 0.01 * 2.0 / (2.0 + 1e-8), rtol=1e-12)
    assert [s["step"] for s in adam.state_dict()["state"]] == [30, 10]


def test_a_zero_gradient_is_a_step_and_no_gradient_is_none():
    """A gradient of zeros is applied (weight decay acts, Adam's count advances); a Variable whose
    gradient is None (nothing arrived since zero_grad) is left alone entirely."""
    for make in (lambda p: SGD(p, lr=0.1, weight_decay=0.5), lambda p: Adam(p, lr=0.1, weight_decay=0.5), AdamW):
        zero, none = tg.Variable(np.ones(3)), tg.Variable(np.ones(3))
        optimizer = make([zero, none])
        zero.add_grad(np.zeros(3))
        optimizer.step()
        assert (zero.value < 1).all() and (none.value == 1).all()
        state = optimizer.state_dict()["state"]
        assert state[1] in ({}, {"step": 0})


def test_sgd_and_adam_update_trainable_variables_only():
    for make in (lambda p: SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01), lambda p: Adam(p, lr=0.1)):
        g = tg.Graph()
        w = g.get_variable("w", (3,), init="ones")
        frozen = g.get_variable("frozen", (3,), init="ones", trainable=False)
        labels = tg.Variable(np.arange(3))  # an integer Variable: never a gradient, never changed
        opt = make([*g.parameter, labels])
        for v in (w, frozen):
            v.grad = np.ones(3)
        opt.step()
        assert (w.value < 1).all() and (frozen.value == 1).all() and (labels.value == np.arange(3)).all()
        opt.zero_grad()
        assert not w.grad.any()


def test_sgd_momentum_matches_the_textbook_update():
    g = tg.Graph()
    w = g.get_variable("w", (1,), init="zeros")
    opt = SGD(g.parameter, lr=0.5, momentum=0.9)
    for _ in range(2):
        w.grad = np.ones(1)
        opt.step()
        opt.zero_grad()
    assert w.value[0] == pytest.approx(-0.5 * 1 - 0.5 * 1.9)


def test_float32_parameters_stay_float32_and_follow_the_formula():
    schedule = gradient_schedule(50)
    start = variables(dtype=np.float32)
    expected = textbook_adam([v.value.astype(float) for v in start], schedule, lr=0.01, weight_decay=0.1)
    optimizer = Adam(start, lr=0.01, weight_decay=0.1)
    run(optimizer, schedule)
    assert all(v.dtype == np.float32 for v in optimizer.variables)
    assert all(
        a.dtype == np.float32 for s in optimizer.state_dict()["state"] for a in s.values() if isinstance(a, np.ndarray)
    )
    assert_close(optimizer.variables, expected, tol=1e-5)


def test_a_gradient_shared_with_its_maker_is_never_written_into():
    """Variable.add_grad keeps the first contribution by reference: an optimizer, and clipping, must
    not write into it."""
    grads = [np.full(3, 2.0), np.full(3, 2.0)]
    a, b = tg.Variable(np.ones(3)), tg.Variable(np.ones(3))
    for make in (
        lambda p: SGD(p, 0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
        lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.5),
        lambda p: Adam(p, weight_decay=0.1),
        AdamW,
    ):
        optimizer = make([a, b])
        for _ in range(3):
            a.add_grad(grads[0])
            b.add_grad(grads[1])
            clip_grad_norm([a, b], 0.5)
            a.add_grad(np.zeros(3))  # (a's gradient is now its own array again)
            clip_grad_value([a, b], 0.1)
            optimizer.step()
            optimizer.zero_grad()
        assert (grads[0] == 2.0).all() and (grads[1] == 2.0).all()


# -- what the Optimizer takes ----------------------------------------------------------------------------


def test_an_optimizer_takes_a_store_a_model_a_dict_a_list_or_one_variable():
    model = MLP(4, 3, 2, seed=0)
    store = model.graph.parameter
    expected = list(store.variable_dict.values())
    for source in (store, model, model.graph, store.variable_dict, expected, iter(expected), tuple(expected)):
        assert SGD(source, lr=0.3).variables == expected
    assert Adam(expected[0], 0.1).variables == [expected[0]]
    optimizer = Adam(store, 0.01)  # as the CLI and tapegrad.sklearn make them
    assert optimizer.lr == 0.01 and optimizer.trainable == expected


def test_variables_assigned_later_keep_the_state_of_those_that_stay():
    """Fine-tuning: a new head joins, an old one leaves; a Variable that stays keeps its state."""
    a, b, c = variables()
    optimizer = Adam([a, b], 0.01)
    run(optimizer, [[np.ones(a.shape), np.ones(b.shape)]] * 3)
    kept = optimizer.state_dict()["state"][1]
    optimizer.variables = [c, b]
    state = optimizer.state_dict()["state"]
    assert state[0] == {"step": 0} and state[1]["step"] == 3 and (state[1]["exp_avg"] == kept["exp_avg"]).all()
    with pytest.raises(tg.ArgumentError, match=r"Adam: 'p2' is given twice \(positions 0 and 1\)"):
        optimizer.variables = [c, c]


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda p: Adam(p, eps=0.0), tg.ArgumentError, r"Adam: eps must be above 0"),
        (lambda p: Adam(p, betas=(0.9, 1.0)), tg.ArgumentError, r"betas\[1\] must be in \[0, 1\)"),
        (lambda p: SGD(p, lr=0.0), tg.ArgumentError, r"SGD: lr must be above 0, got 0.0"),
        (lambda p: SGD(p, lr=float("nan")), tg.ArgumentError, r"SGD: lr must be above 0, got nan"),
        (lambda p: SGD(p, lr="0.1"), tg.InputTypeError, r"SGD: lr must be a number, got str"),
        (lambda p: SGD(p, lr=0.1, momentum=1.0), tg.ArgumentError, r"momentum must be in \[0, 1\)"),
        (lambda p: SGD(p, 0.1, dampening=1.5), tg.ArgumentError, r"SGD: dampening must be in \[0, 1\], got 1.5"),
        (lambda p: SGD(p, 0.1, weight_decay=-1), tg.ArgumentError, r"SGD: weight_decay must be at least 0, got -1"),
        (
            lambda p: SGD(p, 0.1, nesterov=True),
            tg.ArgumentError,
            r"SGD: nesterov=True needs a momentum above 0 and dampening 0, got momentum=0 and dampening=0",
        ),
        (
            lambda p: SGD(p, 0.1, momentum=0.9, dampening=0.1, nesterov=True),
            tg.ArgumentError,
            r"dampening 0, got momentum=0.9 and dampening=0.1",
        ),
        (
            lambda p: SGD(p, 0.1, nesterov="yes"),
            tg.InputTypeError,
            r"SGD: nesterov must be True or False, got str 'yes'",
        ),
        (lambda p: Adam(p, betas=0.9), tg.InputTypeError, r"Adam: betas must be a pair \(beta1, beta2\), got 0.9"),
        (lambda p: Adam(p, amsgrad=1), tg.InputTypeError, r"Adam: amsgrad must be True or False, got int 1"),
        (
            lambda p: AdamW(p, weight_decay=None),
            tg.InputTypeError,
            r"AdamW: weight_decay must be a number, got NoneType",
        ),
        (
            lambda p: SGD(None, 0.1),
            tg.InputTypeError,
            r"SGD: expected the Variables to use "
            r"\(a Parameter store, a model with .graph, a dict, or a list of Variables\), got NoneType",
        ),
        (lambda p: Adam("w"), tg.InputTypeError, r"Adam: expected the Variables to use .*got str"),
        (
            lambda p: SGD([], 0.1),
            tg.ArgumentError,
            r"SGD: got no Variables to optimize \(an empty list or Parameter store\)",
        ),
        (lambda p: SGD(tg.Graph().parameter, 0.1), tg.ArgumentError, r"SGD: got no Variables to optimize"),
        (
            lambda p: SGD([np.ones(2)], 0.1),
            tg.InputTypeError,
            r"SGD: expected Variables, got ndarray at position 0 \(wrap arrays in tg.Variable\)",
        ),
        (
            lambda p: SGD([*p, p["affine_0.W"]], 0.1),
            tg.ArgumentError,
            r"SGD: 'affine_0.W' is given twice \(positions 0 and 4\); a step would update it twice",
        ),
    ],
)
def test_optimizer_hyperparameters_are_checked_with_errors_that_say_what_happened(make, error, match):
    model = MLP(4, 3, 2)
    with pytest.raises(error, match=match):
        make(model.graph.parameter)
    assert not issubclass(tg.ArgumentError, TypeError)  # a bad value is not a type error


# -- all or nothing ----------------------------------------------------------------------------------------


def snapshot(optimizer: Optimizer) -> tuple[list[np.ndarray], Any]:
    return [v.value.copy() for v in optimizer.variables], pickle.dumps(optimizer.state_dict())


def assert_unchanged(optimizer: Optimizer, before: tuple[list[np.ndarray], Any]) -> None:
    values, state = before
    for v, value in zip(optimizer.variables, values):
        assert v.value.tobytes() == value.tobytes()
    assert pickle.dumps(optimizer.state_dict()) == state


MAKERS = {
    "sgd": lambda p: SGD(p, 0.1),
    "sgd-nesterov-decay": lambda p: SGD(p, 0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    "adam-decay-amsgrad": lambda p: Adam(p, 0.01, weight_decay=0.1, amsgrad=True),
    "adamw": lambda p: AdamW(p, 0.01),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_gradient_is_refused_before_anything_changes(name, bad):
    optimizer = MAKERS[name](variables())
    run(optimizer, gradient_schedule(3))  # there is state by now
    for v in optimizer.variables:
        v.add_grad(np.ones(v.shape))
    last = optimizer.variables[0]
    grad = np.ones(last.shape)
    grad[2, 1] = bad
    last.clear_grad()
    last.add_grad(grad)
    before = snapshot(optimizer)
    with pytest.raises(
        tg.NonFiniteError,
        match=rf"{type(optimizer).__name__}.step: the gradient of 'p0' holds {bad} at \[2, 1\]; "
        r"no parameter or optimizer state was changed",
    ):
        optimizer.step()
    assert_unchanged(optimizer, before)


@pytest.mark.parametrize("errors", ["raise", "warn", "ignore"])
def test_an_update_that_would_overflow_is_refused_whatever_numpys_errstate(errors):
    """lr 1e308 with gradients of about 2: lr * grad overflows. The previous step's state stays."""
    cases = [
        (SGD(variables(), 1e308), 2.0),
        (SGD(variables(), 1e300, momentum=0.9), 1e10),
        (Adam(variables(), 0.01), 1e200),  # its square overflows
        (Adam(variables(), 1e308), 1.0),  # lr / (1 - beta1) is infinite
        (AdamW(variables(), 1e-3, eps=1e-320), 1e300),
    ]
    for optimizer, scale in cases:
        for v in optimizer.variables:
            v.add_grad(np.full(v.shape, scale * 1.0001))
        before = snapshot(optimizer)
        with (
            np.errstate(all=errors),
            pytest.raises(
                tg.NonFiniteError,
                match=r"\.step: updating 'p\d' would overflow float64 .*no parameter or optimizer state was changed",
            ),
        ):
            optimizer.step()
        assert_unchanged(optimizer, before)


def test_huge_gradients_that_do_not_overflow_are_applied_exactly():
    """Gradients of 1e200 with lr 1e-300: the sum of squares overflows, the update does not. The step
    takes the careful way and applies the same numbers as any other step would."""
    schedule = [[np.full(s, 1e200) * (1 + k) for s in SHAPES] for k in range(3)]
    start = [v.value.copy() for v in variables()]
    with np.errstate(all="raise"):
        optimizer = SGD(variables(), 1e-300, momentum=0.5)
        run(optimizer, schedule)
    assert_close(optimizer.variables, textbook_sgd(start, schedule, 1e-300, momentum=0.5), tol=1e-15)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(MAKERS)),
    grad_exponent=st.integers(-300, 308),
    lr_exponent=st.integers(-300, 308),
    value_exponent=st.integers(-10, 300),
)
def test_a_step_either_applies_or_changes_nothing(kind, grad_exponent, lr_exponent, value_exponent):
    """Under numpy's raising errstate (as the Trainer trains), over magnitudes from tiny to enormous: a
    step raises NonFiniteError leaving everything as it was, or applies with every number finite."""
    optimizer = MAKERS[kind](variables())
    optimizer.lr = 10.0**lr_exponent
    for v in optimizer.variables:
        v.value *= 10.0**value_exponent
        v.add_grad(np.full(v.shape, 1.5 * 10.0**grad_exponent))
    before = snapshot(optimizer)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        try:
            optimizer.step()
        except tg.NonFiniteError:
            assert_unchanged(optimizer, before)
            return
    assert all(np.isfinite(v.value).all() for v in optimizer.variables)
    state = optimizer.state_dict()["state"]
    assert all(np.isfinite(a).all() for s in state for a in s.values() if isinstance(a, np.ndarray))


def test_the_cheap_check_suffices_in_ordinary_training(monkeypatch):
    """Typical settings, float64 and float32: no step needs the careful rehearsal of its updates."""
    rehearsed = []
    monkeypatch.setattr(optim._ElementwiseOptimizer, "_rehearse", lambda self, grads: rehearsed.append(self))
    for dtype in (np.float64, np.float32):
        for make in (
            *MAKERS.values(),
            lambda p: SGD(p, 0.5, momentum=0.999, weight_decay=0.1),
            lambda p: Adam(p, 0.1, eps=1e-12, weight_decay=0.5),
        ):
            run(
                make(variables(dtype=dtype)),
                [[g if g is None else g * 100 for g in gs] for gs in gradient_schedule(200)],
            )
    assert rehearsed == []


@pytest.mark.parametrize(
    "make, temporaries",
    [
        (lambda p: SGD(p, 1e-3), 1),
        (lambda p: SGD(p, 1e-3, momentum=0.9, dampening=0.1, weight_decay=1e-4), 1),
        (lambda p: SGD(p, 1e-3, momentum=0.9, nesterov=True), 1),
        (lambda p: SGD(p, 1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4), 2),
        (lambda p: Adam(p, 1e-3), 1),
        (lambda p: Adam(p, 1e-3, weight_decay=1e-4, amsgrad=True), 1),
        (lambda p: AdamW(p, 1e-3), 1),
    ],
)
@pytest.mark.parametrize("careful", [False, True], ids=["checked", "rehearsed"])
def test_a_step_holds_at_most_the_largest_parameters_size_of_extra_memory(make, temporaries, careful):
    """784-512-512-10 sized parameters (the previous steps held every update at once: 5 MiB). Measured
    on a second step (the state exists); ``careful``: gradients so large the updates are rehearsed on
    copies first, a slice at a time. Nesterov momentum with weight decay holds two temporaries."""
    shapes = [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]
    params = variables(shapes=shapes)
    scale = 1e155 if careful else 1.0  # (1e152: the sum of squares overflows, the squares do not)
    optimizer = make(params)
    for _ in range(2):
        optimizer.zero_grad()
        for v in params:
            v.add_grad(np.full(v.shape, 1e-3 * scale))
        if careful:
            optimizer.lr = 1e-170
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        optimizer.step()
        peak = tracemalloc.get_traced_memory()[1] - start
        tracemalloc.stop()
    largest = max(v.value.nbytes for v in params)
    assert peak <= temporaries * largest + 64 * 1024, f"{peak / 2**20:.2f} MiB against {largest / 2**20:.2f} MiB"


# -- state -------------------------------------------------------------------------------------------------


def plain(obj: Any) -> bool:
    """Numbers, strings, None, arrays, and lists, tuples and dicts of them."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and not k.startswith("_") and plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(plain(x) for x in obj)
    return obj is None or isinstance(obj, (bool, int, float, str, np.ndarray))


ALL = {
    **MAKERS,
    "sgd-momentum-dampening": lambda p: SGD(p, 0.1, momentum=0.5, dampening=0.5),
    "adam": lambda p: Adam(p, 0.01),
    "adamw-amsgrad": lambda p: AdamW(p, 0.01, amsgrad=True),
}


def test_state_dicts_have_public_names_and_plain_data():
    adam = Adam(variables(), 0.01, amsgrad=True)
    run(adam, gradient_schedule(4))
    state = adam.state_dict()
    assert plain(state)
    assert state["optimizer"] == "Adam"
    assert state["hyperparameters"] == {
        "lr": 0.01,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.0,
        "amsgrad": True,
    }
    assert state["variables"] == [{"name": f"p{i}", "shape": s, "dtype": "float64"} for i, s in enumerate(SHAPES)]
    assert [sorted(s) for s in state["state"]] == [["exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"]] * 3
    sgd = SGD(variables(), 0.1, momentum=0.9)
    assert sgd.state_dict()["state"] == [{}, {}, {}]
    run(sgd, gradient_schedule(1))
    assert [sorted(s) for s in sgd.state_dict()["state"]] == [["momentum_buffer"]] * 3
    assert plain(sgd.state_dict())
    # a copy: later steps do not change it
    before = pickle.dumps(state)
    run(adam, gradient_schedule(2))
    assert pickle.dumps(state) == before


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("interrupt", [0, 1, 7])
def test_a_run_resumed_from_a_state_dict_goes_on_bit_for_bit(name, interrupt):
    """Interrupted after ``interrupt`` steps: the state dict (through pickle, as to a file) and the
    parameters go to a fresh optimizer over fresh Variables; both runs then end in the same bits."""
    schedule = gradient_schedule(25)
    whole = ALL[name](variables())
    run(whole, schedule)

    first = ALL[name](variables())
    run(first, schedule[:interrupt])
    saved = pickle.loads(pickle.dumps((first.state_dict(), [v.value for v in first.variables])))
    fresh = variables(seed=99)
    for v, value in zip(fresh, saved[1]):
        v.value[...] = value
    resumed = ALL[name](fresh)
    resumed.load_state_dict(saved[0])
    run(resumed, schedule[interrupt:])
    for a, b in zip(whole.variables, resumed.variables):
        assert a.value.tobytes() == b.value.tobytes()
    assert pickle.dumps(whole.state_dict()) == pickle.dumps(resumed.state_dict())


def test_load_state_dict_copies_what_it_loads():
    a = Adam(variables(), 0.01)
    run(a, gradient_schedule(2))
    state = a.state_dict()
    kept = pickle.dumps(state)
    b = Adam(variables(), 0.01)
    b.load_state_dict(state)
    run(b, gradient_schedule(3))
    assert pickle.dumps(state) == kept


def test_a_resumed_schedule_may_have_brought_lr_to_zero():
    optimizer = SGD(variables(), 0.1, momentum=0.9)
    schedule = CosineAnnealingLR(optimizer, T_max=2)
    schedule.step()
    schedule.step()
    assert optimizer.lr == 0.0
    fresh = SGD(variables(), 0.1, momentum=0.9)
    fresh.load_state_dict(optimizer.state_dict())
    assert fresh.lr == 0.0


def changed(state: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    state = copy.deepcopy(state)
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


@pytest.mark.parametrize(
    "path, value, error, match",
    [
        (
            ("optimizer",),
            "SGD",
            tg.ParameterLoadError,
            r"Adam.load_state_dict: the state dict is of optimizer 'SGD', this is Adam",
        ),
        (("optimizer",), "AdamW", tg.ParameterLoadError, r"of optimizer 'AdamW', this is Adam"),
        (
            ("variables", 2, "shape"),
            (1,),
            tg.ParameterLoadError,
            r"'p2' \(position 2\) has shape \(\) here and \(1,\) in the state dict",
        ),
        (
            ("variables", 0, "dtype"),
            "float32",
            tg.ParameterLoadError,
            r"'p0' \(position 0\) has dtype float64 here and float32 in the state dict",
        ),
        (
            ("variables", 3),
            {"name": "x", "shape": (), "dtype": "float64"},
            tg.ParameterLoadError,
            r"the state dict is for 4 Variables, this optimizer has 3",
        ),
        (
            ("state", 1, "exp_avg"),
            np.zeros(4),
            tg.ParameterLoadError,
            r"state\[1\]\['exp_avg'\] has shape \(4,\) and dtype float64; 'p1' has shape \(3,\)",
        ),
        (
            ("state", 1, "exp_avg"),
            np.zeros(3, np.float32),
            tg.ParameterLoadError,
            r"dtype float32; 'p1' has shape \(3,\) and dtype float64",
        ),
        (
            ("state", 0, "velocity"),
            np.zeros((4, 3)),
            tg.ParameterLoadError,
            r"state 0 has unexpected keys \['velocity'\]",
        ),
        (("state", 0, "step"), -1, tg.ArgumentError, r"state\[0\]\['step'\] must be at least 0, got -1"),
        (
            ("state", 1, "exp_avg"),
            np.full(3, np.nan),
            tg.NonFiniteError,
            r"state\[1\]\['exp_avg'\] holds nan at \[0\] \(and 2 more\)",
        ),
        (
            ("state", 1, "exp_avg_sq"),
            KeyError,
            tg.ParameterLoadError,
            r"state 1 must have 'exp_avg' and 'exp_avg_sq' with a 'step' above 0, or neither with step 0",
        ),
        (
            ("state", 2, "step"),
            0,
            tg.ParameterLoadError,
            r"state 2 must have 'exp_avg' and 'exp_avg_sq' with a 'step' above 0",
        ),
        (
            ("hyperparameters", "amsgrad"),
            True,
            tg.ParameterLoadError,
            r"state 0 lacks 'max_exp_avg_sq', which amsgrad=True needs",
        ),
        (("hyperparameters", "betas"), (0.9, 1.5), tg.ArgumentError, r"Adam: betas\[1\] must be in \[0, 1\), got 1.5"),
        (
            ("hyperparameters", "eps"),
            KeyError,
            tg.ParameterLoadError,
            r"hyperparameters: the state dict's keys must be \['lr', 'betas', 'eps', 'weight_decay', 'amsgrad'\]; "
            r"missing \['eps'\]",
        ),
        (("hyperparameters", "momentum"), 0.9, tg.ParameterLoadError, r"unexpected \['momentum'\]"),
        (
            ("attributes",),
            {},
            tg.ParameterLoadError,
            r"keys must be \['optimizer', 'variables', 'hyperparameters', 'state'\]; unexpected \['attributes'\]",
        ),
    ],
)
def test_a_state_dict_for_something_else_is_refused_and_nothing_changes(path, value, error, match):
    source = Adam(variables(), 0.01)
    run(source, gradient_schedule(3))
    if path == ("variables", 3):
        state = source.state_dict()
        state["variables"].append(value)
        state["state"].append({})
    else:
        state = changed(source.state_dict(), path, value)
    target = Adam(variables(), 0.02)
    run(target, gradient_schedule(2, seed=5))
    before = snapshot(target)
    with pytest.raises(error, match=match):
        target.load_state_dict(state)
    assert_unchanged(target, before)


def test_a_state_dict_that_is_not_one_is_a_type_error():
    optimizer = SGD(variables(), 0.1)
    with pytest.raises(
        tg.InputTypeError,
        match=r"SGD.load_state_dict: expected a state dict \(a dict, as state_dict\(\) returns\), got list",
    ):
        optimizer.load_state_dict([])


def test_an_optimizer_of_your_own_saves_every_attribute():
    class SignSGD(Optimizer):
        def __init__(self, parameter: Any, lr: float = 0.01) -> None:
            super().__init__(parameter, lr)
            self.steps = 0
            self.seen: dict[str, Any] = {"last": np.zeros(2)}

        def step(self) -> None:
            for v in self.variables:
                grad = v.peek_grad()
                if grad is not None and v.trainable:
                    v.value -= self.lr * np.sign(grad)
            self.steps += 1
            self.seen["last"] += 1

    w = tg.Variable(np.zeros(2), name="w")
    mine = SignSGD([w], 0.5)
    assert hasattr(SignSGD.step, "__wrapped__")  # replayable, as the module docstring says
    w.add_grad(np.array([3.0, -1.0]))
    mine.step()
    state = mine.state_dict()
    assert state["optimizer"] == "SignSGD" and state["attributes"]["steps"] == 1
    mine.step()
    assert mine.steps == 2 and state["attributes"]["seen"]["last"][0] == 1  # a copy
    mine.load_state_dict(state)
    assert mine.steps == 1 and mine.seen["last"][0] == 1 and mine.variables == [w]
    with pytest.raises(tg.ParameterLoadError, match="of optimizer 'SignSGD', this is SGD"):
        SGD([w], 0.1).load_state_dict(state)
    with pytest.raises(
        tg.ParameterLoadError, match=r"'w' \(position 0\) has shape \(2,\) here and \(3,\) in the state dict"
    ):
        mine.load_state_dict(changed(state, ("variables", 0, "shape"), (3,)))


# -- clipping ------------------------------------------------------------------------------------------------


def with_gradients(grads: list[Any], trainable: tuple[bool, ...] | None = None) -> list[tg.Variable]:
    found = []
    for i, g in enumerate(grads):
        v = tg.Variable(np.zeros(np.shape(g) if g is not None else 2), name=f"g{i}")
        if trainable is not None:
            v.trainable = trainable[i]
        if g is not None:
            v.add_grad(np.array(g, dtype=float))
        found.append(v)
    return found


@pytest.mark.parametrize("p", [2.0, 1.0, 3.0, 0.5, math.inf])
def test_clip_grad_norm_scales_to_max_norm_and_returns_the_total_norm(p):
    grads = [np.array([[3.0, -4.0], [0.0, 1e-8]]), None, np.array([12.0, 0.0, -5.0]), np.array(2.0)]
    vs = with_gradients(grads)
    frozen = with_gradients([np.array([1e6])], trainable=(False,))[0]
    every = np.concatenate([g.ravel() for g in grads if g is not None])
    total = np.max(np.abs(every)) if p == math.inf else np.sum(np.abs(every) ** p) ** (1 / p)
    norm = clip_grad_norm([*vs, frozen], 1.5, norm_type=p)
    assert type(norm) is float and norm == pytest.approx(total, rel=1e-14)
    coefficient = 1.5 / (total + 1e-6)
    for v, g in zip(vs, grads):
        if g is None:
            assert v.peek_grad() is None
        else:
            np.testing.assert_allclose(v.peek_grad(), g * coefficient, rtol=1e-15)
    assert frozen.peek_grad()[0] == 1e6  # not trainable: not counted, not clipped


def test_clip_grad_norm_leaves_small_gradients_alone_and_takes_a_model():
    model = MLP(4, 3, 2, seed=0)
    for v in model.graph.parameter:
        v.add_grad(np.full(v.shape, 1e-3))
    before = [v.peek_grad().copy() for v in model.graph.parameter]
    norm = clip_grad_norm(model, 10.0)
    assert norm == pytest.approx(1e-3 * math.sqrt(sum(v.value.size for v in model.graph.parameter)))
    assert all((v.peek_grad() == b).all() for v, b in zip(model.graph.parameter, before))
    assert clip_grad_norm([], 1.0) == 0.0 and clip_grad_norm(with_gradients([None]), 1.0) == 0.0


def test_clip_grad_norm_does_not_overflow_where_the_norm_does_not():
    vs = with_gradients([np.full(4, 1e200), np.full(2, -1e200)])
    with np.errstate(all="raise"):
        norm = clip_grad_norm(vs, 1.0)
    assert norm == pytest.approx(1e200 * math.sqrt(6), rel=1e-14)
    np.testing.assert_allclose(vs[0].peek_grad(), np.full(4, 1 / math.sqrt(6)), rtol=1e-12)


def test_clip_grad_value_clips_every_entry():
    vs = with_gradients([np.array([[-3.0, 0.5], [2.0, -0.1]]), None, np.array(-7.0)])
    assert clip_grad_value(vs, 1.0) is None
    np.testing.assert_array_equal(vs[0].peek_grad(), [[-1.0, 0.5], [1.0, -0.1]])
    assert vs[1].peek_grad() is None and vs[2].peek_grad() == -1.0


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda vs: clip_grad_norm(vs, 0.0), tg.ArgumentError, r"clip_grad_norm: max_norm must be above 0, got 0.0"),
        (
            lambda vs: clip_grad_norm(vs, 1.0, norm_type=0),
            tg.ArgumentError,
            r"clip_grad_norm: norm_type must be above 0, got 0",
        ),
        (lambda vs: clip_grad_norm(vs, 1.0, norm_type="2"), tg.InputTypeError, r"norm_type must be a number, got str"),
        (
            lambda vs: clip_grad_value(vs, -1.0),
            tg.ArgumentError,
            r"clip_grad_value: clip_value must be above 0, got -1.0",
        ),
        (
            lambda vs: clip_grad_norm((v for v in vs), 1.0),
            tg.InputTypeError,
            r"clip_grad_norm: got a one-shot iterator \(generator\); pass a list of Variables",
        ),
        (
            lambda vs: clip_grad_value(iter(vs), 1.0),
            tg.InputTypeError,
            r"clip_grad_value: got a one-shot iterator \(list_iterator\)",
        ),
        (
            lambda vs: clip_grad_norm([vs[0], 3.0], 1.0),
            tg.InputTypeError,
            r"clip_grad_norm: expected Variables, got float at position 1",
        ),
        (
            lambda vs: clip_grad_norm([vs[0], vs[1], vs[0]], 1.0),
            tg.ArgumentError,
            r"clip_grad_norm: 'g0' is given twice \(positions 0 and 2\); it would be clipped twice",
        ),
    ],
)
def test_clipping_arguments_are_checked(call, error, match):
    vs = with_gradients([np.ones(2), np.ones(3)])
    with pytest.raises(error, match=match):
        call(vs)
    assert all((v.peek_grad() == 1).all() for v in vs)


@pytest.mark.parametrize("clip", [lambda vs: clip_grad_norm(vs, 1.0), lambda vs: clip_grad_value(vs, 0.5)])
def test_clipping_refuses_a_non_finite_gradient_before_clipping_any(clip):
    vs = with_gradients([np.full(3, 5.0), np.array([1.0, np.nan, np.inf])])
    with pytest.raises(
        tg.NonFiniteError,
        match=r"clip_grad_\w+: the gradient of 'g1' holds nan at \[1\] \(and 1 more\); nothing was clipped",
    ):
        clip(vs)
    assert (vs[0].peek_grad() == 5.0).all()


# -- schedules ----------------------------------------------------------------------------------------------


def lrs(schedule: LRScheduler, epochs: int) -> list[float]:
    seen = [schedule.get_last_lr()]
    for _ in range(epochs):
        schedule.step()
        assert schedule.optimizer.lr == schedule.get_last_lr()
        seen.append(schedule.get_last_lr())
    return seen


def test_step_exponential_and_cosine_schedules_follow_their_formulas():
    base = 0.4
    step = lrs(StepLR(SGD(variables(), base), step_size=3, gamma=0.5), 10)
    assert step == pytest.approx([0.4, 0.4, 0.4, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05], rel=1e-15)
    exponential = lrs(ExponentialLR(Adam(variables(), base), gamma=0.9), 5)
    assert exponential == pytest.approx([base * 0.9**e for e in range(6)], rel=1e-15)
    cosine = lrs(CosineAnnealingLR(SGD(variables(), base), T_max=4, eta_min=0.1), 9)
    high, low = 0.1 + 0.15 * (1 + math.sqrt(0.5)), 0.1 + 0.15 * (1 - math.sqrt(0.5))  # at 45 and 135 degrees
    assert cosine == pytest.approx([0.4, high, 0.25, low, 0.1, low, 0.25, high, 0.4, high], rel=1e-14)


def test_a_schedule_records_the_base_lr_and_counts_epochs():
    optimizer = SGD(variables(), 0.3)
    schedule = ExponentialLR(optimizer, 0.5)
    assert (schedule.base_lr, schedule.last_epoch, schedule.get_last_lr()) == (0.3, 0, 0.3)
    schedule.step()
    optimizer.lr = 99.0  # by hand: lasts until the next step
    schedule.step()
    assert schedule.last_epoch == 2 and optimizer.lr == pytest.approx(0.075)


def test_a_schedule_resumes_from_its_state_dict():
    first = StepLR(SGD(variables(), 1.0), step_size=2, gamma=0.1)
    for _ in range(3):
        first.step()
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert plain(state) and state == {
        "scheduler": "StepLR",
        "last_epoch": 3,
        "base_lr": 1.0,
        "last_lr": pytest.approx(0.1),
        "hyperparameters": {"step_size": 2, "gamma": 0.1},
    }
    optimizer = SGD(variables(), 1.0)
    resumed = StepLR(optimizer, step_size=5, gamma=0.5)
    resumed.load_state_dict(state)
    assert (resumed.last_epoch, resumed.step_size, resumed.gamma) == (3, 2, 0.1)
    assert lrs(resumed, 3)[1:] == lrs(first, 3)[1:]
    with pytest.raises(
        tg.ParameterLoadError,
        match="ExponentialLR.load_state_dict: the state dict is of scheduler 'StepLR', this is ExponentialLR",
    ):
        ExponentialLR(optimizer, 0.5).load_state_dict(state)
    with pytest.raises(tg.ArgumentError, match=r"StepLR: gamma must be above 0, got -1"):
        resumed.load_state_dict(changed(state, ("hyperparameters", "gamma"), -1))
    assert resumed.gamma == 0.1


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda o: StepLR(o, 0), tg.ArgumentError, r"StepLR: step_size must be at least 1, got 0"),
        (lambda o: StepLR(o, 2.5), tg.InputTypeError, r"StepLR: step_size must be a whole number, got float 2.5"),
        (lambda o: StepLR(o, 2, gamma=0), tg.ArgumentError, r"StepLR: gamma must be above 0, got 0"),
        (lambda o: ExponentialLR(o, float("inf")), tg.ArgumentError, r"ExponentialLR: gamma must be above 0, got inf"),
        (lambda o: CosineAnnealingLR(o, 0), tg.ArgumentError, r"CosineAnnealingLR: T_max must be at least 1, got 0"),
        (
            lambda o: CosineAnnealingLR(o, 10, eta_min=-0.1),
            tg.ArgumentError,
            r"CosineAnnealingLR: eta_min must be at least 0, got -0.1",
        ),
        (
            lambda o: ExponentialLR(None, 0.5),
            tg.InputTypeError,
            r"ExponentialLR: expected a tapegrad.optim optimizer, got NoneType",
        ),
    ],
)
def test_schedule_arguments_are_checked(make, error, match):
    optimizer = SGD(variables(), 0.1)
    with pytest.raises(error, match=match):
        make(optimizer)
    assert optimizer.lr == 0.1


def test_a_schedule_of_your_own():
    class LinearWarmup(LRScheduler):
        hyperparameters = ("epochs",)

        def __init__(self, optimizer: Optimizer, epochs: int) -> None:
            self.epochs = epochs
            super().__init__(optimizer)

        def lr_at(self, epoch: int) -> float:
            return self.base_lr * min(1.0, (epoch + 1) / self.epochs)

    schedule = LinearWarmup(SGD(variables(), 1.0), 4)
    assert hasattr(LinearWarmup.step, "__wrapped__") or hasattr(LRScheduler.step, "__wrapped__")
    assert lrs(schedule, 5) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert schedule.state_dict()["hyperparameters"] == {"epochs": 4}


# -- captured steps -----------------------------------------------------------------------------------------


def test_every_step_clipping_and_schedule_is_marked_for_capture():
    for fn in (Optimizer.zero_grad, SGD.step, Adam.step, AdamW.step, clip_grad_norm, clip_grad_value, LRScheduler.step):
        assert hasattr(fn, "__wrapped__"), fn


def test_a_captured_step_that_clips_and_schedules_equals_the_eager_loop_bit_for_bit():
    """Adam with a growing learning rate (ExponentialLR stepped inside the step) and clip_grad_norm: the
    gradients grow, so clipping acts only after many calls. A replay calls both again, as eagerly."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6)) * 3, rng.integers(0, 3, 64)
    runs = []
    for capture in (False, True):
        model = MLP(6, 5, 3, seed=0)
        optimizer = Adam(model, lr=0.01)
        schedule = ExponentialLR(optimizer, gamma=1.2)
        norms: list[float] = []  # (appended eagerly only: a replay runs no Python of the step)

        def step(
            xb: np.ndarray,
            yb: np.ndarray,
            model: Any = model,
            optimizer: Any = optimizer,
            schedule: Any = schedule,
            norms: Any = norms,
        ) -> Any:
            model.forward(tg.Variable(xb))
            loss = model.loss(tg.Variable(yb))
            model.graph.backward()
            norms.append(clip_grad_norm(model.graph.parameter, 1.25))
            optimizer.step()
            optimizer.zero_grad()
            schedule.step()
            return loss

        fn = model.graph.capture(step) if capture else step
        losses = [fn(x[(4 * k) % 64 : (4 * k) % 64 + 4], y[(4 * k) % 64 : (4 * k) % 64 + 4]) for k in range(40)]
        runs.append((losses, [v.value.copy() for v in model.graph.parameter], optimizer.state_dict(), norms))
    (eager_losses, eager_values, eager_state, eager_norms), (losses, values, state, _) = runs
    assert max(eager_norms[:20]) < 1.25 < max(eager_norms[20:]), eager_norms  # clipping starts late
    assert losses == eager_losses
    assert all(a.tobytes() == b.tobytes() for a, b in zip(values, eager_values))
    assert pickle.dumps(state) == pickle.dumps(eager_state)


def test_clipping_starts_acting_only_after_many_calls_in_a_captured_step():
    """The norm grows with the step count: clipping is a no-op for the first calls (recorded and
    verified then), and must act when replayed later."""
    w = tg.Variable(np.ones(3), name="w")
    g = tg.Graph(seed=0)
    g.parameter.variable_dict["w"] = w
    mul, total = g.get_operation("math:Multiply"), g.get_operation("math:Sum")
    opt = SGD([w], lr=0.01)
    clipped = [w]

    seed = np.ones(())

    def step(x: np.ndarray, seed: np.ndarray) -> Any:
        out = total(mul(tg.Variable(x), w))
        g.backward(grads={out: seed})
        clip_grad_norm(clipped, 50.0)
        opt.step()
        opt.zero_grad()
        return out

    captured = g.capture(step)
    twin = tg.Variable(np.ones(3))
    for k in range(40):
        x = np.full(3, float(k))
        captured(x, seed)
        grad = x * min(1.0, 50.0 / (np.linalg.norm(x) + 1e-6))  # from k = 29 on: clipped
        twin.value -= 0.01 * grad
    np.testing.assert_allclose(w.value, twin.value, rtol=0, atol=1e-14)
