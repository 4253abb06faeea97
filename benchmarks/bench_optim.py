"""An optimizer step's time and peak memory: ``tapegrad.optim`` against the previous implementation
(copied below as it was before issue 21) and against the same update hand-written in numpy.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_optim.py [--runs 3]

1. ``SGD.step`` and ``Adam.step`` alone on the seed model's 4 parameters (64-30-10: W1, b1, W2, b2),
   with the gradients of one backward pass; each step is called as a captured step replays it (the
   undecorated method) and as user code calls it. Baseline: the update written in numpy, in place.
   Then the same on 784-512-512-10 sized parameters, where each numpy call has real work to do.
2. The captured seed step (batch 1, SGD at lr 0.3) with the previous and the current SGD; baseline:
   the whole step hand-written in numpy (``bench_training.numpy_step``).
3. Peak memory of one step (its second: the state exists) over 784-512-512-10 sized parameters,
   measured with tracemalloc: the previous implementation held every update at once.
"""

from __future__ import annotations

import argparse
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import blas_threads, compare, report_runs
from bench_training import Batches, SeedMLP, numpy_contender, stepping

import tapegrad as tg
from tapegrad.datasets import load_digits
from tapegrad.optim import SGD, Adam, Optimizer
from tapegrad.variable import peek_grads

LR = 1e-9  # the parameters barely move over millions of timed steps


# -- the previous implementation, as it was (its step computed every update before applying any) --------


class PreviousSGD(Optimizer):
    def __init__(self, parameter: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(parameter, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self._velocity: dict[int, np.ndarray] = {}

    def step(self) -> None:
        lr, momentum, decay = self.lr, self.momentum, self.weight_decay
        updates, velocity = [], {}
        for i, (v, grad) in enumerate(zip(self.variables, peek_grads(self.variables))):
            if grad is None or not v.trainable:
                continue
            if decay:
                grad = grad + decay * v.value
            if momentum:
                buf = self._velocity.get(i)
                grad = velocity[i] = np.array(grad, dtype=v.value.dtype) if buf is None else buf * momentum + grad
            updates.append((v.value, lr * grad))
        self._velocity.update(velocity)
        for value, update in updates:
            value -= update


class PreviousAdam(Optimizer):
    def __init__(
        self, parameter: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        super().__init__(parameter, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay, self.t = eps, 0.0, 0
        self._m: dict[int, np.ndarray] = {}
        self._v: dict[int, np.ndarray] = {}

    def step(self) -> None:
        t = self.t + 1
        b1, b2 = self.beta1, self.beta2
        scale = self.lr * np.sqrt(1.0 - b2**t) / (1.0 - b1**t)
        updates, moments = [], {}
        for i, (v, grad) in enumerate(zip(self.variables, peek_grads(self.variables))):
            if grad is None or not v.trainable:
                continue
            m, s = self._m.get(i), self._v.get(i)
            if m is None or s is None:
                m, s = np.zeros_like(v.value), np.zeros_like(v.value)
            m = m * b1 + (1.0 - b1) * grad
            s = s * b2 + (1.0 - b2) * grad * grad
            moments[i] = (m, s)
            updates.append((v.value, scale * m / (np.sqrt(s) + self.eps)))
        self.t = t
        for i, (m, s) in moments.items():
            self._m[i], self._v[i] = m, s
        for value, update in updates:
            value -= update


# -- the same updates in numpy, in place ---------------------------------------------------------------


def hand_sgd(variables: list[tg.Variable]) -> Callable[[], None]:
    def step() -> None:
        for v in variables:
            v.value -= LR * v.peek_grad()

    return step


def hand_adam(variables: list[tg.Variable]) -> Callable[[], None]:
    """PyTorch's Adam, one temporary per parameter; no check, no skipping."""
    moments = [(np.zeros_like(v.value), np.zeros_like(v.value)) for v in variables]
    count = [0]

    def step() -> None:
        count[0] += 1
        t = count[0]
        size, root = LR / (1.0 - 0.9**t), (1.0 - 0.999**t) ** 0.5
        for v, (m, s) in zip(variables, moments):
            g = v.peek_grad()
            temp = g - m
            temp *= 0.1
            m += temp
            np.multiply(g, g, out=temp)
            temp *= 0.001
            s *= 0.999
            s += temp
            np.sqrt(s, out=temp)
            temp /= root
            temp += 1e-8
            np.divide(m, temp, out=temp)
            temp *= size
            v.value -= temp

    return step


# -- 1. a step alone -----------------------------------------------------------------------------------------


def seed_variables() -> list[tg.Variable]:
    """The seed model's parameters, each holding the gradient of one backward pass on 8 samples."""
    model = SeedMLP()
    x, _, y, _ = load_digits(seed=0)
    model.forward(tg.Variable(x[:8]))
    model.loss(tg.Variable(y[:8]))
    model.graph.backward()
    return list(model.graph.parameter.variable_dict.values())


def replayed(optimizer: Optimizer) -> Callable[[], None]:
    """The step as a captured step's replay calls it: the undecorated method."""
    method = type(optimizer).step.__wrapped__  # type: ignore[attr-defined]
    return lambda: method(optimizer)


def large_variables() -> list[tg.Variable]:
    """784-512-512-10 sized parameters with random gradients."""
    rng = np.random.default_rng(0)
    found = [tg.Variable(rng.standard_normal(s)) for s in [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]]
    for v in found:
        v.add_grad(rng.standard_normal(v.shape))
    return found


def step_alone(runs: int, chunks: int) -> None:
    for title, hand, previous, current, make in (
        ("SGD.step, 4 parameters", hand_sgd, PreviousSGD, SGD, seed_variables),
        ("Adam.step, 4 parameters", hand_adam, PreviousAdam, Adam, seed_variables),
        ("SGD.step, 784-512-512-10", hand_sgd, PreviousSGD, SGD, large_variables),
        ("Adam.step, 784-512-512-10", hand_adam, PreviousAdam, Adam, large_variables),
    ):
        results = []
        for _ in range(runs):
            contenders = {
                "numpy, in place (baseline)": hand(make()),
                "previous step (replayed)": replayed(previous(make(), LR)),
                "tapegrad.optim step (replayed)": replayed(current(make(), LR)),
                "tapegrad.optim step (called)": current(make(), LR).step,
            }
            results.append(compare(contenders, "numpy, in place (baseline)", chunks=chunks))
        report_runs(title, results)


# -- 2. the captured seed step --------------------------------------------------------------------------------

STEPS = 32


def captured(make: Callable[[Any, float], Optimizer]) -> Callable[[Batches], Callable[[], None]]:
    def contender(batches: Batches) -> Callable[[], None]:
        model = SeedMLP()
        optimizer = make(model.graph.parameter, 0.3)

        @model.graph.capture
        def train_step(xb: np.ndarray, yb: np.ndarray) -> float:
            model.forward(tg.Variable(xb))
            loss = model.loss(tg.Variable(yb))
            model.graph.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

        return stepping(batches, train_step)

    return contender


def captured_seed_step(runs: int, chunks: int) -> None:
    x, _, y, _ = load_digits(seed=0)
    results = []
    for _ in range(runs):
        contenders = {
            "hand-written numpy (baseline)": numpy_contender(Batches(x, y, 1)),
            "captured, previous SGD": captured(PreviousSGD)(Batches(x, y, 1)),
            "captured, tapegrad.optim SGD": captured(SGD)(Batches(x, y, 1)),
        }
        results.append(compare(contenders, "hand-written numpy (baseline)", chunks=chunks))
    report_runs(f"the captured seed step, batch 1 (per step, {STEPS} steps per chunk)", results, per=STEPS)


# -- 3. peak memory -------------------------------------------------------------------------------------------


def peak_memory() -> None:
    shapes = [(784, 512), (512,), (512, 512), (512,), (512, 10), (10,)]
    rng = np.random.default_rng(0)
    largest = max(int(np.prod(s)) for s in shapes) * 8
    total = sum(int(np.prod(s)) for s in shapes) * 8
    print(
        f"\n3. peak memory of a step, 784-512-512-10 "
        f"(largest parameter {largest / 2**20:.2f} MiB, all {total / 2**20:.2f} MiB)"
    )
    for name, make in (
        ("previous SGD", lambda p: PreviousSGD(p, LR)),
        ("tapegrad.optim SGD", lambda p: SGD(p, LR)),
        ("previous SGD, momentum", lambda p: PreviousSGD(p, LR, momentum=0.9)),
        ("tapegrad.optim SGD, momentum", lambda p: SGD(p, LR, momentum=0.9)),
        ("previous Adam", lambda p: PreviousAdam(p, LR)),
        ("tapegrad.optim Adam", lambda p: Adam(p, LR)),
    ):
        variables = [tg.Variable(rng.standard_normal(s)) for s in shapes]
        for v in variables:
            v.add_grad(rng.standard_normal(v.shape))
        optimizer = make(variables)
        optimizer.step()  # the state exists from here on
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        optimizer.step()
        extra = tracemalloc.get_traced_memory()[1] - before
        tracemalloc.stop()
        print(f"  {name:<32} {extra / 2**20:6.2f} MiB  ({extra / largest:.2f}x the largest parameter)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements, for the range of the medians")
    parser.add_argument("--chunks", type=int, default=41, help="timed chunks per contender and run")
    args = parser.parse_args()
    print(f"BLAS threads: {blas_threads()}")
    print("\n1. a step alone")
    step_alone(args.runs, args.chunks)
    print("\n2. in the captured seed step")
    captured_seed_step(args.runs, args.chunks)
    peak_memory()


if __name__ == "__main__":
    main()
