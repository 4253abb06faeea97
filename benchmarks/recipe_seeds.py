"""Test accuracy of the seed recipe (64-30-10, sigmoid, SGD, batch 1, 40 epochs) over seeds.

    python benchmarks/recipe_seeds.py [--lr 0.3 0.01] [--seeds 10]

Used to choose `tapegrad train`'s default learning rate: it must reach 97% for at least 9
of the seeds 0..9.
"""

from __future__ import annotations

import argparse

import numpy as np

from tapegrad.datasets import load_digits
from tapegrad.models import MLP
from tapegrad.optim import SGD
from tapegrad.training import Trainer


def run(seed: int, lr: float, epochs: int = 40) -> float:
    x_train, x_test, y_train, y_test = load_digits(seed=seed)
    model = MLP(64, 30, 10, seed=seed)
    trainer = Trainer(model, SGD(model.graph.parameter, lr), batch_size=1, progress=False, seed=seed, verbose=False)
    trainer.train(x_train, y_train, epochs=epochs)
    return trainer.test(x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, nargs="+", default=[0.3, 0.01])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    for lr in args.lr:
        accuracies = np.array([run(seed, lr) for seed in range(args.seeds)])
        print(
            f"lr {lr:g}: mean {accuracies.mean():.4f}, min {accuracies.min():.4f}, "
            f">= 0.97 for {(accuracies >= 0.97).sum()}/{args.seeds} seeds: {np.round(accuracies, 4).tolist()}"
        )


if __name__ == "__main__":
    main()
