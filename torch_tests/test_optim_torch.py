"""tapegrad.optim against its PyTorch namesakes in float64: the same starting values and the same
gradients (among them steps with no gradient, gradients exactly zero, tiny ones and partly zero ones)
leave the parameters within 1e-12 of PyTorch's over hundreds of steps; clipping and schedules likewise.

    python -m pytest torch_tests      (not collected by the normal suite; needs torch)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

import tapegrad as tg
from tapegrad import optim

SHAPES = [(5, 4), (4,), (), (3, 2, 2)]
TOLERANCE = 1e-12


def gradient_schedule(steps: int, seed: int = 0) -> list[list[Any]]:
    """Per step, per parameter: a gradient or None. Every kind of step appears for every parameter."""
    rng = np.random.default_rng(seed)
    schedule = []
    for k in range(steps):
        grads: list[Any] = []
        for i, shape in enumerate(SHAPES):
            kind = (k + 3 * i) % 10
            g = rng.standard_normal(shape)
            if kind == 2:
                grads.append(None)
                continue
            if kind == 4:
                g = np.zeros(shape)
            elif kind in (1, 6):
                g = g * 1e-8
            elif kind == 8 and g.ndim:
                g[rng.random(shape) < 0.5] = 0.0
            grads.append(g)
        schedule.append(grads)
    return schedule


def pair(seed: int = 1) -> tuple[list[tg.Variable], list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    start = [rng.standard_normal(s) for s in SHAPES]
    return [tg.Variable(a.copy()) for a in start], [torch.tensor(a.copy(), requires_grad=True) for a in start]


def give(variables: list[tg.Variable], tensors: list[torch.Tensor], grads: list[Any]) -> None:
    for v, t, g in zip(variables, tensors, grads):
        v.clear_grad()
        t.grad = None
        if g is not None:
            v.add_grad(g.copy())
            t.grad = torch.tensor(g.copy())


def worst(variables: list[tg.Variable], tensors: list[torch.Tensor]) -> float:
    return max(float(np.max(np.abs(v.value - t.detach().numpy()), initial=0.0)) for v, t in zip(variables, tensors))


CONFIGURATIONS = [
    ("SGD", {"lr": 0.05}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.05, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.5, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("Adam", {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.02, "amsgrad": True}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.3}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
]


@pytest.mark.parametrize(("name", "settings"), CONFIGURATIONS, ids=[f"{n}-{s}" for n, s in CONFIGURATIONS])
def test_each_optimizer_stays_within_1e_12_of_pytorch(name, settings):
    variables, tensors = pair()
    ours = getattr(optim, name)(variables, **settings)
    theirs = getattr(torch.optim, name)(tensors, **settings)
    for k, grads in enumerate(gradient_schedule(400)):
        give(variables, tensors, grads)
        ours.step()
        theirs.step()
        assert worst(variables, tensors) <= TOLERANCE, f"step {k}"
    for ours_state, tensor in zip(ours.state_dict()["state"], tensors):
        theirs_state = theirs.state[tensor]
        for key, value in theirs_state.items():
            if key == "step":
                assert ours_state["step"] == int(value)
            elif value is not None:
                np.testing.assert_allclose(ours_state[key], value.numpy(), rtol=0, atol=TOLERANCE)


def test_the_adam_reproducer_of_issue_21_equals_pytorch():
    w, t = tg.Variable(np.array([1.0])), torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    w.add_grad(np.array([1e-8]))
    t.grad = torch.tensor([1e-8], dtype=torch.float64)
    optim.Adam([w]).step()
    torch.optim.Adam([t]).step()
    assert abs(w.value[0] - t.item()) <= 1e-16 and 1.0 - w.value[0] == pytest.approx(5.0e-4)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_equals_pytorch(norm_type, max_norm):
    for grads in gradient_schedule(20, seed=3):
        variables, tensors = pair()
        give(variables, tensors, grads)
        ours = optim.clip_grad_norm(variables, max_norm, norm_type=norm_type)
        theirs = torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type=norm_type)
        assert ours == pytest.approx(theirs.item(), rel=1e-13, abs=1e-300)
        for v, t in zip(variables, tensors):
            assert (v.peek_grad() is None) == (t.grad is None)
            if t.grad is not None:
                np.testing.assert_allclose(v.peek_grad(), t.grad.numpy(), rtol=1e-13, atol=1e-300)


def test_clip_grad_value_equals_pytorch():
    for grads in gradient_schedule(20, seed=4):
        variables, tensors = pair()
        give(variables, tensors, grads)
        optim.clip_grad_value(variables, 0.7)
        torch.nn.utils.clip_grad_value_(tensors, 0.7)
        for v, t in zip(variables, tensors):
            if t.grad is not None:
                np.testing.assert_array_equal(v.peek_grad(), t.grad.numpy())


SCHEDULES = [
    ("StepLR", {"step_size": 3}),
    ("StepLR", {"step_size": 4, "gamma": 0.5}),
    ("ExponentialLR", {"gamma": 0.93}),
    ("CosineAnnealingLR", {"T_max": 10}),
    ("CosineAnnealingLR", {"T_max": 7, "eta_min": 0.01}),
]


@pytest.mark.parametrize(("name", "settings"), SCHEDULES, ids=[f"{n}-{s}" for n, s in SCHEDULES])
def test_each_schedules_learning_rates_equal_pytorchs(name, settings):
    variables, tensors = pair()
    ours_optimizer, theirs_optimizer = optim.SGD(variables, 0.3), torch.optim.SGD(tensors, 0.3)
    ours = getattr(optim, name)(ours_optimizer, **settings)
    theirs = getattr(torch.optim.lr_scheduler, name)(theirs_optimizer, **settings)
    for epoch in range(40):  # past T_max: the cosine comes back up, in both
        assert ours.last_epoch == theirs.last_epoch == epoch
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr()[0], rel=1e-12, abs=1e-15)
        assert ours_optimizer.lr == pytest.approx(theirs_optimizer.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        theirs_optimizer.step()  # (PyTorch warns when a schedule steps before its optimizer)
        ours.step()
        theirs.step()


def test_a_training_loop_that_clips_and_schedules_stays_within_1e_12_of_pytorch():
    variables, tensors = pair()
    ours, theirs = optim.AdamW(variables, 0.05, amsgrad=True), torch.optim.AdamW(tensors, 0.05, amsgrad=True)
    ours_schedule = optim.CosineAnnealingLR(ours, T_max=50, eta_min=1e-3)
    theirs_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=50, eta_min=1e-3)
    for k, grads in enumerate(gradient_schedule(300, seed=5)):
        give(variables, tensors, [None if g is None else g * 3 for g in grads])
        norm = optim.clip_grad_norm(variables, 1.0)
        assert norm == pytest.approx(torch.nn.utils.clip_grad_norm_(tensors, 1.0).item(), rel=1e-12)
        ours.step()
        theirs.step()
        ours_schedule.step()
        theirs_schedule.step()
        assert worst(variables, tensors) <= TOLERANCE, f"step {k}"
