"""Forward+backward time of the contrib packs (needs tapegrad-rnn and tapegrad-ctc installed).

    python benchmarks/bench_contrib.py

1. LSTM on (N=32, T=50, D=H=64) as one op, against the same sequence built from LSTMCell
   steps through the graph (one tape entry per step plus the slicing of x).
2. CTCLoss at T=200, C=30, S=50, N=16.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

import tapegrad as tg


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


class TimeStep(tg.Operation):
    """x[:, t] of a (N, T, D) sequence."""

    def forward(self, ctx: tg.Context, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        ctx.save(x.shape, int(t))
        return x[:, int(t)].copy()

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> tuple[np.ndarray, None]:
        shape, t = ctx.saved
        full = np.zeros(shape, dtype=grad.dtype)
        full[:, t] = grad
        return full, None


def lstm() -> None:
    n, steps, d, h = 32, 50, 64, 64
    rng = np.random.default_rng(0)
    x = tg.Variable(rng.standard_normal((n, steps, d)))
    seed = rng.standard_normal((n, steps, h))

    graph = tg.Graph(seed=0)
    whole = graph.get_operation("LSTM", [d, h])

    def one_op() -> None:
        out = whole(x)
        graph.backward(grads={out: seed})

    cells = tg.Graph(seed=0)
    cell = cells.get_operation("LSTMCell", [d, h])
    select = cells.get_operation(TimeStep)

    def by_steps() -> None:
        state_h = state_c = np.zeros((n, h))
        outputs = []
        for t in range(steps):
            state_h, state_c = cell(select(x, np.array(t)), state_h, state_c)
            outputs.append(state_h)
        cells.backward(grads={o: seed[:, t] for t, o in enumerate(outputs)})

    a, b = median_ms(one_op), median_ms(by_steps)
    print(f"LSTM (N={n}, T={steps}, D=H={d}) forward+backward: one op {a:.1f} ms, "
          f"LSTMCell steps through the graph {b:.1f} ms ({b / a:.2f}x)")


def ctc() -> None:
    n, steps, classes, length = 16, 200, 30, 50
    rng = np.random.default_rng(0)
    logits = tg.Variable(rng.standard_normal((n, steps, classes)))
    targets = rng.integers(1, classes, (n, length))
    graph = tg.Graph()
    loss = graph.get_operation("CTCLoss")

    def run() -> None:
        loss.forward(logits)
        loss.loss(targets)
        graph.backward()

    print(f"CTCLoss (T={steps}, C={classes}, S={length}, N={n}) forward+loss+backward: {median_ms(run):.1f} ms")


if __name__ == "__main__":
    lstm()
    ctc()
