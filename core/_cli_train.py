"""The training commands of the CLI: ``tapegrad train`` and ``tapegrad evaluate``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import math
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import parameter as _parameter
from .errors import TapegradError

DEFAULT_LR = {"sgd": 0.3, "adam": 0.001}


def _number(kind: type, minimum: float, inclusive: bool = True, maximum: float | None = None) -> Any:
    """An argparse type: ``kind`` (int or float), finite, at least (or above) ``minimum``, at most ``maximum``."""
    what = "a whole number" if kind is int else "a number"
    show = str if kind is int else "{:g}".format

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if maximum is not None and not minimum <= value <= maximum:  # checked first: a huge int is no float
            raise argparse.ArgumentTypeError(f"expected {what} from {show(minimum)} to {show(maximum)}, got {text}")
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
        if value < minimum or (not inclusive and value == minimum):
            bound = f"at least {show(minimum)}" if inclusive else f"above {show(minimum)}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


MAX_COUNT = 10**9  # epochs, batch size: far beyond any use (a batch larger than the data is the whole data)
MAX_HIDDEN = 10**6  # a 64-1000000-10 MLP already takes over 1 GB with its gradients
_positive_int = _number(int, 1, maximum=MAX_COUNT)
_hidden = _number(int, 1, maximum=MAX_HIDDEN)
_positive_float = _number(float, 0.0, inclusive=False)
_seed = _number(int, 0, maximum=2**32 - 1)  # what scikit-learn's split accepts


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the seed's MLP (64-hidden-10, sigmoid, softmax loss) on scikit-learn's digits",
        description="Train the seed's MLP on the digits data set and report test accuracy per epoch.",
    )
    p.add_argument("--epochs", type=_positive_int, default=40, help="epochs (default 40)")
    p.add_argument("--hidden", type=_hidden, default=30, help=f"hidden units (default 30, at most {MAX_HIDDEN})")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: 0.3 for sgd, 0.001 for adam)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=1,
        help="mini-batch size (default 1, the seed's; one larger than the training set makes one batch of it)",
    )
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd", help="optimizer (default sgd)")
    p.add_argument("--seed", type=_seed, default=0, help="fixes the split, the initial values and the shuffling")
    p.add_argument("--gradcheck", action="store_true", help="check the model's gradients numerically first")
    p.add_argument("--plot", metavar="PATH", help="write a plot of train loss and test accuracy per epoch (format from the extension, default PNG)")
    p.add_argument("--save", metavar="PATH", help="write the trained parameters (.npz)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-capture", action="store_true",
        help="run every step eagerly, fully checked, instead of replaying captured steps (Trainer(capture=False))",
    )
    p.add_argument(
        "--profile", action="store_true",
        help="time each op's own forward and backward, the optimizer and the framework around them during "
        "training, and print the table per op class afterwards",
    )
    p.add_argument(
        "--draw", metavar="PATH",
        help="after training, draw one training step of the model (forward, loss, backward on the first batch, "
        "from the captured record unless --no-capture) with its gradient norms: .dot needs nothing; "
        ".svg, .png and .pdf need Graphviz (pip install 'tapegrad[draw]' and the dot program); without it, "
        "training is refused and the .dot is written anyway",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy of saved parameters on the digits test split")
    p.add_argument("--load", metavar="PATH", required=True, help="parameters written by `tapegrad train --save`")
    p.add_argument("--seed", type=_seed, default=0, help="the split to evaluate on (default 0)")
    p.add_argument("--hidden", type=_hidden, default=None, help=f"hidden units (default: read from the file; at most {MAX_HIDDEN})")
    p.set_defaults(func=cmd_evaluate)


def _unwritable(target: Path) -> str | None:
    """Why ``target`` cannot be written (None when it can), found without leaving anything behind."""
    try:
        mode: int | None = target.stat().st_mode
    except OSError as exc:  # a name too long, a loop of symbolic links, ...: writing would fail the same way
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return exc.strerror or str(exc)
        mode = None  # not there yet (ENOTDIR: under a file, found below)
    if mode is not None and stat.S_ISDIR(mode):
        return "it is a directory"
    if mode is not None and not stat.S_ISREG(mode):
        return "it exists and is not a regular file"
    folder = target.parent
    while not folder.exists():  # the first existing ancestor: the folders below it get created
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        return f"{str(folder)!r} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):  # an unnamed file where the OS allows: nothing to clean up
            pass
    except OSError as exc:
        return f"folder {str(folder)!r} is not writable ({exc.strerror or exc})"
    if mode is not None and not os.access(target, os.W_OK):
        return "it is not writable"
    return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing ``a`` and ``b`` writes one file: the same path once resolved (``./x`` and ``x``,
    symbolic links), or, both there already, one file under two names (hard links, letter case)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # not both there yet
        return False


def _collision(outputs: list[tuple[str, Path]]) -> str | None:
    """Two outputs that are one file, so that one would overwrite the other, said in one line (None if none)."""
    for i, (option, target) in enumerate(outputs):
        for earlier, other in outputs[:i]:
            if _same_file(other, target):
                return f"{earlier} {str(other)!r} and {option} {str(target)!r} are the same file: give them different paths"
    return None


def _plot_target(path: str) -> tuple[Path, str] | str:
    """The file ``--plot path`` writes and its format, or why it cannot be plotted there."""
    try:
        import matplotlib
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        return "--plot needs matplotlib: pip install 'tapegrad[plot]'"
    target = Path(path)
    fmt = target.suffix[1:].lower()
    if not fmt:  # like matplotlib: no extension means its default format, added to the name
        fmt = str(matplotlib.rcParams["savefig.format"])
        target = target.with_name(f"{target.name}.{fmt}")
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        return f"cannot plot to {path!r}: unsupported format {fmt!r} (supported: {', '.join(sorted(supported))})"
    try:  # an empty figure in memory: finds formats whose writer is missing (LaTeX for pgf, ...)
        _render(None, fmt)
    except Exception as exc:  # whatever the format's writer raises
        return f"cannot plot to {path!r}: format {fmt!r} does not work here ({type(exc).__name__}: {exc})"
    return target, fmt


def _draw_target(path: str) -> tuple[Path, Path, str] | str:
    """(the file ``--draw path`` writes, the DOT file beside it, why it cannot be rendered or ""),
    or why it cannot draw there at all. Rendering needs Graphviz, looked for now: a missing one must
    not cost the training."""
    from .draw import FORMATS, INSTALL

    target = Path(path)
    fmt = target.suffix[1:].lower()
    if fmt not in FORMATS:
        supported = ", ".join("." + f for f in FORMATS)
        return f"cannot draw to {path!r}: unsupported format {fmt or '(no extension)'!r} (supported: {supported})"
    renderer = FORMATS[fmt]
    if renderer is not None:
        try:
            import graphviz  # noqa: F401
        except ImportError:
            missing = "the graphviz package"
        else:
            missing = "" if shutil.which("dot") else "Graphviz's dot program"
        if missing:
            return target, target.with_suffix(".dot"), f"rendering {fmt.upper()} needs {missing}, which is missing: {INSTALL}"
    return target, target if renderer is None else target.with_suffix(".dot"), ""


def _draw_step(model: Any, x: np.ndarray, y: np.ndarray, capture: bool, target: Path) -> None:
    """Draw forward, loss and backward on ``(x, y)``, captured (from its record) or eagerly; the
    parameters keep their values, and their gradients are cleared afterwards."""
    from .draw import draw

    graph = model.graph

    def gradient_step(x: np.ndarray, y: np.ndarray) -> float:
        model.forward(x)
        value = model.loss(y)
        graph.backward()
        return value  # type: ignore[no-any-return]

    graph.train()
    try:
        if capture:
            step = graph.capture(gradient_step)
            step(x, y)
            draw(step, target)
        else:
            gradient_step(x, y)
            draw(graph, target)
    finally:
        graph.parameter.clear_grads()


def _render(history: Any, fmt: str) -> bytes:
    """The figure of train loss and test accuracy per epoch (empty for None) as ``fmt`` bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    loss_axis = fig.add_subplot()
    if history is not None:
        epochs = [r.epoch for r in history]
        loss_axis.plot(epochs, history.train_loss, color="tab:blue", label="train loss")
        loss_axis.set_xlabel("epoch")
        loss_axis.set_ylabel("train loss", color="tab:blue")
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot(epochs, history.test_accuracy, color="tab:orange", label="test accuracy")
        accuracy_axis.set_ylabel("test accuracy", color="tab:orange")
        fig.suptitle("tapegrad: seed MLP on digits")
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100)
    return buffer.getvalue()


def _error(command: str, message: str) -> None:
    print(f"tapegrad {command}: error: {message}", file=sys.stderr)


def _save_or_rescue(parameter: Any, path: str) -> bool:
    """Save to ``path``; if that fails, say why in one line and save to a temporary file instead."""
    try:
        print(f"saved parameters to {parameter.save(path)}")
        return True
    except OSError as exc:
        reason = f"cannot write parameters to {path!r}: {exc.strerror or exc}"
    try:
        fd, rescue = tempfile.mkstemp(prefix="tapegrad-parameters-", suffix=".npz")
        os.close(fd)
        parameter.save(rescue)
        _error("train", f"{reason}; saved them to {rescue!r} instead")
    except OSError as exc:
        _error("train", f"{reason}; saving them to a temporary file failed too ({exc.strerror or exc})")
    return False


def cmd_train(args: argparse.Namespace) -> int:
    from .datasets import load_digits
    from .gradcheck import numerical_gradient_check
    from .models import MLP
    from .optim import SGD, Adam
    from .parameter import parameter_file_path
    from .profile import profile
    from .training import Trainer
    from .variable import Variable

    # Every output is checked before training, so that a bad path never costs the trained model.
    plot: tuple[Path, str] | None = None
    if args.plot is not None:
        found = _plot_target(args.plot)
        if isinstance(found, str):
            _error("train", found)
            return 2
        plot = found
    outputs = [("--plot", plot[0])] if plot else []
    if args.save is not None:
        try:
            outputs.insert(0, ("--save", parameter_file_path(args.save)))
        except OSError as exc:
            reason = "it is a directory" if isinstance(exc, IsADirectoryError) else exc.strerror or str(exc)
            _error("train", f"cannot write --save {args.save!r}: {reason}")
            return 2
    drawing: tuple[Path, Path] | None = None
    unrenderable = ""
    if args.draw is not None:
        found_draw = _draw_target(args.draw)
        if isinstance(found_draw, str):
            _error("train", found_draw)
            return 2
        target, dot_file, unrenderable = found_draw
        drawing = target, dot_file
        outputs += [("--draw", target)] + ([("--draw's DOT text", dot_file)] if dot_file != target else [])
    for option, target in outputs:
        try:
            problem = _unwritable(target)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            problem = getattr(exc, "strerror", None) or str(exc)
        if problem:
            _error("train", f"cannot write {option} {str(target)!r}: {problem}")
            return 2
    collision = _collision(outputs)
    if collision:
        _error("train", collision)
        return 2

    x_train, x_test, y_train, y_test = load_digits(seed=args.seed)
    model = MLP(x_train.shape[1], args.hidden, 10, seed=args.seed)
    if drawing is not None and unrenderable:
        # Refused before training (a missing renderer must not cost it), but the DOT text is
        # written anyway, as tg.draw writes it: one step of the model as built, untrained.
        size = min(args.batch_size, len(x_train))
        _draw_step(model, x_train[:size], y_train[:size], not args.no_capture, drawing[1])
        _error(
            "train",
            f"cannot draw to {args.draw!r}: {unrenderable}; the DOT text of one training step of the untrained "
            f"model is in {str(drawing[1])!r} (render it once Graphviz is there, or draw to a .dot file)",
        )
        return 2
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
    trainer = Trainer(
        model, optimizer, batch_size=args.batch_size, progress=not args.no_progress, seed=args.seed,
        capture=not args.no_capture,
    )
    with profile(model.graph) if args.profile else contextlib.nullcontext() as prof:
        history = trainer.train(x_train, y_train, x_test, y_test, epochs=args.epochs)
    final = history[-1].test_accuracy
    print(f"final test accuracy: {final:.4f} ({sum(history.seconds):.1f} s of training)")
    if prof is not None:
        print(f"\nprofile of the training ({'eager' if args.no_capture else 'captured'} steps, times of each op's own code):")
        print(prof.table(), end="")
    ok = True
    if args.save is not None:
        ok = _save_or_rescue(model.graph.parameter, args.save)
    if plot is not None:
        target, fmt = plot
        try:
            image = _render(history, fmt)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image)
            print(f"wrote {target}")
        except OSError as exc:
            _error("train", f"cannot write --plot {str(target)!r}: {exc.strerror or exc}")
            ok = False
        except Exception as exc:  # whatever matplotlib raises: the parameters are saved already
            _error("train", f"cannot plot to {str(target)!r}: {type(exc).__name__}: {exc}")
            ok = False
    if drawing is not None:
        target, dot_file = drawing
        size = min(args.batch_size, len(x_train))
        try:
            _draw_step(model, x_train[:size], y_train[:size], not args.no_capture, target)
            print(f"wrote {target}" + (f" (and its DOT text, {dot_file})" if dot_file != target else ""))
        except OSError as exc:
            _error("train", f"cannot write --draw {str(target)!r}: {exc.strerror or exc}")
            ok = False
        except TapegradError as exc:  # Graphviz went missing or failed: the DOT text is written, says where
            _error("train", str(exc))
            ok = False
    return 0 if ok else 1


def _digits_mlp_shapes(inputs: int, hidden: int, outputs: int) -> dict[str, tuple[int, ...]]:
    return {"affine_0.W": (inputs, hidden), "affine_0.b": (hidden,), "affine_1.W": (hidden, outputs), "affine_1.b": (outputs,)}


# A file may describe a model at most this much larger than itself (beyond a floor): more is a zip bomb.
_EXPANSION, _EXPANSION_FLOOR = _parameter._EXPANSION, _parameter._EXPANSION_FLOOR


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .datasets import load_digits
    from .errors import ParameterLoadError
    from .models import MLP
    from .parameter import ParameterFile
    from .training import Trainer

    x_train, x_test, y_train, y_test = load_digits(seed=args.seed)
    inputs, outputs = x_train.shape[1], 10
    # Only headers are read until the file is known to fit the model its first layer describes.
    with ParameterFile(args.load, expected_names=_digits_mlp_shapes(inputs, 1, outputs)) as source:
        label = source.label
        first = source.shapes.get("affine_0.W")
        hidden = args.hidden
        if first is not None:
            if len(first) != 2 or first[0] != inputs or first[1] < 1:
                raise ParameterLoadError(
                    f"{label} does not fit the digits MLP (nothing was loaded): affine_0.W: shape {first} given, "
                    f"({inputs}, hidden) expected"
                )
            if hidden is not None and first[1] != hidden:
                raise ParameterLoadError(
                    f"{label} does not fit these parameters (nothing was loaded): affine_0.W: shape {first} given, "
                    f"({inputs}, {hidden}) expected"
                )
            hidden = first[1]
        hidden = hidden if hidden is not None else 30
        expected = _digits_mlp_shapes(inputs, hidden, outputs)
        missing = [name for name in expected if name not in source.shapes]
        extra = [name for name in source.shapes if name not in expected]
        wrong = [f"missing: {', '.join(missing)}"] if missing else []
        wrong += [f"unexpected: {', '.join(map(repr, extra))}"] if extra else []
        wrong += [
            f"{name}: shape {source.shapes[name]} given, {shape} expected"
            for name, shape in expected.items() if name in source.shapes and source.shapes[name] != shape
        ]
        if wrong:
            raise ParameterLoadError(f"{label} does not fit these parameters (nothing was loaded): {'; '.join(wrong)}")
        needed = sum(8 * math.prod(shape) for shape in expected.values())
        if needed > max(_EXPANSION_FLOOR, _EXPANSION * source.file_size):
            raise ParameterLoadError(
                f"{label} describes a hidden size of {hidden} ({needed} bytes of values) in {source.file_size} "
                "bytes: refusing to expand it"
            )
        model = MLP(inputs, hidden, outputs, seed=args.seed)
        model.graph.parameter.load(source)
    broken = [name for name, v in model.graph.parameter.variable_dict.items() if not np.isfinite(v.value).all()]
    if broken:
        raise ParameterLoadError(f"{label} holds NaN or infinite values in {', '.join(broken)}: nothing to evaluate")
    accuracy = Trainer(model, optimizer=None, verbose=False).test(x_test, y_test)
    print(f"test accuracy: {accuracy:.4f} ({len(x_test)} samples, seed {args.seed})")
    return 0
