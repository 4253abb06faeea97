"""Peak memory of one training step above what the step starts with (its parameters, optimizer state
and data), measured with tracemalloc (numpy reports its arrays to it):

    python benchmarks/bench_memory.py [--batch 256] [--sizes 784 512 512 10]

An MLP (Affine, Relu, ..., Affine, softmax loss) trained with SGD: hand-written numpy (updating in
place), tapegrad eager (the README's seed loop, with ``tapegrad.optim.SGD``), tapegrad captured, and
the Trainer. Each is measured on its third step (the first two make whatever a step keeps: optimizer
state, records), as a ratio to hand-written numpy's peak.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import tracemalloc
from collections.abc import Callable

import numpy as np

import tapegrad as tg
from tapegrad.optim import SGD

LR = 0.01


class Net:
    """Affine -> Relu -> ... -> Affine -> SoftmaxLoss."""

    def __init__(self, sizes: list[int]) -> None:
        self.graph = tg.Graph("MLP", seed=0)
        self.layers = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            self.layers.append(self.graph.get_operation("layers:Affine", [a, b]))
            if i < len(sizes) - 2:
                self.layers.append(self.graph.get_operation("activations:Relu"))
        self.softmax_loss = self.graph.get_operation("losses:SoftmaxLoss")
        self.input_size, self.output_size = sizes[0], sizes[-1]

    def forward(self, x: object) -> tg.Variable:
        for layer in self.layers:
            x = layer(x)
        return self.softmax_loss(x)  # type: ignore[no-any-return]

    def loss(self, y: object) -> float:
        return self.softmax_loss.loss(y)  # type: ignore[no-any-return]


def numpy_step(sizes: list[int]) -> Callable[[np.ndarray, np.ndarray], None]:
    """The same step as one writes it in numpy: each activation and gradient a new array, each update in place."""
    net = Net(sizes)  # the same starting weights
    weights = [(layer.W.value.copy(), layer.b.value.copy()) for layer in net.layers[::2]]

    def step(x: np.ndarray, y: np.ndarray) -> None:
        inputs, h = [], x
        for k, (W, b) in enumerate(weights):
            inputs.append(h)
            h = h @ W + b
            if k < len(weights) - 1:
                h = np.maximum(h, 0.0)
        e = np.exp(h - h.max(axis=1, keepdims=True))
        grad = e / e.sum(axis=1, keepdims=True)
        grad[np.arange(len(y)), y] -= 1.0
        grad /= len(y)
        for k in range(len(weights) - 1, -1, -1):
            W, b = weights[k]
            below = (grad @ W.T) * (inputs[k] > 0) if k else None
            W -= LR * (inputs[k].T @ grad)
            b -= LR * grad.sum(axis=0)
            grad = below

    return step


def eager_step(sizes: list[int]) -> Callable[[np.ndarray, np.ndarray], None]:
    net = Net(sizes)
    optimizer = SGD(net.graph.parameter, lr=LR)

    def step(x: np.ndarray, y: np.ndarray) -> None:
        net.forward(x)
        net.loss(y)
        net.graph.backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def captured_step(sizes: list[int]) -> Callable[[np.ndarray, np.ndarray], None]:
    net = Net(sizes)
    optimizer = SGD(net.graph.parameter, lr=LR)

    @net.graph.capture
    def step(x: np.ndarray, y: np.ndarray) -> float:
        net.forward(x)
        loss = net.loss(y)
        net.graph.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    return step  # type: ignore[no-any-return]


def trainer_step(sizes: list[int]) -> Callable[[np.ndarray, np.ndarray], None]:
    net = Net(sizes)
    trainer = tg.Trainer(net, SGD(net.graph.parameter, lr=LR), batch_size=10**9, progress=False, verbose=False)
    return lambda x, y: trainer.train(x, y, epochs=1)  # (one epoch of one batch: one step)


def peak(step: Callable[[np.ndarray, np.ndarray], None], x: np.ndarray, y: np.ndarray) -> int:
    """Bytes allocated at the peak of one step, above what was allocated when it began."""
    for _ in range(2):
        step(x, y)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        step(x, y)
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return top - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sizes", type=int, nargs="+", default=[784, 512, 512, 10])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.sizes[0]))
    y = rng.integers(0, args.sizes[-1], args.batch)
    contenders = {
        "hand-written numpy": numpy_step,
        "tapegrad eager": eager_step,
        "tapegrad captured": captured_step,
        "tapegrad Trainer (captured)": trainer_step,
    }
    peaks = {name: peak(make(args.sizes), x, y) for name, make in contenders.items()}
    base = peaks["hand-written numpy"]
    print(f"peak memory of one step above its start, MLP {'-'.join(map(str, args.sizes))}, batch {args.batch}:")
    for name, value in peaks.items():
        print(f"  {name:<30} {value / 2**20:7.2f} MiB   {value / base:.2f}x")


if __name__ == "__main__":
    main()
