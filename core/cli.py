"""The ``tapegrad`` command: list operations and plugins, run the contract, train the seed MLP."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import TapegradError

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
            }
            for p in rows
        ], indent=2))
        return EXIT_OK
    table = [("name", "distribution", "version", "status", "ops")]
    table += [(p.name, p.distribution or "-", p.version or "-", p.status_text, str(len(p.operations))) for p in rows]
    print(_table(table))
    return EXIT_OK


_SHORT = {
    "check_has_samples": "samples",
    "check_forward_dtype_and_finite": "dtype",
    "check_forward_deterministic": "determ",
    "check_inputs_not_mutated": "mutate",
    "check_gradient_inputs": "grad_in",
    "check_gradient_parameters": "grad_par",
    "check_gradient_structure": "struct",
    "check_accumulates": "accum",
    "check_fan_out": "fanout",
    "check_reuse_in_one_pass": "reuse",
    "check_linear_in_upstream_gradient": "linear",
    "check_eval_mode": "eval",
    "check_loss_scalar": "loss",
}


def cmd_check(args: argparse.Namespace) -> int:
    from . import testing
    from .registry import default_registry

    plugins = [p for p in (args.plugin or "").split(",") if p] or None
    registry = default_registry()
    names: list[Any] = []
    for name in args.names:
        if plugins and ":" not in name:
            matches = [f"{p}:{name}" for p in plugins if (p, name) in registry._qualified]
            if not matches:
                print(f"tapegrad check: no operation {name!r} in plugin(s) {', '.join(plugins)}", file=sys.stderr)
                return EXIT_USAGE
            names.extend(matches)
        else:
            names.append(name)
    try:
        pairs = testing.collect_cases(*names, plugin=None if names else plugins, fast=args.fast)
    except TapegradError as exc:
        print(f"tapegrad check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not pairs:
        wanted = f"plugin(s) {', '.join(plugins)}" if plugins else "the registry"
        print(f"tapegrad check: no operation matched in {wanted}; see `tapegrad ops` and `tapegrad plugins`", file=sys.stderr)
        return EXIT_USAGE
    results = list(testing.run_cases(pairs))
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
        return EXIT_FAILED if failed else EXIT_OK
    checks = list(dict.fromkeys(r.check for r in results))
    ops = list(dict.fromkeys(r.operation for r in results))
    table: list[Sequence[str]] = [("operation", "samples#", *[_SHORT.get(c, c) for c in checks if c != "check_has_samples"])]
    for op in ops:
        mine = [r for r in results if r.operation == op]
        samples = {r.sample for r in mine if r.check != "check_has_samples" and r.sample != "no samples"}
        cells = [op, str(len(samples)) if mine[0].ok else "NONE"]
        for c in checks:
            if c == "check_has_samples":
                continue
            rs = [r for r in mine if r.check == c]
            cells.append("-" if not rs else ("ok" if all(r.ok for r in rs) else "FAIL"))
        table.append(cells)
    print(_table(table))
    for r in failed:
        print(f"\n{r.message}")
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed ({len(ops)} operations, {len(results)} checks)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tapegrad", description=__doc__)
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

    _cli_train.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TapegradError as exc:
        print(f"tapegrad {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
