"""What a captured step costs and saves, against eager and against bare numpy.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_capture.py [--runs 3]

1. The tape's own price per op application, with an op that computes nothing (forward returns
   its input, backward its gradient): a chain of 41 applications against a chain of 1, eager
   and captured, so what remains per application is the framework's work (bare numpy does none).
2. A contrib LSTMCell unrolled over T=50 steps (a loss on the last state, SGD): eager against
   captured.
3. The cost of a record: the first call (eager, recording) plus the second (the first replay,
   verified against an eager run), in steps' worth of replays.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from _timing import blas_threads, compare, report_runs
from bench_training import captured_step

import tapegrad as tg
from tapegrad.datasets import load_digits
from tapegrad.optim import SGD

CHAIN = 41


class Nothing(tg.Operation):
    """Computes nothing: the framework's own work per application, measured."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        return x

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        return grad


def chain(length: int, captured: bool) -> Callable[[], object]:
    graph = tg.Graph(seed=0)
    op = graph.get_operation(Nothing)
    x = np.ones((1, 30))
    seed = np.ones((1, 30))

    def step(x: np.ndarray, seed: np.ndarray) -> tg.Variable:
        y = tg.Variable(x)
        for _ in range(length):
            y = op(y)
        graph.backward(grads={y: seed})
        return y

    run = graph.capture(step) if captured else step
    return lambda: run(x, seed)


def per_application(runs: int) -> None:
    print(f"\n1. per op application of an op that computes nothing ({CHAIN} against 1 in a chain)")
    results = {"eager": [], "captured": []}
    for _ in range(runs):
        contenders = {f"{kind} {n}": chain(n, kind == "captured") for kind in results for n in (1, CHAIN)}
        timing = compare(contenders, "eager 1")
        for kind in results:
            results[kind].append((timing[f"{kind} {CHAIN}"].seconds - timing[f"{kind} 1"].seconds) / (CHAIN - 1))
    for kind, values in results.items():
        print(f"  {kind:<10} {min(values) * 1e6:.3f}-{max(values) * 1e6:.3f} us per application (forward and backward)")


def lstm_step(captured: bool, steps: int = 50, batch: int = 8) -> Callable[[], object]:
    """One training step of an LSTMCell unrolled over ``steps`` inputs, a head and a loss."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((batch, 16)) for _ in range(steps)]
    labels = rng.integers(0, 4, batch)
    graph = tg.Graph("lstm", seed=0)
    cell = graph.get_operation("rnn:LSTMCell", [16, 32])
    head = graph.get_operation("layers:Affine", [32, 4])
    loss = graph.get_operation("losses:SoftmaxLoss")
    optimizer = SGD(graph.parameter, lr=0.01)
    zeros = tg.constant(np.zeros((batch, 32)))  # the initial state: data no call changes

    def step(xs: list[np.ndarray], y: np.ndarray) -> float:
        h, c = zeros, zeros
        for x in xs:
            h, c = cell(x, h, c)
        loss.forward(head(h))
        value = loss.loss(y)
        graph.backward()
        optimizer.step()
        optimizer.zero_grad()
        return value  # type: ignore[no-any-return]

    run = graph.capture(step) if captured else step
    return lambda: run(xs, labels)


def record_cost(make: Callable[[], Callable[[], object]], repeats: int = 15) -> float:
    """(first call + second call) / a replay, median over fresh steps."""
    ratios = []
    for _ in range(repeats):
        run = make()
        start = time.perf_counter()
        run()
        run()
        first_two = time.perf_counter() - start
        run()
        start = time.perf_counter()
        for _ in range(20):
            run()
        ratios.append(first_two / ((time.perf_counter() - start) / 20))
    return statistics.median(ratios)


def seed_step(batch: int) -> Callable[[], Callable[[], object]]:
    x, _, y, _ = load_digits(seed=0)
    xb, yb = x[:batch], y[:batch]

    def make() -> Callable[[], object]:
        step = captured_step()
        return lambda: step(xb, yb)

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"BLAS threads: {blas_threads()}")
    per_application(args.runs)
    try:
        runs = [compare({"eager": lstm_step(False), "captured": lstm_step(True)}, "eager") for _ in range(args.runs)]
        report_runs("2. LSTMCell unrolled over T=50 (batch 8, D=16, H=32), one training step", runs)
    except tg.UnknownOperationError:
        print("\n2. LSTMCell: skipped (pip install ./contrib/tapegrad-rnn)")
    print("\n3. the cost of a record (recording + the verified first replay), in replayed steps")
    for batch in (1, 32):
        print(f"  seed MLP, batch {batch:<3} {record_cost(seed_step(batch)):.1f} steps")


if __name__ == "__main__":
    main()
