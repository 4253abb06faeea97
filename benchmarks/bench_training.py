"""Seconds per epoch of the seed recipe (digits, 64-30-10, sigmoid, softmax loss, SGD).

    python benchmarks/bench_training.py [--repeats 5]

One process, contenders interleaved, median of the repeats: tapegrad's Trainer, a bare loop
over tapegrad's public API, hand-written numpy doing the same math (the baseline), a lean
closure tape without tapegrad's op contract (a reference point: what any tape costs here), and,
when importable, PyTorch eager and scikit-learn's MLPClassifier(solver="sgd") on the same recipe.
Batch sizes 1 and 32.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np

import tapegrad as tg
from tapegrad.datasets import load_digits
from tapegrad.models import MLP
from tapegrad.optim import SGD

LR = 0.3


def initial_weights() -> list[np.ndarray]:
    """Copies of the tapegrad MLP's starting parameters (W1, b1, W2, b2).

    Every contender starts from them and shuffles with the same seed, so all train the same
    trajectory and do the same numeric work epoch after epoch (a model that grows confident
    sooner meets more underflowing exponentials, whose cost differs)."""
    params = MLP(64, 30, 10, seed=0).graph.parameter.variable_dict
    return [params[name].value.copy() for name in ("affine_0.W", "affine_0.b", "affine_1.W", "affine_1.b")]


def numpy_step(params: list[np.ndarray], xb: np.ndarray, yb: np.ndarray, lr: float = LR) -> float:
    """One SGD step of the seed recipe written in numpy, updating ``params`` (W1, b1, W2, b2) in
    place as an optimizer would; returns the batch's summed loss (what the epoch summary reports)."""
    W1, b1, W2, b2 = params
    n = len(yb)
    h = np.tanh((xb @ W1 + b1) * 0.5)
    h *= 0.5
    h += 0.5
    z = h @ W2 + b2
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    # the loss, then (p - onehot) / n in place
    if n == 1:
        label = yb[0]
        total = math.log(s[0, 0]) - float(shifted[0, label])
        p[0, label] -= 1.0
    else:
        rows = np.arange(n)
        total = float(np.add.reduce(np.log(s[:, 0]) - shifted[rows, yb]))
        p[rows, yb] -= 1.0
        p /= n
    dh = p @ W2.T * h * (1.0 - h)
    W2 -= lr * (h.T @ p)
    b2 -= lr * p.sum(axis=0)
    W1 -= lr * (xb.T @ dh)
    b1 -= lr * dh.sum(axis=0)
    return total


def numpy_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], float]:
    params = initial_weights()
    order_rng = np.random.default_rng(0)

    def epoch() -> float:
        order = order_rng.permutation(len(x))
        xs, ys = x[order], y[order]
        total = 0.0
        for begin in range(0, len(x), batch):
            total += numpy_step(params, xs[begin : begin + batch], ys[begin : begin + batch])
        return total / len(x)

    return epoch


class Node:
    """A lean tape's value with a gradient slot (the reference tapes below build on it)."""

    __slots__ = ("grad", "value")

    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.grad: np.ndarray | None = None


def lean_tape_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], float]:
    """The design DESIGN.md measured at 1.1-1.2x: a tape of backward closures, no op contract.

    No Context, no wrapper, no checks: each op is one function that computes, creates its
    output node and appends a closure. It shows what any tape costs on this machine in this
    run, against which tapegrad's contract (a Context and an output Variable per application,
    checked inputs and gradients) is measured.
    """

    W1, b1, W2, b2 = (Node(w) for w in initial_weights())
    tape: list[Callable[[], None]] = []

    def affine(x: Node | np.ndarray, W: Node, b: Node) -> Node:
        data = x.value if isinstance(x, Node) else x
        out = Node(data @ W.value + b.value)

        def back() -> None:
            g = out.grad
            W.grad = data.T @ g
            b.grad = g.sum(axis=0)
            if isinstance(x, Node):
                x.grad = g @ W.value.T

        tape.append(back)
        return out

    def sigmoid(x: Node) -> Node:
        s = np.tanh(x.value * 0.5)
        s *= 0.5
        s += 0.5
        out = Node(s)

        def back() -> None:
            x.grad = out.grad * s * (1.0 - s)

        tape.append(back)
        return out

    def softmax_loss(x: Node, labels: np.ndarray) -> float:
        z = x.value
        n = len(labels)
        shifted = z - z.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        s = e.sum(axis=1, keepdims=True)
        p = e / s
        index = (0, labels[0]) if n == 1 else (np.arange(n), labels)
        value = math.log(s[0, 0]) - float(shifted[index]) if n == 1 else float(np.add.reduce(np.log(s[:, 0]) - shifted[index])) / n

        def back() -> None:
            d = p  # in place, as the numpy baseline does
            d[index] -= 1.0
            if n != 1:
                d /= n
            x.grad = d

        tape.append(back)
        return value

    order_rng = np.random.default_rng(0)

    def epoch() -> float:
        order = order_rng.permutation(len(x))
        xs, ys = x[order], y[order]
        total = 0.0
        for begin in range(0, len(x), batch):
            yb = ys[begin : begin + batch]
            total += softmax_loss(affine(sigmoid(affine(xs[begin : begin + batch], W1, b1)), W2, b2), yb) * len(yb)
            for back in reversed(tape):
                back()
            tape.clear()
            for node in (W1, b1, W2, b2):
                value = node.value
                value -= LR * node.grad
        return total / len(x)

    return epoch


def trainer_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None]:
    model = MLP(64, 30, 10, seed=0)
    trainer = tg.Trainer(model, SGD(model.graph.parameter, LR), batch_size=batch, progress=False, verbose=False)
    return lambda: trainer.train(x, y, epochs=1)


def bare_loop_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None]:
    model = MLP(64, 30, 10, seed=0)
    optimizer = SGD(model.graph.parameter, LR)
    rng = np.random.default_rng(0)

    def epoch() -> None:
        order = rng.permutation(len(x))
        xs, ys = x[order], y[order]
        for begin in range(0, len(x), batch):
            model.forward(xs[begin : begin + batch])
            model.loss(ys[begin : begin + batch])
            model.graph.backward()
            optimizer.step()
            optimizer.zero_grad()

    return epoch


def torch_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 30), torch.nn.Sigmoid(), torch.nn.Linear(30, 10)).double()
    W1, b1, W2, b2 = initial_weights()
    with torch.no_grad():  # the same start as every other contender (Linear keeps W transposed)
        for layer, (W, b) in zip((net[0], net[2]), ((W1, b1), (W2, b2))):
            layer.weight.copy_(torch.from_numpy(W.T))
            layer.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = torch.nn.CrossEntropyLoss()

    order_rng = np.random.default_rng(0)

    def epoch() -> None:
        order = torch.from_numpy(order_rng.permutation(len(x)))
        xs, ys = tx[order], ty[order]
        for begin in range(0, len(x), batch):
            opt.zero_grad()
            loss_fn(net(xs[begin : begin + batch]), ys[begin : begin + batch]).backward()
            opt.step()

    return epoch


def sklearn_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None] | None:
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    clf = MLPClassifier(hidden_layer_sizes=(30,), activation="logistic", solver="sgd", learning_rate_init=LR,
                        batch_size=batch, momentum=0.0, alpha=0.0, random_state=0)
    classes = np.arange(10)

    def epoch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(x, y, classes=classes)

    return epoch


def measure(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for fn in contenders.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    x, _, y, _ = load_digits(seed=0)
    print(f"{'batch':>5}  {'contender':<30} {'s/epoch':>9} {'vs numpy':>9}")
    for batch in args.batch_sizes:
        makers = {
            "numpy (hand-written)": numpy_epoch,
            "lean closure tape (reference)": lean_tape_epoch,
            "tapegrad Trainer": trainer_epoch,
            "tapegrad bare loop": bare_loop_epoch,
            "PyTorch eager": torch_epoch,
            "scikit-learn MLPClassifier": sklearn_epoch,
        }
        contenders: dict[str, Callable[[], object]] = {
            name: fn for name, make in makers.items() if (fn := make(x, y, batch)) is not None
        }
        results = measure(contenders, args.repeats)
        base = results["numpy (hand-written)"]
        for name, seconds in results.items():
            print(f"{batch:>5}  {name:<30} {seconds:9.4f} {seconds / base:8.2f}x")
        for name in set(makers) - set(contenders):
            print(f"{batch:>5}  {name:<30} {'skipped (not importable)':>19}")


if __name__ == "__main__":
    main()
