"""Per-op overhead of the tape against hand-written numpy, measured in one run.

    python benchmarks/bench_overhead.py

Reports the tape's own work (ops that compute nothing), also in the seed step's shape against a
lean closure tape without tapegrad's op contract; forward+backward of Sigmoid on its own; the
marginal cost per application of Sigmoid,
Affine and Add in a chain of ten (one backward per chain); SoftmaxLoss forward+loss+backward;
and one training step of the seed MLP (64-30-10, batch 1, SGD); each against the same math
written in numpy.
"""

from __future__ import annotations

import math

import numpy as np
from _timing import compare, report
from bench_training import Node, initial_weights, numpy_step

import tapegrad as tg
from tapegrad.optim import SGD


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


CHAIN = 10


def chain_contenders() -> dict[str, dict[str, object]]:
    """Marginal cost per op: a chain of CHAIN applications, one backward, per application.

    The graph's fixed cost per backward() is spread over the chain, so what remains is what
    one more op costs: its numpy calls plus the tape's per-op work.
    """
    rng = np.random.default_rng(0)
    x_np, seed = rng.standard_normal((1, 30)), rng.standard_normal((1, 30))
    W, b = rng.standard_normal((30, 30)) / 6, rng.standard_normal(30) / 6
    graph = tg.Graph(seed=0)
    sig = graph.get_operation("Sigmoid")
    affine = graph.get_operation("Affine", [30, 30])
    add = graph.get_operation("Add")
    bias = tg.Variable(b)
    params = [affine.W, affine.b, bias]

    def run(step: object) -> object:
        def tape() -> None:
            y = x = tg.Variable(x_np)
            for _ in range(CHAIN):
                y = step(y)  # type: ignore[operator]
            graph.backward(grads={y: seed})
            for p in (*params, x):
                p._grad = None

        return tape

    def numpy_sigmoid() -> None:
        outs, y = [], x_np
        for _ in range(CHAIN):
            y = np.tanh(y * 0.5)
            y *= 0.5
            y += 0.5
            outs.append(y)
        g = seed
        for s in reversed(outs):
            g = g * s * (1.0 - s)

    def numpy_affine() -> None:
        ins, y = [], x_np
        for _ in range(CHAIN):
            ins.append(y)
            y = y @ W
            y += b
        g = seed
        dW, db = np.zeros_like(W), np.zeros_like(b)  # one shared layer: gradients accumulate
        for x in reversed(ins):
            dW += x.T @ g
            db += g.sum(axis=0)
            g = g @ W.T

    def numpy_add() -> None:
        y = x_np
        for _ in range(CHAIN):
            y = y + b
        g = seed
        db = np.zeros_like(b)
        for _ in range(CHAIN):
            db += g.sum(axis=0)  # the broadcast bias's gradient, summed back

    affine.W.value[...] = W
    affine.b.value[...] = b
    return {
        "Sigmoid (1, 30)": {"numpy (hand-written)": numpy_sigmoid, "tapegrad": run(sig)},
        "Affine 30->30, batch 1": {"numpy (hand-written)": numpy_affine, "tapegrad": run(affine)},
        "Add (1, 30) + (30,)": {"numpy (hand-written)": numpy_add, "tapegrad": run(lambda y: add(y, bias))},
    }


class Nothing(tg.Operation):
    """An op with no arithmetic: what is left is the tape's own work per application."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        ctx.save(x)
        return x

    def backward(self, ctx: tg.Context, grad: np.ndarray) -> np.ndarray:
        return grad


def tape_cost_per_op() -> float:
    """Seconds per application (forward+backward) of an op that computes nothing, chain of CHAIN."""
    graph = tg.Graph()
    op = graph.get_operation(Nothing)
    x_np, seed = np.zeros((1, 4)), np.ones((1, 4))

    def chain() -> None:
        y = x = tg.Variable(x_np)
        for _ in range(CHAIN):
            y = op(y)
        graph.backward(grads={y: seed})
        x._grad = None

    return compare({"chain": chain}, number=2000)["chain"] / CHAIN


class NothingLoss(tg.Loss):
    """A loss with no arithmetic (its gradient is any array of the input's shape)."""

    def forward(self, ctx: tg.Context, x: np.ndarray) -> np.ndarray:
        ctx.saved = (x,)
        return x

    def loss(self, ctx: tg.Context, target: np.ndarray) -> float:
        return 0.0

    def backward(self, ctx: tg.Context, grad: float) -> np.ndarray:
        return ctx.saved[0]  # type: ignore[no-any-return]


def contract_price_contenders() -> dict[str, object]:
    """The seed step's shape (three ops and a loss: forward, loss, backward) with ops that
    compute nothing, through tapegrad and through a lean closure tape (no op contract)."""
    graph = tg.Graph()
    ops = [graph.get_operation(Nothing) for _ in range(3)]
    loss = graph.get_operation(NothingLoss)
    x_np, label = np.zeros((1, 4)), np.array([0])
    x = tg.Variable(x_np)

    def tapegrad_step() -> None:
        a, b, c = ops
        loss.forward(c.forward(b.forward(a.forward(x))))
        loss.loss(label)
        graph.backward()
        x._grad = None

    tape: list[object] = []
    node = Node(x_np)

    def nothing(x: Node) -> Node:
        out = Node(x.value)

        def back() -> None:
            x.grad = out.grad

        tape.append(back)
        return out

    def nothing_loss(x: Node, target: np.ndarray) -> float:
        def back() -> None:
            x.grad = x.value

        tape.append(back)
        return 0.0

    def lean_step() -> None:
        nothing_loss(nothing(nothing(nothing(node))), label)
        for back in reversed(tape):
            back()  # type: ignore[operator]
        tape.clear()
        node.grad = None

    return {"lean closure tape": lean_step, "tapegrad": tapegrad_step}


def loss_contenders() -> dict[str, object]:
    """SoftmaxLoss forward, loss and backward at batch 1 (it ends a pass: no chain)."""
    rng = np.random.default_rng(0)
    z_np, label = rng.standard_normal((1, 10)), np.array([3])
    graph = tg.Graph(seed=0)
    loss = graph.get_operation("SoftmaxLoss")
    z = tg.Variable(z_np)

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

    return {"numpy (hand-written)": numpy_loss, "tapegrad": tape_loss}


def mlp_contenders(lr: float = 0.3) -> dict[str, object]:
    """One step of the seed recipe (batch 1, plain SGD): the same math both ways, in place."""
    rng = np.random.default_rng(0)
    xs = rng.random((64, 1, 64))
    ys = rng.integers(0, 10, (64, 1))
    params = initial_weights()
    state = {"i": 0}

    def step_numpy() -> None:
        i = state["i"] = (state["i"] + 1) % 64
        numpy_step(params, xs[i], ys[i], lr)

    graph = tg.Graph("MLP", seed=0)
    a1 = graph.get_operation("Affine", [64, 30])
    sig = graph.get_operation("Sigmoid")
    a2 = graph.get_operation("Affine", [30, 10])
    loss = graph.get_operation("SoftmaxLoss")
    optimizer = SGD(graph.parameter, lr)

    def tape_step() -> None:
        i = state["i"] = (state["i"] + 1) % 64
        loss.forward(a2.forward(sig.forward(a1.forward(xs[i]))))
        loss.loss(ys[i])
        graph.backward()
        optimizer.step()
        optimizer.zero_grad()

    return {"numpy (hand-written)": step_numpy, "tapegrad public API": tape_step}


def main() -> None:
    report(
        "The seed step's shape with ops that compute nothing (3 ops + loss: forward, loss, backward)",
        compare(contract_price_contenders(), number=5000),
        "lean closure tape",
    )
    # (measured second: the first timings of a process run slow while the machine warms up)
    print(f"\ntape's own work per op application (forward+backward, no arithmetic): {tape_cost_per_op() * 1e6:.2f} us")
    report("Sigmoid forward+backward, (1, 30)", compare(sigmoid_contenders(), number=5000), "numpy (hand-written)")
    for title, contenders in chain_contenders().items():
        results = {k: v / CHAIN for k, v in compare(contenders, number=1000).items()}
        report(f"{title}: forward+backward per application, chain of {CHAIN}", results, "numpy (hand-written)")
    report("SoftmaxLoss forward+loss+backward, batch 1", compare(loss_contenders(), number=5000), "numpy (hand-written)")
    report("Seed MLP training step, batch 1", compare(mlp_contenders(), number=2000), "numpy (hand-written)")


if __name__ == "__main__":
    main()
