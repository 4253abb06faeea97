"""The seed recipe (digits, 64-30-10, sigmoid, softmax loss, SGD at lr 0.3), step by step: every
contender trains on the same chunks of the same batches, interleaved (see ``_timing.compare``).

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_training.py [--runs 3] [--batch-sizes 1 32]

Contenders, each from the same starting weights:
- hand-written numpy, updating in place (the baseline);
- a lean closure tape: the same model on a tape of backward closures, with no op contract
  (a reference point for what any tape costs here);
- tapegrad eager: the README's seed loop (``tg.Variable`` inputs, updates through ``.grad``);
- tapegrad captured: the same step under ``graph.capture`` with ``tapegrad.optim.SGD``;
- the tapegrad Trainer (captured steps, its shuffling and checks);
- PyTorch eager and scikit-learn's MLPClassifier (``partial_fit``), when importable.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable

import numpy as np
from _timing import blas_threads, compare, report_runs

import tapegrad as tg
from tapegrad.datasets import load_digits
from tapegrad.optim import SGD

LR = 0.3
STEPS = 32  # steps per timed chunk


class SeedMLP:
    """The README's seed model."""

    def __init__(self) -> None:
        self.graph = tg.Graph("MLP", seed=0)
        self.affine = self.graph.get_operation("Affine", [64, 30])
        self.sigmoid = self.graph.get_operation("Sigmoid")
        self.out = self.graph.get_operation("Affine", [30, 10])
        self.softmax_loss = self.graph.get_operation("SoftmaxLoss")
        self.input_size, self.output_size = 64, 10

    def forward(self, x: object) -> tg.Variable:
        return self.softmax_loss.forward(  # type: ignore[no-any-return]
            self.out.forward(self.sigmoid.forward(self.affine.forward(x)))
        )

    def loss(self, target: object) -> float:
        return self.softmax_loss.loss(target)  # type: ignore[no-any-return]


def initial_weights() -> list[np.ndarray]:
    """Copies of the seed model's starting parameters (W1, b1, W2, b2): every contender starts there."""
    params = SeedMLP().graph.parameter
    return [params[name].value.copy() for name in ("affine_0.W", "affine_0.b", "affine_1.W", "affine_1.b")]


def numpy_step(params: list[np.ndarray], xb: np.ndarray, yb: np.ndarray) -> float:
    """One SGD step of the seed recipe in numpy, updating ``params`` in place; returns the batch loss."""
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
    if n == 1:
        label = yb[0]
        total = math.log(s[0, 0]) - float(shifted[0, label])
        p[0, label] -= 1.0
    else:
        rows = np.arange(n)
        total = float(np.add.reduce(np.log(s[:, 0]) - shifted[rows, yb])) / n
        p[rows, yb] -= 1.0
        p /= n
    dh = p @ W2.T * h * (1.0 - h)
    W2 -= LR * (h.T @ p)
    b2 -= LR * p.sum(axis=0)
    W1 -= LR * (xb.T @ dh)
    b1 -= LR * dh.sum(axis=0)
    return total


class Batches:
    """The same walk through the data for every contender: chunk after chunk of STEPS batches."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        self.x, self.y, self.batch, self.begin = x, y, batch, 0

    def chunk(self) -> tuple[np.ndarray, np.ndarray]:
        size = STEPS * self.batch
        if self.begin + size > len(self.x):
            self.begin = 0
        xs, ys = self.x[self.begin : self.begin + size], self.y[self.begin : self.begin + size]
        self.begin += size
        return xs, ys


def stepping(batches: Batches, step: Callable[[np.ndarray, np.ndarray], object]) -> Callable[[], None]:
    def chunk() -> None:
        xs, ys = batches.chunk()
        b = batches.batch
        for begin in range(0, len(xs), b):
            step(xs[begin : begin + b], ys[begin : begin + b])

    return chunk


def numpy_contender(batches: Batches) -> Callable[[], None]:
    params = initial_weights()
    return stepping(batches, lambda xb, yb: numpy_step(params, xb, yb))


class Node:
    __slots__ = ("grad", "value")

    def __init__(self, value: np.ndarray) -> None:
        self.value = value
        self.grad: np.ndarray | None = None


def lean_tape_contender(batches: Batches) -> Callable[[], None]:
    """A tape of backward closures: no Context, no wrapper, no checks."""
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
        value = (
            math.log(s[0, 0]) - float(shifted[index])
            if n == 1
            else float(np.add.reduce(np.log(s[:, 0]) - shifted[index])) / n
        )

        def back() -> None:
            d = p  # in place, as the numpy baseline does
            d[index] -= 1.0
            if n != 1:
                d /= n
            x.grad = d

        tape.append(back)
        return value

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        value = softmax_loss(affine(sigmoid(affine(xb, W1, b1)), W2, b2), yb)
        for back in reversed(tape):
            back()
        tape.clear()
        for node in (W1, b1, W2, b2):
            v = node.value
            v -= LR * node.grad
        return value

    return stepping(batches, step)


def eager_contender(batches: Batches) -> Callable[[], None]:
    """The README's seed loop, exactly."""
    model = SeedMLP()
    variables = model.graph.parameter.variable_dict

    def step(xb: np.ndarray, yb: np.ndarray) -> None:
        model.forward(tg.Variable(xb))
        model.loss(tg.Variable(yb))
        model.graph.backward()
        for v in variables.values():
            v.value -= LR * v.grad
        model.graph.parameter.clear_grads()

    return stepping(batches, step)


def captured_step() -> Callable[[np.ndarray, np.ndarray], float]:
    """The recommended loop's step (the README's), captured, on a fresh seed model."""
    model = SeedMLP()
    optimizer = SGD(model.graph.parameter, lr=LR)

    @model.graph.capture
    def train_step(xb: np.ndarray, yb: np.ndarray) -> float:
        model.forward(xb)
        loss = model.loss(yb)
        model.graph.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    return train_step  # type: ignore[no-any-return]


def captured_contender(batches: Batches) -> Callable[[], None]:
    return stepping(batches, captured_step())


def trainer_contender(batches: Batches) -> Callable[[], None]:
    model = SeedMLP()
    trainer = tg.Trainer(model, SGD(model.graph.parameter, LR), batch_size=batches.batch, progress=False, verbose=False)

    def chunk() -> None:
        trainer.train(*batches.chunk(), epochs=1)

    return chunk


def torch_contender(batches: Batches) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 30), torch.nn.Sigmoid(), torch.nn.Linear(30, 10)).double()
    W1, b1, W2, b2 = initial_weights()
    with torch.no_grad():  # Linear keeps W transposed
        for layer, (W, b) in zip((net[0], net[2]), ((W1, b1), (W2, b2))):
            layer.weight.copy_(torch.from_numpy(W.T))
            layer.bias.copy_(torch.from_numpy(b))
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def chunk() -> None:
        xs, ys = (torch.from_numpy(a) for a in batches.chunk())
        b = batches.batch
        for begin in range(0, len(xs), b):
            opt.zero_grad()
            loss_fn(net(xs[begin : begin + b]), ys[begin : begin + b]).backward()
            opt.step()

    return chunk


def sklearn_contender(batches: Batches) -> Callable[[], None] | None:
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return None
    clf = MLPClassifier(hidden_layer_sizes=(30,), activation="logistic", solver="sgd", learning_rate_init=LR,
                        batch_size=batches.batch, momentum=0.0, alpha=0.0, random_state=0, shuffle=False)
    classes = np.arange(10)

    def chunk() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.partial_fit(*batches.chunk(), classes=classes)

    return chunk


CONTENDERS = {
    "hand-written numpy": numpy_contender,
    "lean closure tape (reference)": lean_tape_contender,
    "tapegrad eager (README loop)": eager_contender,
    "tapegrad captured": captured_contender,
    "tapegrad Trainer (captured)": trainer_contender,
    "PyTorch eager": torch_contender,
    "scikit-learn MLPClassifier": sklearn_contender,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="whole measurements, for the range of the medians")
    parser.add_argument("--chunks", type=int, default=41, help="timed chunks per contender and run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    x, _, y, _ = load_digits(seed=0)
    print(f"seed recipe, {STEPS} steps per chunk; BLAS threads: {blas_threads()}")
    for batch in args.batch_sizes:
        runs = []
        for _ in range(args.runs):
            contenders = {}
            for name, make in CONTENDERS.items():
                fn = make(Batches(x, y, batch))
                if fn is not None:
                    contenders[name] = fn
            runs.append(compare(contenders, "hand-written numpy", chunks=args.chunks))
        report_runs(f"batch {batch}: per step", runs, per=STEPS)


if __name__ == "__main__":
    main()
