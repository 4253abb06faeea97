"""The training commands of the CLI: ``tapegrad train`` and ``tapegrad evaluate``, for every model a
plugin offers (``tapegrad.tasks``)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PluginUnavailableError, TapegradError
from .registry import PACK_MODELS, find_task
from .tasks import MemoryEstimate, Task, TaskData, number

DEFAULT_LR = {"sgd": 0.3, "adam": 0.001, "adamw": 0.001}
OPTIMIZERS = tuple(DEFAULT_LR)
SCHEDULES = ("step", "exponential", "cosine")
DTYPES = {"float64": np.float64, "float32": np.float32}
DEFAULT_MODEL = "mlp"

MAX_COUNT = 10**9  # epochs, batch size: far beyond any use (a batch larger than the data is the whole data)
_positive_int = number(int, 1, maximum=MAX_COUNT)
_positive_float = number(float, 0.0, inclusive=False)
_seed = number(int, 0, maximum=2**32 - 1)  # what scikit-learn's split accepts
__all__ = ["add_commands", "cmd_train", "cmd_evaluate", "available_memory"]

# Options that say where output goes or how it looks, or how steps run (captured and eager steps give the
# same numbers): a resumed run may change them freely.
_NOT_CONFIGURATION = {
    "command", "func", "task", "parser", "written", "epochs", "save", "plot", "draw", "profile", "no_progress",
    "gradcheck", "checkpoint", "no_capture",
}


def requested_model(argv: Sequence[str] | None, command: str) -> str | None:
    """The value of ``--model`` after ``command`` in ``argv`` (None when it is not given)."""
    tokens = list(argv or [])
    if command not in tokens:
        return None
    scan = argparse.ArgumentParser(add_help=False)
    scan.add_argument("--model")
    known, _ = scan.parse_known_args(tokens[tokens.index(command) + 1 :])
    return known.model  # type: ignore[no-any-return]


def _task_for(name: str) -> tuple[type[Task] | None, str]:
    """The Task class of model ``name``, or None and why."""
    try:
        return find_task(name), ""
    except PluginUnavailableError as exc:
        return None, str(exc)


def _model_type(task: type[Task] | None, problem: str) -> Any:
    """``--model``'s argparse type: the name when its task was found, else argparse's error with why."""

    def parse(text: str) -> str:
        if task is None:
            raise argparse.ArgumentTypeError(problem)
        return text

    return parse


def _models_listing() -> str:
    """Every installed model with its summary and provider, then the packs' models that are not installed."""
    from .registry import default_registry

    registry = default_registry()
    rows = registry.models()
    names = {r.name for r in rows}
    installed = {p.distribution for p in registry.plugins()}
    lines = [f"  {r.name:<12} {r.summary} [{r.distribution or r.plugin}]" for r in rows]
    for name, packs in PACK_MODELS.items():
        missing = [pack for pack in packs if pack not in installed]
        if name not in names:
            needs = (
                f"not installed: pip install {' '.join(missing)}" if missing else f"needs a newer {' and '.join(packs)}"
            )
            lines.append(f"  {name:<12} ({needs})")
    return "\n".join(lines) if lines else "  (none: is tapegrad installed whole?)"


def add_commands(sub: Any, argv: Sequence[str] | None = None) -> None:
    """The ``train`` and ``evaluate`` parsers, with the options of the model ``argv`` asks for (the default
    model's when it names none, and when ``argv`` is None). For other commands, ``train`` and ``evaluate``
    are added without looking the models up."""
    command = next((t for t in argv or [] if not t.startswith("-")), None) if argv is not None else None
    full = argv is None or command in ("train", "evaluate")
    for name in ("train", "evaluate"):
        wanted = requested_model(argv, name) or DEFAULT_MODEL
        task, problem = _task_for(wanted) if full and (argv is None or command == name) else (None, "")
        (_train_parser if name == "train" else _evaluate_parser)(sub, task, problem, full)


def _train_parser(sub: Any, task: type[Task] | None, problem: str, full: bool) -> None:
    shown = task.name if task is not None else DEFAULT_MODEL
    p = sub.add_parser(
        "train",
        help="train a model (default: the seed's MLP on scikit-learn's digits); --model NAME picks another",
        description="Train a model and report its metric on held-out data after every epoch.",
        epilog=(
            "models (--model NAME; `tapegrad train --model NAME --help` shows a model's own options):\n"
            + _models_listing()
            if full else None
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", type=_model_type(task, problem) if full else str, default=DEFAULT_MODEL,
        help=f"the model to train (default {DEFAULT_MODEL}; the list is below)",
    )
    defaults = task if task is not None else None
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"epochs (default: the model's{f', {defaults.epochs} for {shown}' if defaults else ''})")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: the model's, else 0.3 for sgd and 0.001 for adam and adamw)")
    p.add_argument(
        "--batch-size", type=_positive_int, default=None,
        help=f"mini-batch size (default: the model's{f', {defaults.batch_size} for {shown}' if defaults else ''}; one "
        "larger than the training set makes one batch of it)",
    )
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"optimizer (default: the model's{f', {defaults.optimizer} for {shown}' if defaults else ''})")
    p.add_argument("--clip", metavar="NORM", type=_positive_float, default=None,
                   help="clip the gradients' total 2-norm to NORM in every step (tapegrad.optim.clip_grad_norm)")
    p.add_argument(
        "--schedule", choices=SCHEDULES, default=None,
        help="learning-rate schedule, stepped after every epoch: step (x0.1 every third of the epochs), exponential "
        "(down to 1/100 of the rate by the end), cosine (a half cosine down to 0 over the epochs); default: none",
    )
    p.add_argument("--seed", type=_seed, default=0, help="fixes the split, the initial values and the shuffling")
    p.add_argument("--limit", metavar="N", type=_positive_int, default=None,
                   help="train on the first N training samples only (quick runs); the held-out data stays whole")
    p.add_argument("--dtype", choices=DTYPES, default="float64", help="the graph's float type (default float64)")
    p.add_argument(
        "--checkpoint", metavar="PATH",
        help="save everything a resumed run needs to PATH after every epoch; if PATH exists, resume from it "
        "(refused when it was written by a run with other options; --epochs may grow)",
    )
    p.add_argument("--gradcheck", action="store_true", help="check the model's gradients numerically first (float64)")
    p.add_argument(
        "--plot", metavar="PATH",
        help="write a plot of train loss and the held-out metric per epoch (format from the extension, default PNG)",
    )
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
    if task is not None:
        task.add_arguments(p.add_argument_group(f"options of model {task.name}"), "train")
    p.set_defaults(func=cmd_train, task=task, parser=p, written=[])


def _evaluate_parser(sub: Any, task: type[Task] | None, problem: str, full: bool) -> None:
    p = sub.add_parser(
        "evaluate", help="the metric of saved parameters on a model's held-out data",
        description="Load parameters written by `tapegrad train --save` and measure them on the model's held-out data.",
    )
    p.add_argument("--model", type=_model_type(task, problem) if full else str, default=DEFAULT_MODEL,
                   help=f"the model the parameters are of (default {DEFAULT_MODEL})")
    p.add_argument("--load", metavar="PATH", required=True, help="parameters written by `tapegrad train --save`")
    p.add_argument("--seed", type=_seed, default=0, help="the split to evaluate on (default 0)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="the graph's float type (default: the file's)")
    if task is not None:
        task.add_arguments(p.add_argument_group(f"options of model {task.name}"), "evaluate")
    p.set_defaults(func=cmd_evaluate, task=task, parser=p)


def available_memory() -> tuple[int, str] | None:
    """The bytes this process may still allocate and where that bound comes from: the smaller of its
    address-space limit (less what it maps already) and the memory the OS says is available; None when
    neither is known."""
    bounds: list[tuple[int, str]] = []
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            used = _proc_bytes("/proc/self/status", "VmSize:") or 0  # (the OS may not say: none)
            bounds.append((
                max(0, soft - used),
                f"its address-space limit, ulimit -v: {_size(soft)}, {_size(used)} of it mapped already",
            ))
    except (ImportError, OSError, ValueError):  # no resource module (Windows), or no limit to read
        pass
    available = _proc_bytes("/proc/meminfo", "MemAvailable:")
    if available is not None:
        bounds.append((available, "the machine's available memory, MemAvailable in /proc/meminfo"))
    return min(bounds) if bounds else None


def _proc_bytes(path: str, field: str) -> int | None:
    """A size in kB that a Linux /proc file gives on the line starting with ``field``, in bytes; None where
    the OS does not say."""
    try:
        with open(path, encoding="ascii", errors="replace") as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if count < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError  # (unreachable)


def _too_big(estimate: MemoryEstimate, task: Task) -> str | None:
    """Why a run of this estimate cannot fit (None when it can, or when nothing bounds the memory)."""
    bound = available_memory()
    if bound is None or estimate.total <= bound[0]:
        return None
    limit, source = bound
    knobs = "--batch-size or the model's size" + (" (--hidden)" if task.name == "mlp" else "")
    return (
        f"this run needs about {_size(estimate.total)} (parameters {_size(estimate.parameters)} with their gradients "
        f"and optimizer state; activations {_size(estimate.activations)} for a batch of {estimate.batch} samples), "
        f"more than the {_size(limit)} this process may use ({source}); make {knobs} smaller"
    )


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
                return (
                    f"{earlier} {str(other)!r} and {option} {str(target)!r} are the same file: "
                    "give them different paths"
                )
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
            return (
                target,
                target.with_suffix(".dot"),
                f"rendering {fmt.upper()} needs {missing}, which is missing: {INSTALL}",
            )
    return target, target if renderer is None else target.with_suffix(".dot"), ""


def _draw_step(model: Any, inputs: tuple[np.ndarray, ...], y: np.ndarray, capture: bool, target: Path) -> None:
    """Draw forward, loss and backward on ``(inputs, y)``, captured (from its record) or eagerly; the
    parameters keep their values, and their gradients are cleared afterwards."""
    from .draw import draw

    graph = model.graph

    def gradient_step(inputs: tuple[np.ndarray, ...], y: np.ndarray) -> float:
        model.forward(*inputs)
        value = model.loss(y)
        graph.backward()
        return value  # type: ignore[no-any-return]

    graph.train()
    try:
        if capture:
            step = graph.capture(gradient_step)
            step(inputs, y)
            draw(step, target)
        else:
            gradient_step(inputs, y)
            draw(graph, target)
    finally:
        graph.parameter.clear_grads()


def _first_batch(data: TaskData, size: int, dtype: Any) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The first ``size`` training samples as the Trainer feeds them (float inputs in ``dtype``)."""
    parts = data.x_train if isinstance(data.x_train, tuple) else (data.x_train,)
    inputs = tuple(
        np.asarray(p[:size]).astype(dtype, copy=False)
        if np.asarray(p[:size]).dtype.kind == "f"
        else np.asarray(p[:size])
        for p in parts
    )
    return inputs, np.asarray(data.y_train[:size])


def _render(history: Any, fmt: str, title: str = "", metric: str = "") -> bytes:
    """The figure of train loss and the held-out metric per epoch (empty for None) as ``fmt`` bytes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    loss_axis = fig.add_subplot()
    if history is not None:
        epochs = [r.epoch for r in history]
        loss_axis.plot(epochs, history.train_loss, color="tab:blue", label="train loss")
        loss_axis.set_xlabel("epoch")
        loss_axis.set_ylabel("train loss", color="tab:blue")
        metric_axis = loss_axis.twinx()
        metric_axis.plot(epochs, history.metric, color="tab:orange", label=metric)
        metric_axis.set_ylabel(metric, color="tab:orange")
        fig.suptitle(title)
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=100)
    return buffer.getvalue()


def _error(command: str, message: str) -> None:
    print(f"tapegrad {command}: error: {message}", file=sys.stderr)


def _save_or_rescue(parameter: Any, path: str, written: list[str]) -> bool:
    """Save to ``path``; if that fails, say why in one line and save to a temporary file instead.
    ``written`` gets what was written (for the message when standard output failed)."""
    try:
        saved = parameter.save(path)
    except OSError as exc:
        reason = f"cannot write parameters to {path!r}: {exc.strerror or exc}"
    else:
        print(f"saved parameters to {saved}")
        written.append(f"--save {str(saved)!r}")
        return True
    try:
        fd, rescue = tempfile.mkstemp(prefix="tapegrad-parameters-", suffix=".npz")
        os.close(fd)
        parameter.save(rescue)
        _error("train", f"{reason}; saved them to {rescue!r} instead")
    except OSError as exc:
        _error("train", f"{reason}; saving them to a temporary file failed too ({exc.strerror or exc})")
    return False


def _optimizer(name: str, model: Any, lr: float) -> Any:
    from .optim import SGD, Adam, AdamW

    return {"sgd": SGD, "adam": Adam, "adamw": AdamW}[name](model.graph.parameter, lr=lr)


def _scheduler(name: str | None, optimizer: Any, epochs: int) -> Any:
    """The ``--schedule``: StepLR every third of the epochs (x0.1), ExponentialLR reaching 1/100 after the
    last epoch, or CosineAnnealingLR over the epochs; None without one."""
    from .optim import CosineAnnealingLR, ExponentialLR, StepLR

    if name is None:
        return None
    if name == "step":
        return StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    if name == "exponential":
        return ExponentialLR(optimizer, gamma=0.01 ** (1.0 / epochs))
    return CosineAnnealingLR(optimizer, T_max=epochs)


def _configuration(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide what a run computes, by option name (``--hidden``): what a checkpoint keeps
    to refuse a resume under other ones. ``--epochs`` and the outputs are not among them."""
    found = {}
    for key, value in sorted(vars(args).items()):
        if key in _NOT_CONFIGURATION:
            continue
        if not (value is None or isinstance(value, (bool, int, float, str))):
            value = str(value)
        found["--" + key.replace("_", "-")] = value
    return found


def _settings(args: argparse.Namespace, task: type[Task]) -> None:
    """Fill the options left to the model (None) with the task's defaults, in place."""
    args.epochs = args.epochs if args.epochs is not None else task.epochs
    args.batch_size = args.batch_size if args.batch_size is not None else task.batch_size
    args.optimizer = args.optimizer if args.optimizer is not None else task.optimizer
    if args.lr is None:
        args.lr = task.lr if task.lr is not None and args.optimizer == task.optimizer else DEFAULT_LR[args.optimizer]


def _outputs(args: argparse.Namespace) -> tuple[list[tuple[str, Path]], Any, Any, str] | int:
    """The files the run writes, checked before anything is computed: (outputs, plot, drawing, why the
    drawing cannot be rendered), or the exit code after saying why one cannot be written."""
    from .parameter import parameter_file_path

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
    if args.checkpoint is not None:
        outputs.append(("--checkpoint", Path(args.checkpoint)))
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
    return outputs, plot, drawing, unrenderable


def cmd_train(args: argparse.Namespace) -> int:
    from .gradcheck import numerical_gradient_check
    from .profile import profile
    from .training import Trainer
    from .variable import Variable

    task_class: type[Task] = args.task
    _settings(args, task_class)
    if args.gradcheck and args.dtype != "float64":
        _error("train", "--gradcheck needs --dtype float64 (central differences in float32 are too coarse to tell)")
        return 2
    # Every output is checked before training, so that a bad path never costs the trained model.
    checked = _outputs(args)
    if isinstance(checked, int):
        return checked
    _, plot, drawing, unrenderable = checked
    configuration = _configuration(args)
    args.dtype = np.dtype(DTYPES[args.dtype])
    task = task_class(args)
    data = task.load_data().limited(args.limit)
    estimate = task.memory_estimate(data)
    if estimate is not None:
        problem = _too_big(estimate, task)
        if problem:
            _error("train", problem)
            return 2
    model = task.build_model(data)
    size = min(args.batch_size, data.train_samples)
    if drawing is not None and unrenderable:
        # Refused before training (a missing renderer must not cost it), but the DOT text is
        # written anyway, as tg.draw writes it: one step of the model as built, untrained.
        _draw_step(model, *_first_batch(data, size, args.dtype), not args.no_capture, drawing[1])
        _error(
            "train",
            f"cannot draw to {args.draw!r}: {unrenderable}; the DOT text of one training step of the untrained "
            f"model is in {str(drawing[1])!r} (render it once Graphviz is there, or draw to a .dot file)",
        )
        return 2
    optimizer = _optimizer(args.optimizer, model, args.lr)
    scheduler = _scheduler(args.schedule, optimizer, args.epochs)
    extras = "".join(
        [f", clip {args.clip:g}" if args.clip else "", f", {args.schedule} schedule" if args.schedule else "",
         f", {args.dtype}" if args.dtype != np.float64 else ""]
    )
    print(
        f"tapegrad train: {task.describe(model, data)}, {args.optimizer} lr={args.lr:g}{extras}, "
        f"batch size {args.batch_size}, {args.epochs} epochs, seed {args.seed} "
        f"({data.train_samples} train / {data.test_samples} {task.held_out} samples)"
    )
    if args.gradcheck:
        inputs, labels = _first_batch(data, 8, args.dtype)
        given = Variable(inputs[0]) if len(inputs) == 1 and inputs[0].dtype.kind == "f" else inputs
        report = numerical_gradient_check(model, given, Variable(labels))
        if not report:
            print("tapegrad train: gradient check FAILED; not training", file=sys.stderr)
            return 1
        print("gradient check passed")
    trainer = Trainer(
        model, optimizer, batch_size=args.batch_size, progress=not args.no_progress, seed=args.seed,
        capture=not args.no_capture, scheduler=scheduler, clip_grad_norm=args.clip, checkpoint=args.checkpoint,
        configuration=configuration, eval_batch_size=task.eval_batch_size,
    )

    def after_epoch(record: Any) -> None:
        report = task.epoch_report(model, record)
        if report:
            print(report)

    with profile(model.graph) if args.profile else contextlib.nullcontext() as prof:
        history = trainer.train(
            data.x_train, data.y_train, data.x_test, data.y_test, epochs=args.epochs, held_out=task.held_out,
            on_epoch=after_epoch,
        )
    last = history[-1]
    shown = ", ".join(f"{name}: {value:.4f}" for name, value in last.metrics.items())
    print(f"final {task.held_out} {shown} ({sum(history.seconds):.1f} s of training)")
    final = task.final_report(model, data)
    if final:
        print(final)
    if prof is not None:
        print(
            f"\nprofile of the training ({'eager' if args.no_capture else 'captured'} steps, "
            "times of each op's own code):"
        )
        print(prof.table(), end="")
    ok = True
    written: list[str] = args.written
    if args.checkpoint is not None:
        written.append(f"--checkpoint {args.checkpoint!r}")
    if args.save is not None:
        ok = _save_or_rescue(model.graph.parameter, args.save, written)
    if plot is not None:
        target, fmt = plot
        try:
            metric = f"{task.held_out} {trainer.metric.name}"
            image = _render(history, fmt, f"tapegrad: {task.describe(model, data)} ({task.name})", metric)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image)
            print(f"wrote {target}")
            written.append(f"--plot {str(target)!r}")
        except OSError as exc:
            _error("train", f"cannot write --plot {str(target)!r}: {exc.strerror or exc}")
            ok = False
        except Exception as exc:  # whatever matplotlib raises: the parameters are saved already
            _error("train", f"cannot plot to {str(target)!r}: {type(exc).__name__}: {exc}")
            ok = False
    if drawing is not None:
        target, dot_file = drawing
        try:
            _draw_step(model, *_first_batch(data, size, args.dtype), not args.no_capture, target)
            print(f"wrote {target}" + (f" (and its DOT text, {dot_file})" if dot_file != target else ""))
            written.append(f"--draw {str(target)!r}")
        except OSError as exc:
            _error("train", f"cannot write --draw {str(target)!r}: {exc.strerror or exc}")
            ok = False
        except TapegradError as exc:  # Graphviz went missing or failed: the DOT text is written, says where
            _error("train", str(exc))
            ok = False
    return 0 if ok else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .errors import ParameterLoadError
    from .parameter import ParameterFile
    from .training import Trainer

    task_class: type[Task] = args.task
    args.dtype = np.dtype(DTYPES[args.dtype]) if args.dtype is not None else None
    task = task_class(args)
    data = task.load_data()
    # Only headers are read until the file is known to fit the model (model_for_file checks them).
    with ParameterFile(args.load) as source:
        label = source.label
        model = task.model_for_file(source, data)
    broken = [name for name, v in model.graph.parameter.variable_dict.items() if not np.isfinite(v.value).all()]
    if broken:
        raise ParameterLoadError(f"{label} holds NaN or infinite values in {', '.join(broken)}: nothing to evaluate")
    metrics = Trainer(model, None, verbose=False, eval_batch_size=task.eval_batch_size).evaluate(
        data.x_test, data.y_test
    )
    shown = ", ".join(f"{name}: {value:.4f}" for name, value in metrics.items())
    print(f"{task.held_out} {shown} ({data.test_samples} samples, seed {args.seed})")
    final = task.final_report(model, data)
    if final:
        print(final)
    return 0
