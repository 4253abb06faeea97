"""The training commands of the CLI: ``tapegrad train`` and ``tapegrad evaluate``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_LR = {"sgd": 0.3, "adam": 0.001}


def _number(kind: type, minimum: float, inclusive: bool = True) -> Any:
    """An argparse type: ``kind`` (int or float), finite, at least (or above) ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None
        if not np.isfinite(value) or value < minimum or (not inclusive and value == minimum):
            bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


_positive_int = _number(int, 1)
_positive_float = _number(float, 0.0, inclusive=False)
_seed = _number(int, 0)


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the seed's MLP (64-hidden-10, sigmoid, softmax loss) on scikit-learn's digits",
        description="Train the seed's MLP on the digits data set and report test accuracy per epoch.",
    )
    p.add_argument("--epochs", type=_positive_int, default=40, help="epochs (default 40)")
    p.add_argument("--hidden", type=_positive_int, default=30, help="hidden units (default 30)")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: 0.3 for sgd, 0.001 for adam)")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="mini-batch size (default 1, the seed's)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="optimizer (default sgd)")
    p.add_argument("--seed", type=_seed, default=0, help="fixes the split, the initial values and the shuffling")
    p.add_argument("--gradcheck", action="store_true", help="check the model's gradients numerically first")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of train loss and test accuracy per epoch")
    p.add_argument("--save", metavar="PATH", help="write the trained parameters (.npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy of saved parameters on the digits test split")
    p.add_argument("--load", metavar="PATH", required=True, help="parameters written by `tapegrad train --save`")
    p.add_argument("--seed", type=_seed, default=0, help="the split to evaluate on (default 0)")
    p.add_argument("--hidden", type=_positive_int, default=None, help="hidden units (default: read from the file)")
    p.set_defaults(func=cmd_evaluate)


def _check_plotting(path: str | None) -> bool:
    if path is None:
        return True
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("tapegrad train: --plot needs matplotlib: pip install 'tapegrad[plot]'", file=sys.stderr)
        return False
    return True


def _plot(history: Any, path: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(epochs, history.train_loss, color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    accuracy_axis = loss_axis.twinx()
    accuracy_axis.plot(epochs, history.test_accuracy, color="tab:orange", label="test accuracy")
    accuracy_axis.set_ylabel("test accuracy", color="tab:orange")
    fig.suptitle("tapegrad: seed MLP on digits")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def cmd_train(args: argparse.Namespace) -> int:
    from .datasets import load_digits
    from .gradcheck import numerical_gradient_check
    from .models import MLP
    from .optim import SGD, Adam
    from .training import Trainer
    from .variable import Variable

    if not _check_plotting(args.plot):
        return 2
    x_train, x_test, y_train, y_test = load_digits(seed=args.seed)
    model = MLP(x_train.shape[1], args.hidden, 10, seed=args.seed)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    optimizer = SGD(model.graph.parameter, lr) if args.optimizer == "sgd" else Adam(model.graph.parameter, lr)
    print(
        f"tapegrad train: MLP {x_train.shape[1]}-{args.hidden}-10, {args.optimizer} lr={lr:g}, "
        f"batch size {args.batch_size}, {args.epochs} epochs, seed {args.seed} "
        f"({len(x_train)} train / {len(x_test)} test samples)"
    )
    if args.gradcheck:
        report = numerical_gradient_check(model, Variable(x_train[:8]), Variable(y_train[:8]))
        if not report:
            print("tapegrad train: gradient check FAILED; not training", file=sys.stderr)
            return 1
        print("gradient check passed")
    trainer = Trainer(model, optimizer, batch_size=args.batch_size, progress=not args.no_progress, seed=args.seed)
    history = trainer.train(x_train, y_train, x_test, y_test, epochs=args.epochs)
    final = history[-1].test_accuracy
    print(f"final test accuracy: {final:.4f} ({sum(history.seconds):.1f} s of training)")
    if args.save:
        print(f"saved parameters to {model.graph.parameter.save(args.save)}")
    if args.plot:
        print(f"wrote {_plot(history, args.plot)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .datasets import load_digits
    from .models import MLP
    from .parameter import read_parameter_file
    from .training import Trainer

    path, arrays = read_parameter_file(args.load)  # read once: for the hidden size and the values
    hidden = args.hidden
    if hidden is None:
        hidden = int(arrays["affine_0.W"].shape[1]) if "affine_0.W" in arrays else 30
    x_train, x_test, y_train, y_test = load_digits(seed=args.seed)
    model = MLP(x_train.shape[1], hidden, 10, seed=args.seed)
    model.graph.parameter.load_state_dict(arrays, source=f"parameter file {str(path)!r}")
    accuracy = Trainer(model, optimizer=None, verbose=False).test(x_test, y_test)
    print(f"test accuracy: {accuracy:.4f} ({len(x_test)} samples, seed {args.seed})")
    return 0
