"""Per-op overhead of the tape against hand-written numpy, measured in one run.

    python benchmarks/bench_overhead.py

Reports forward+backward of Sigmoid, Affine, SoftmaxLoss and Add at batch 1, and one training
step of the seed MLP (64-30-10, batch 1, SGD), against the same math written in numpy. For a
single op the tapegrad side seeds its output's gradient through graph.backward(grads=...).
"""

from __future__ import annotations

import math

import numpy as np
from _timing import compare, report

import tapegrad as tg


def sigmoid_contenders() -> dict[str, object]:
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((1, 30))
    g_np = rng.standard_normal((1, 30))

    def numpy_sigmoid() -> np.ndarray:
        s = np.tanh(x_np * 0.5)
        s *= 0.5
        s += 0.5
        return g_np * s * (1.0 - s)

    graph = tg.Graph()
    sig = graph.get_operation("Sigmoid")
    x = tg.Variable(x_np)

    def tape_sigmoid() -> None:
        y = sig(x)
        graph.backward(grads={y: g_np})
        x.clear_grad()

    return {"numpy (hand-written)": numpy_sigmoid, "tapegrad Sigmoid": tape_sigmoid}


def op_contenders() -> dict[str, dict[str, object]]:
    """Forward+backward of Affine (64->30), SoftmaxLoss (10 classes) and Add at batch 1."""
    rng = np.random.default_rng(0)
    x_np, g30 = rng.standard_normal((1, 64)), rng.standard_normal((1, 30))
    W, b = rng.standard_normal((64, 30)), np.zeros(30)
    z_np, label = rng.standard_normal((1, 10)), np.array([3])
    a_np, b_np = rng.standard_normal((1, 30)), rng.standard_normal((1, 30))
    graph = tg.Graph(seed=0)
    affine = graph.get_operation("Affine", [64, 30])
    loss = graph.get_operation("SoftmaxLoss")
    add = graph.get_operation("Add")
    x, z, a, bv = tg.Variable(x_np), tg.Variable(z_np), tg.Variable(a_np), tg.Variable(b_np)

    def numpy_affine() -> None:
        out = x_np @ W
        out += b
        (x_np.T @ g30, g30.sum(axis=0), g30 @ W.T)

    def tape_affine() -> None:
        out = affine(x)
        graph.backward(grads={out: g30})
        affine.W._grad = affine.b._grad = x._grad = None

    def numpy_loss() -> None:
        shifted = z_np - z_np.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        total = e.sum(axis=1, keepdims=True)
        p = e / total
        math.log(total[0, 0]) - float(shifted[0, 3])
        d = p.copy()
        d[0, 3] -= 1.0

    def tape_loss() -> None:
        loss.forward(z)
        loss.loss(label)
        graph.backward()
        z._grad = None

    def numpy_add() -> None:
        a_np + b_np

    def tape_add() -> None:
        out = add(a, bv)
        graph.backward(grads={out: g30})
        a._grad = bv._grad = None

    return {
        "Affine 64->30": {"numpy (hand-written)": numpy_affine, "tapegrad": tape_affine},
        "SoftmaxLoss, 10 classes": {"numpy (hand-written)": numpy_loss, "tapegrad": tape_loss},
        "Add, (1, 30) + (1, 30)": {"numpy (hand-written)": numpy_add, "tapegrad": tape_add},
    }


def mlp_contenders(lr: float = 0.3) -> dict[str, object]:
    rng = np.random.default_rng(0)
    xs = rng.random((64, 1, 64))
    ys = rng.integers(0, 10, (64, 1))
    W1 = rng.standard_normal((64, 30)) / 8
    b1 = np.zeros(30)
    W2 = rng.standard_normal((30, 10)) / np.sqrt(30)
    b2 = np.zeros(10)
    state = {"i": 0}

    def numpy_step() -> None:
        i = state["i"] = (state["i"] + 1) % 64
        x, y = xs[i], ys[i]
        h = np.tanh((x @ W1 + b1) * 0.5)
        h *= 0.5
        h += 0.5
        z = h @ W2 + b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        d = p.copy()
        d[0, y[0]] -= 1.0
        dh = d @ W2.T * h * (1.0 - h)
        W2[...] -= lr * (h.T @ d)
        b2[...] -= lr * d.sum(axis=0)
        W1[...] -= lr * (x.T @ dh)
        b1[...] -= lr * dh.sum(axis=0)

    graph = tg.Graph("MLP", seed=0)
    a1 = graph.get_operation("Affine", [64, 30])
    sig = graph.get_operation("Sigmoid")
    a2 = graph.get_operation("Affine", [30, 10])
    loss = graph.get_operation("SoftmaxLoss")
    params = list(graph.parameter.variable_dict.values())

    def tape_step() -> None:
        i = state["i"] = (state["i"] + 1) % 64
        loss.forward(a2(sig(a1(xs[i]))))
        loss.loss(ys[i])
        graph.backward()
        for v in params:
            v.value -= lr * v.grad
            v.clear_grad()

    return {"numpy (hand-written)": numpy_step, "tapegrad public API": tape_step}


def main() -> None:
    report("Sigmoid forward+backward, (1, 30)", compare(sigmoid_contenders(), number=5000), "numpy (hand-written)")
    for title, contenders in op_contenders().items():
        report(f"{title} forward+backward, batch 1", compare(contenders, number=5000), "numpy (hand-written)")
    report("Seed MLP training step, batch 1", compare(mlp_contenders(), number=2000), "numpy (hand-written)")


if __name__ == "__main__":
    main()
