"""The character language model's corpus: docstrings of the Python standard library.

The shipped text (``data/stdlib_docstrings.txt``) holds every ASCII docstring (module, class,
function, in source order) of the top-level ``*.py`` modules of CPython's ``Lib/`` that is the same
in CPython 3.10.13, 3.11.7, 3.12.1 and 3.13.0, one after another with a blank line between them. The
Python Software Foundation License (``data/PSF-LICENSE.txt``, copied from CPython 3.11's
``LICENSE.txt``) covers it. ``data/stdlib_docstrings.tsv`` lists each docstring's module,
qualified name and length, so that its provenance can be checked on any of those Pythons
(``check_provenance``).

Docstrings are read from the source with ``ast``, never by importing the modules, so they are the
same under ``python -OO`` and no module's import side effects run. This module imports only the
standard library: ``python corpus.py --json`` runs under any Python 3.10+ to extract from that
Python, which is how ``python -m tapegrad_rnn.corpus --write python3.10 python3.11 ...``
regenerates the shipped files.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path
from typing import NamedTuple

TEXT = "stdlib_docstrings.txt"
INDEX = "stdlib_docstrings.tsv"
LICENSE = "PSF-LICENSE.txt"
SEPARATOR = "\n\n"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


class Docstring(NamedTuple):
    module: str
    qualname: str  # "" for the module's own docstring
    text: str


def stdlib_folder() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def extract(folder: Path | None = None) -> list[Docstring]:
    """Every ASCII docstring of the top-level ``*.py`` modules in ``folder`` (default: this Python's
    standard library), module by module in name order, each module's in source order (a node
    before the nodes inside it), cleaned as ``inspect.cleandoc`` cleans them."""
    folder = stdlib_folder() if folder is None else folder
    found: list[Docstring] = []
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):  # test data of the stdlib itself
            continue
        found.extend(_docstrings(path.stem, tree, ""))
    return found


def _docstrings(module: str, node: ast.AST, qualname: str) -> list[Docstring]:
    found: list[Docstring] = []
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        text = ast.get_docstring(node, clean=True)
        if text and text.isascii():
            found.append(Docstring(module, qualname, text))
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found.extend(_docstrings(module, child, f"{qualname}.{child.name}" if qualname else child.name))
        elif not isinstance(child, (ast.expr, ast.Lambda)):  # statements hold definitions (if, try, with)
            found.extend(_docstrings(module, child, qualname))
    return found


def common(extractions: list[list[Docstring]]) -> list[Docstring]:
    """The docstrings of the first extraction found (module, qualified name and text) in all the others."""
    first, *others = extractions
    sets = [set(other) for other in others]
    return [entry for entry in first if all(entry in s for s in sets)]


def read_entries() -> list[Docstring]:
    """The shipped corpus as its docstrings (read through the index)."""
    data = resources.files(__package__ or "tapegrad_rnn") / "data"
    text = (data / TEXT).read_text(encoding="ascii")
    entries, position = [], 0
    for line in (data / INDEX).read_text(encoding="ascii").splitlines()[1:]:
        module, qualname, length = line.split("\t")
        entries.append(Docstring(module, qualname, text[position : position + int(length)]))
        position += int(length) + len(SEPARATOR)
    if position - len(SEPARATOR) != len(text):
        raise ValueError(
            f"{INDEX} does not describe {TEXT}: it covers {position - len(SEPARATOR)} characters of {len(text)}"
        )
    return entries


def load_text() -> str:
    """The shipped corpus: the docstrings joined by blank lines (ASCII)."""
    return (resources.files(__package__ or "tapegrad_rnn") / "data" / TEXT).read_text(encoding="ascii")


def check_provenance(folder: Path | None = None) -> list[Docstring]:
    """The shipped docstrings not found, with their module and qualified name, in the standard library
    at ``folder`` (default: this Python's): an empty list on the releases the corpus was made from
    (CPython 3.10.13, 3.11.7, 3.12.1, 3.13.0); other patch releases change a few docstrings."""
    here = set(extract(folder))
    return [entry for entry in read_entries() if entry not in here]


def write(entries: list[Docstring], folder: Path) -> None:
    (folder / TEXT).write_text(SEPARATOR.join(e.text for e in entries), encoding="ascii")
    rows = ["module\tqualname\tlength"] + [f"{e.module}\t{e.qualname}\t{len(e.text)}" for e in entries]
    (folder / INDEX).write_text("\n".join(rows) + "\n", encoding="ascii")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print this Python's docstrings as JSON")
    parser.add_argument(
        "--write", nargs="+", metavar="PYTHON", help="interpreters to extract with; writes the shipped files"
    )
    args = parser.parse_args(argv)
    if args.json:
        json.dump([list(entry) for entry in extract()], sys.stdout)
        return 0
    if not args.write:
        parser.error("give --json or --write PYTHON ...")
    extractions = []
    for python in args.write:
        out = subprocess.run([python, __file__, "--json"], check=True, capture_output=True, text=True).stdout
        extractions.append([Docstring(*entry) for entry in json.loads(out)])
    entries = common(extractions)
    write(entries, Path(__file__).parent / "data")
    print(
        f"{len(entries)} docstrings, "
        f"{sum(len(e.text) for e in entries) + len(SEPARATOR) * (len(entries) - 1)} characters"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
