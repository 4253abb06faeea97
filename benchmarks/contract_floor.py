"""Experiment: how fast could the op contract be if tapegrad checked nothing?

    python benchmarks/contract_floor.py [--repeats 7] [--batch-size 1]

The seed recipe's epoch (as in bench_training.py) four ways, interleaved, median of the repeats:
hand-written numpy, the lean closure tape, tapegrad as shipped, and tapegrad with every check
stripped: the same op classes and op bodies, but a forward wrapper that only makes the Context
and the output Variable, a loss that only seeds the tape, a backward loop that only hands
gradients on, and a bare SGD loop. It patches internals (Context, Variable slots, the tape), so
it is a measurement, not a mode: it shows what the contract's structure costs by itself, which
the checks cannot be blamed for.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from bench_training import LR, bare_loop_epoch, lean_tape_epoch, measure, numpy_epoch

from tapegrad.datasets import load_digits
from tapegrad.models import MLP
from tapegrad.operation import LOSS_OUTPUT, Context
from tapegrad.variable import Variable

_new = object.__new__


def _unchecked_forward(impl: Callable[..., Any], is_loss: bool) -> Callable[..., Any]:
    def forward(self: Any, x: Any) -> Variable:
        ctx = Context()
        ctx.op = self
        ctx.inputs = (x,)
        if x.__class__ is Variable:
            ctx.sole_input = x
            x = x.value
        else:
            ctx.sole_input = None
        out = _new(Variable)
        out.value = impl(self, ctx, x)
        out._grad = None
        ctx.outputs = LOSS_OUTPUT if is_loss else out
        self.graph.forward_ops.append(ctx)
        if is_loss:
            self._last_ctx = ctx
        return out

    return forward


def _unchecked_loss(self: Any, target: np.ndarray) -> float:
    ctx = self.graph.forward_ops[-1]
    _, shifted, total = ctx.saved
    n = len(target)
    if n == 1:
        label = target.item()
        ctx.picked = (0, label)
        return math.log(total[0, 0]) - float(shifted[0, label])
    ctx.picked = (np.arange(n), target)
    return float(np.add.reduce(np.log(total[:, 0]) - shifted[ctx.picked])) / n


def _unchecked_backward(tape: list[Context]) -> None:
    loss = tape[-1]
    tape[-2].outputs._grad = loss.op.backward(loss, 1.0)
    for ctx in reversed(tape[:-1]):
        grad = ctx.op.backward(ctx, ctx.outputs._grad)
        if ctx.sole_input is not None:
            ctx.sole_input._grad = grad
    tape.clear()


def unchecked_epoch(x: np.ndarray, y: np.ndarray, batch: int) -> Callable[[], None]:
    model = MLP(64, 30, 10, seed=0)
    for op in (model.affine1, model.sigmoid, model.affine2, model.softmax_loss):
        impl = type(op).forward.__wrapped__
        op.forward = _unchecked_forward(impl, op is model.softmax_loss).__get__(op)
    model.softmax_loss.loss = _unchecked_loss.__get__(model.softmax_loss)
    tape = model.graph.forward_ops
    variables = list(model.graph.parameter.variable_dict.values())
    rng = np.random.default_rng(0)

    def epoch() -> None:
        order = rng.permutation(len(x))
        xs, ys = x[order], y[order]
        for begin in range(0, len(x), batch):
            model.forward(xs[begin : begin + batch])
            model.loss(ys[begin : begin + batch])
            _unchecked_backward(tape)
            for v in variables:
                value = v.value
                value -= LR * v._grad
                v._grad = None

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    x, _, y, _ = load_digits(seed=0)
    batch = args.batch_size
    contenders: dict[str, Callable[[], object]] = {
        "numpy (hand-written)": numpy_epoch(x, y, batch),
        "lean closure tape": lean_tape_epoch(x, y, batch),
        "tapegrad, every check stripped": unchecked_epoch(x, y, batch),
        "tapegrad (bare loop)": bare_loop_epoch(x, y, batch),
    }
    results = measure(contenders, args.repeats)
    base = results["numpy (hand-written)"]
    steps = -(-len(x) // batch)
    for name, seconds in results.items():
        print(f"batch {batch:>3}  {name:<32} {seconds / steps * 1e6:8.2f} us/step {seconds / base:6.2f}x")


if __name__ == "__main__":
    main()
