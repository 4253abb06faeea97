"""The cost of checking gradients.

    python benchmarks/bench_gradcheck.py

1. The whole operation contract over every first-party op (all samples, all checks).
2. numerical_gradient_check on the seed's 64-30-10 MLP (batch 8): fast mode against full mode,
   and whether fast mode still catches a sign error planted in one parameter's gradient.
"""

from __future__ import annotations

import time

import numpy as np

import tapegrad as tg
from tapegrad import testing
from tapegrad.models import MLP
from tapegrad.plugins.layers import Affine

FIRST_PARTY = ["math", "activations", "layers", "losses"]


def contract() -> None:
    start = time.perf_counter()
    pairs = testing.collect_cases(plugin=FIRST_PARTY)
    results = list(testing.run_cases(pairs))
    seconds = time.perf_counter() - start
    failed = sum(not r.ok for r in results)
    ops = len({r.operation for r in results})
    print(f"contract: {ops} first-party ops, {len(results)} checks, {failed} failed, {seconds:.2f} s")


def seed_model_check() -> None:
    rng = np.random.default_rng(0)
    x, t = tg.Variable(rng.random((8, 64))), tg.Variable(rng.integers(0, 10, 8))
    timings = {}
    for mode in ("fast", "full"):
        model = MLP(64, 30, 10, seed=0)
        start = time.perf_counter()
        report = tg.numerical_gradient_check(model, x, t, mode=mode, verbose=False)
        timings[mode] = time.perf_counter() - start
        print(f"numerical_gradient_check, {mode} mode: {timings[mode] * 1e3:8.1f} ms, passed={bool(report)}")
    print(f"fast mode is {timings['full'] / timings['fast']:.0f}x faster than full mode")

    original = Affine.backward

    def planted(self: Affine, ctx: tg.Context, grad: np.ndarray) -> np.ndarray | None:
        out = original(self, ctx, grad)
        if self.name == "affine_1":
            self.b._grad = -self.b._grad  # a sign error in one parameter's gradient
        return out

    Affine.backward = planted  # type: ignore[method-assign]
    try:
        report = tg.numerical_gradient_check(MLP(64, 30, 10, seed=0), x, t, mode="fast", verbose=False)
    finally:
        Affine.backward = original  # type: ignore[method-assign]
    print(f"planted sign error in affine_1.b caught in fast mode: {[e.name for e in report.failures]}")


if __name__ == "__main__":
    contract()
    seed_model_check()
