"""The ``tapegrad`` command: list operations and plugins, run the contract, train and evaluate models.

Every command exits non-zero with a one-line message when its standard output cannot be written
(``tapegrad ops > /dev/full``); ``tapegrad train`` goes on without printing, writes the files it was
asked for, and then exits non-zero naming the output that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import PluginUnavailableError, TapegradError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def cmd_ops(args: argparse.Namespace) -> int:
    from .registry import default_registry

    rows = default_registry().operations()
    if args.json:
        print(json.dumps([
            {
                "name": r.name,
                "plugin": r.plugin,
                "qualified_name": r.qualified_name,
                "distribution": r.distribution,
                "version": r.version,
                "summary": r.summary,
            }
            for r in rows
        ], indent=2))
        return EXIT_OK
    table = [("name", "plugin", "distribution", "summary")]
    table += [(r.name, r.plugin, f"{r.distribution}=={r.version}" if r.distribution else "(run time)", r.summary) for r in rows]
    print(_table(table))
    print(f"\n{len(rows)} operations")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import default_registry

    rows = default_registry().plugins()
    if args.json:
        print(json.dumps([
            {
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "status": p.status,
                "error": p.error,
                "operations": len(p.operations),
                "models": len(p.models),
            }
            for p in rows
        ], indent=2))
        return EXIT_OK
    table = [("name", "distribution", "version", "status", "ops", "models")]
    table += [
        (p.name, p.distribution or "-", p.version or "-", p.status_text, str(len(p.operations)), str(len(p.models)))
        for p in rows
    ]
    print(_table(table))
    return EXIT_OK


def _check_columns(results: Sequence[Any]) -> list[str]:
    """The table's check columns: tapegrad.testing's checks in its order, then any other check that ran."""
    from . import testing

    known = [c.__name__ for c in (*testing.ALL_CHECKS, *testing.LOSS_CHECKS)]
    ran = dict.fromkeys(r.check for r in results)
    ran.pop(testing.check_has_samples.__name__, None)  # shown as the sample count
    return [c for c in known if c in ran] + [c for c in ran if c not in known]


def _stacked_header(labels: Sequence[str], min_width: int) -> list[list[str]]:
    """Header rows for ``labels``: check names without ``check_``, a word per line, so no label is abbreviated."""
    columns: list[list[str]] = []
    for label in labels:
        words = label.removeprefix("check_").split("_")
        width = max(min_width, *(len(w) for w in words))
        column: list[str] = []
        for word in words:  # short words share a line when they fit the column's width
            if column and len(column[-1]) + 1 + len(word) <= width:
                column[-1] += f" {word}"
            else:
                column.append(word)
        columns.append(column)
    depth = max((len(c) for c in columns), default=1)
    return [[c[i] if i < len(c) else "" for c in columns] for i in range(depth)]


def _cell(results: Sequence[Any]) -> str:
    """A check's verdict over an operation's samples: FAIL if any failed, skip if any was skipped
    (a check it requires failed), ok if all passed, - if it did not run."""
    if not results:
        return "-"
    if not all(r.ok for r in results):
        return "FAIL"
    return "skip" if any(r.outcome == "skipped" for r in results) else "ok"


def _check_table(results: Sequence[Any]) -> str:
    """One row per operation: its sample count, then ok/FAIL/skip/- per check, under headers built from the check names."""
    from . import testing

    checks = _check_columns(results)
    rows: list[list[str]] = []
    for i, words in enumerate(_stacked_header(checks, min_width=len("FAIL"))):
        rows.append(["operation" if i == 0 else "", "samples" if i == 0 else "", *words])
    for op in dict.fromkeys(r.operation for r in results):
        mine = [r for r in results if r.operation == op]
        samples = {r.sample for r in mine if r.check != testing.check_has_samples.__name__ and r.sample != "no samples"}
        cells = [op, str(len(samples)) if mine[0].ok else "NONE"]
        cells += [_cell([r for r in mine if r.check == c]) for c in checks]
        rows.append(cells)
    return _table(rows)


def _fail_check(message: str) -> int:
    print(f"tapegrad check: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_check(args: argparse.Namespace) -> int:
    from . import testing
    from .registry import default_registry

    plugins = [p.strip() for p in (args.plugin or "").split(",") if p.strip()] or None
    registry = default_registry()
    try:
        if plugins:
            # A named plugin that is missing, failed or blocked must fail the run, not pass it with fewer checks.
            registry.require(plugins)
        names: list[Any] = []
        for name in args.names:
            if plugins and ":" not in name:
                matches = [r.qualified_name for r in registry.operations(plugin=plugins) if r.name == name]
                if not matches:
                    return _fail_check(f"no operation {name!r} in plugin(s) {', '.join(plugins)}")
                names.extend(matches)
            else:
                names.append(name)
        pairs = testing.collect_cases(*names, plugin=None if names else plugins, fast=args.fast)
    except PluginUnavailableError as exc:
        return _fail_check(f"no operation matched: {exc}" if exc.missing else str(exc))
    except TapegradError as exc:
        return _fail_check(str(exc))
    if not pairs:
        wanted = f"plugin(s) {', '.join(plugins)}" if plugins else "the registry"
        return _fail_check(f"no operation matched in {wanted}; see `tapegrad ops` and `tapegrad plugins`")
    results = list(testing.run_cases(pairs))
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
        return EXIT_FAILED if failed else EXIT_OK
    print(_check_table(results))
    for r in failed:
        print(f"\n{r.message}")
    ops = {r.operation for r in results}
    print(f"\n{testing.summary(results)} ({len(ops)} operations, {len(results)} checks)")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import new_plugin

    root = new_plugin(args.name, args.dir)
    print(f"wrote plugin {args.name!r} to {root}/")
    # A path, so that pip installs this folder rather than looking the name up on the index.
    where = str(root)
    if not (os.path.isabs(where) or where.startswith(".")):
        where = os.path.join(os.curdir, where)
    print(f"next: pip install {shlex.quote(where)} && tapegrad check --plugin {args.name}")
    return EXIT_OK


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the ``tapegrad`` command. ``argv`` (the arguments to parse) picks the model whose own
    options ``train`` and ``evaluate`` take; None: the default model's."""
    parser = argparse.ArgumentParser(prog="tapegrad", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"tapegrad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ops", help="list every registered operation and its provider")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ops)

    p = sub.add_parser("plugins", help="list plugins with their status")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("check", help="run the operation contract (gradients, dtypes, accumulation, ...)")
    p.add_argument("names", nargs="*", metavar="NAME", help="operations to check (default: all)")
    p.add_argument("--plugin", metavar="P[,P]", help="only operations of these plugins (exact names)")
    p.add_argument("--fast", action="store_true", help="random-projection gradient checks for every array")
    p.add_argument("--json", action="store_true", help="print JSON results")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("new-plugin", help="write a ready plugin distribution (pyproject, example op, contract test)")
    p.add_argument("name", help="plugin and distribution name (lowercase)")
    p.add_argument("--dir", metavar="PATH", help="where to write it (default: ./NAME)")
    p.set_defaults(func=cmd_new_plugin)

    from . import _cli_train

    _cli_train.add_commands(sub, argv)
    return parser


class _OutputFailed(Exception):
    """Internal: standard output could not be written, and the command stops."""


class _GuardedOutput:
    """Standard output that survives a failing write: the first failure is kept (``failure``), and from then
    on nothing is written (the stream's descriptor points at the null device, so that what is still
    buffered goes nowhere at exit instead of failing again). ``keep_going``: the command goes on without
    printing (training); otherwise it stops (``_OutputFailed``)."""

    def __init__(self, stream: Any, keep_going: bool) -> None:
        self.stream = stream
        self.keep_going = keep_going
        self.failure: OSError | None = None

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                return int(self.stream.write(text))
            except OSError as exc:
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.failure = exc
        # (no descriptor: a test's capture)
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        if not self.keep_going:
            raise _OutputFailed from exc

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...: the stream's
        return getattr(self.stream, name)


def _say(message: str) -> None:
    """One line on standard error, if even that can be written."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    output = _GuardedOutput(sys.stdout, keep_going=False)
    sys.stdout = output  # type: ignore[assignment]
    # (the command as given, for messages before argparse has parsed it: `tapegrad train --help`)
    command = next((token for token in argv if not token.startswith("-")), "")
    args, stopped = None, None
    code = EXIT_FAILED
    try:
        parser = build_parser(argv)
        args, unknown = parser.parse_known_args(argv)
        command = args.command
        output.keep_going = command == "train"
        if unknown:
            _unrecognized(getattr(args, "parser", parser), args, unknown)
        code = _run(args)
    except _OutputFailed:
        pass
    except SystemExit as stop:  # argparse's --help, --version and usage errors
        stopped = stop
    finally:
        output.keep_going = True
        output.flush()  # (now, not at exit: a failure is reported here)
        sys.stdout = output.stream
    failure = output.failure
    if failure is None or isinstance(failure, BrokenPipeError):
        if stopped is not None:
            raise stopped
        # a reader that went away (`tapegrad ops | head`): quietly, as other command-line tools do
        return code if failure is None else 141
    went_on = ""
    if args is not None and args.command == "train" and stopped is None:
        written = getattr(args, "written", [])
        went_on = "; training went on without printing" + (f" and wrote {', '.join(written)}" if written else "")
    prog = f"tapegrad {command}" if command else "tapegrad"
    _say(f"{prog}: error: cannot write to standard output: {failure.strerror or failure}{went_on}")
    if stopped is not None:
        raise SystemExit(EXIT_FAILED) from None
    return code or EXIT_FAILED


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """argparse's error for arguments nobody takes, from the command's own parser; for a model's
    command, saying which model's options were read."""
    task = getattr(args, "task", None)
    hint = ""
    if task is not None:
        hint = f" (with --model {task.name}; `tapegrad {args.command} --model {task.name} --help` lists its options)"
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except TapegradError as exc:
        _say(f"tapegrad {args.command}: error: {exc}")
        return EXIT_FAILED
    except MemoryError as exc:  # numpy's says how much it wanted for what: one line, not a traceback
        _say(f"tapegrad {args.command}: error: out of memory" + (f": {exc}" if str(exc) else ""))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
