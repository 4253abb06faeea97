"""The project's own rules, as tests (issue 19): read from the source files, nothing imported.

1. No import cycle among tapegrad's modules (``core/`` is ``tapegrad``, ``plugins/`` is
   ``tapegrad.plugins``), counting imports inside functions; imports under ``if TYPE_CHECKING:`` do not
   count (they never run). An import counts as an edge to the module it names (``from . import events``:
   ``tapegrad.events``; ``from .capture import X``: the package ``tapegrad.capture``); the parent packages
   Python initialises on the way do not (else every submodule would be in a cycle with
   ``tapegrad/__init__.py``, which imports them).
2. No ``_private`` name (one leading underscore) of one module used by another: imported from it, or
   read as an attribute of something that is not the module's own. First-party plugins may use
   ``plugins/_util.py``.
3. Every line of the project's Python is at most 120 characters (ruff's line length).
4. The kernel (variable, tape, operation, parameter, optim) imports nothing of capture, drawing or
   profiling, at any level, directly or through another module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tapegrad": ROOT / "core", "tapegrad.plugins": ROOT / "plugins"}
LINE_LENGTH = 120
#: folders of the project's Python (every .py file below them, and at the top level)
PYTHON_FOLDERS = ("core", "plugins", "tests", "benchmarks", "contrib", "tools", "torch_tests", "docs")
SKIPPED_FOLDERS = {"__pycache__", "build", "dist", ".tox", ".venv", "venv", "node_modules"}
#: namedtuple's public API is spelled with one underscore
NAMEDTUPLE_API = {"_make", "_fields", "_replace", "_asdict", "_field_defaults"}


def modules() -> dict[str, Path]:
    """Every module of tapegrad's packages: dotted name -> file (a package by its ``__init__.py``)."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "tapegrad" and parts[:1] == ["plugins"]:
                continue  # (no such folder under core; plugins/ is its own package)
            found[name] = path
    return found


MODULES = modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (its ``else`` branch counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(importer: str, level: int, module: str | None) -> str:
    """The absolute dotted name of ``from <level dots><module> import ...`` in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _known(name: str) -> str | None:
    """``name`` if it is one of tapegrad's modules, else its longest prefix that is, else None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports(name: str) -> dict[str, int]:
    """The tapegrad modules ``name`` imports (at any level, TYPE_CHECKING aside) -> the first line."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    found: dict[str, int] = {}
    for node in _nodes(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.append(submodule if submodule in MODULES else base)
        for target in targets:
            known = _known(target)
            if known is not None and known != name:
                found.setdefault(known, node.lineno)
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, {}):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    members = set(component)
    edges = [
        f"{a} -> {b} ({MODULES[a].relative_to(ROOT)}:{line})"
        for a in component
        for b, line in sorted(graph[a].items())
        if b in members
    ]
    return f"{len(component)} modules: " + "; ".join(edges)


def test_the_module_finder_and_the_import_reader_see_the_package():
    expected = {"tapegrad", "tapegrad.graph", "tapegrad.capture", "tapegrad.capture.step", "tapegrad.plugins._util"}
    assert expected <= set(MODULES)
    graph_imports = imports("tapegrad.graph")
    assert "tapegrad.events" in graph_imports and "tapegrad.tape" in graph_imports
    assert "tapegrad.capture" in graph_imports  # an import inside a method counts
    assert "tapegrad.registry" in graph_imports  # (imported inside Graph.registry)
    assert "tapegrad.graph" not in imports("tapegrad.capture.signature")  # under TYPE_CHECKING it does not count


def test_the_cycle_finder_finds_cycles():
    toy = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}, "e": {}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycle_among_tapegrads_modules():
    graph = {name: imports(name) for name in MODULES}
    found = cycles(graph)
    assert not found, "import cycles (counting imports inside functions):\n" + "\n".join(
        _describe_cycle(graph, c) for c in found
    )


#: the kernel, and what observes it: a kernel module imports no observer, at any level (through a module
#: that imports one neither)
KERNEL = ("tapegrad.variable", "tapegrad.tape", "tapegrad.operation", "tapegrad.parameter", "tapegrad.optim")
OBSERVERS = ("tapegrad.capture", "tapegrad.draw", "tapegrad.profile")


def reachable(graph: dict[str, dict[str, int]], start: str) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        for target in graph[stack.pop()]:
            if target not in seen:
                seen.add(target)
                stack.append(target)
    return seen


def test_the_kernel_imports_no_observer():
    graph = {name: imports(name) for name in MODULES}
    assert "tapegrad.capture" in reachable(graph, "tapegrad.graph")  # (the finder sees a facade's import)
    for name in KERNEL:
        observers = sorted(
            m for m in reachable(graph, name) if any(m == o or m.startswith(o + ".") for o in OBSERVERS)
        )
        assert not observers, f"{name} imports {observers} (directly or through other modules)"


# -- private names -------------------------------------------------------------------------------------


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in NAMEDTUPLE_API


def _defined(tree: ast.AST) -> set[str]:
    """Names a module defines itself: functions, classes, names and attributes it assigns, and the strings
    of its ``__slots__``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)  # (on self, or a marker set on an object the module made: its own name)
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__slots__" for t in node.targets):
            strings = [c for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            names.update(c.value for c in strings)
    return names


def _foreign_modules(tree: ast.AST) -> set[str]:
    """Names bound to modules that are not tapegrad's (``sys``, ``np``): their privates are not ours."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("tapegrad"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def private_uses(name: str) -> list[str]:
    """``path:line: what`` for each private name ``name`` uses from another module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    defined = _defined(tree)
    foreign = _foreign_modules(tree)
    plugin = name.startswith("tapegrad.plugins.")
    where = path.relative_to(ROOT)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(name, node.level, node.module)
            if plugin and source == "tapegrad.plugins._util":
                continue
            if _known(source) is None:
                continue  # another library's private name: not this rule's business
            if any(_private(part) for part in source.split(".")) and source != name:
                found.append(f"{where}:{node.lineno}: imports from the private module {source}")
            for alias in node.names:
                if _private(alias.name):  # a private function, class, constant or module
                    found.append(f"{where}:{node.lineno}: imports {alias.name} from {source}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tapegrad") and any(_private(part) for part in alias.name.split(".")):
                    found.append(f"{where}:{node.lineno}: imports the private module {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in defined:
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in foreign:
                continue
            if plugin and isinstance(receiver, ast.Name) and receiver.id in _util_aliases(tree):
                continue
            found.append(f"{where}:{node.lineno}: uses .{node.attr} ({ast.unparse(node)}), defined in another module")
    return found


def _util_aliases(tree: ast.AST) -> set[str]:
    return {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name == "_util"
    }


def test_the_private_name_reader_tells_a_modules_own_names_from_others():
    tree = ast.parse(
        "from .tape import _warn\nimport sys\nx = sys._getframe(0)\ny = obj._secret\nself._own = 1\n"
        "marker._written = 2\nclass A:\n    __slots__ = ('_slot',)\n"
    )
    defined = _defined(tree)
    assert {"_own", "_slot", "_written", "A", "x"} <= defined
    assert not {"_warn", "_secret"} & defined
    assert _foreign_modules(tree) == {"sys"}


def test_no_private_name_is_used_across_modules():
    found = [use for name in sorted(MODULES) for use in private_uses(name)]
    assert not found, f"{len(found)} uses of another module's private names:\n" + "\n".join(found)


# -- line length ----------------------------------------------------------------------------------------


def python_files() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for folder in PYTHON_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = set(path.relative_to(ROOT).parts)
            if parts & SKIPPED_FOLDERS or any(p.endswith(".egg-info") for p in parts):
                continue
            files.append(path)
    return files


def test_the_files_read_for_line_length_are_the_projects():
    files = {p.relative_to(ROOT).as_posix() for p in python_files()}
    assert {"core/graph.py", "plugins/layers.py", "tests/test_rules.py", "benchmarks/_timing.py"} <= files
    assert any(f.startswith("contrib/tapegrad-rnn/") for f in files)


@pytest.mark.parametrize("limit", [LINE_LENGTH])
def test_every_line_is_at_most_120_characters(limit):
    long = []
    for path in python_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if len(line) > limit:
                long.append(f"{path.relative_to(ROOT)}:{number}: {len(line)} characters")
    assert not long, f"{len(long)} lines over {limit} characters:\n" + "\n".join(long)
