"""tapegrad.sklearn.MLPClassifier against scikit-learn's MLPClassifier on digits, one run.

    python benchmarks/bench_sklearn.py [--epochs 40] [--repeats 3]

Same architecture (64-30-10, logistic), solver (plain SGD, no momentum, no L2), learning rate,
batch size and number of epochs (early stopping off in both); fit time is the median of the
repeats, measured alternately; accuracy is on the held-out quarter of digits.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

from sklearn.neural_network import MLPClassifier as SklearnMLP

from tapegrad.datasets import load_digits
from tapegrad.sklearn import MLPClassifier as TapegradMLP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.3)
    args = parser.parse_args()
    x_train, x_test, y_train, y_test = load_digits(seed=0)
    print(f"{'batch':>5}  {'estimator':<32} {'fit s':>7} {'ratio':>6} {'test acc':>9}")
    for batch in (1, 32):
        makers = {
            "scikit-learn MLPClassifier": lambda batch=batch: SklearnMLP(
                hidden_layer_sizes=(30,), activation="logistic", solver="sgd", learning_rate_init=args.lr,
                batch_size=batch, max_iter=args.epochs, momentum=0.0, alpha=0.0, tol=0.0,
                n_iter_no_change=args.epochs + 1, random_state=0,
            ),
            "tapegrad.sklearn.MLPClassifier": lambda batch=batch: TapegradMLP(
                hidden_layer_sizes=(30,), activation="sigmoid", optimizer="sgd", learning_rate=args.lr,
                batch_size=batch, max_epochs=args.epochs, tol=None, random_state=0,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in makers}
        scores: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, make in makers.items():
                est = make()
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est.fit(x_train, y_train)
                times[name].append(time.perf_counter() - start)
                scores[name] = est.score(x_test, y_test)
        base = statistics.median(times["scikit-learn MLPClassifier"])
        for name in makers:
            seconds = statistics.median(times[name])
            print(f"{batch:>5}  {name:<32} {seconds:7.2f} {seconds / base:5.2f}x {scores[name]:9.4f}")


if __name__ == "__main__":
    main()
