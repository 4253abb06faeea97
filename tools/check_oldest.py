"""Guard for tox's ``oldest`` env: it must really run on the declared minimum versions.

Every ``name>=X`` of pyproject.toml's dependencies and extras must be pinned ``name==X`` in
.ci/oldest-constraints.txt, and the environment must hold exactly the pinned versions. Exit 1
with one line per mismatch otherwise.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip, always present in a tox env, vendors the same parser
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def same_release(a: str, b: str) -> bool:
    """``1.24`` and ``1.24.0`` name the same release."""
    pa, pb = [int(x) for x in a.split(".")], [int(x) for x in b.split(".")]
    width = max(len(pa), len(pb))
    return pa + [0] * (width - len(pa)) == pb + [0] * (width - len(pb))


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    declared: dict[str, str] = {}
    for req in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", req)
        if match is None:
            print(f"check_oldest: error: pyproject.toml requirement {req!r} is not of the form name>=X")
            return 1
        name = canonical(match[1])
        if declared.setdefault(name, match[2]) != match[2]:
            print(f"check_oldest: error: pyproject.toml declares {name} >={declared[name]} and >={match[2]}")
            return 1
    pins: dict[str, str] = {}
    for line in (ROOT / ".ci" / "oldest-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            pins[canonical(name)] = pinned.strip()
    problems = []
    for name, minimum in sorted(declared.items()):
        pinned = pins.get(name, "nothing")
        if name not in pins or not same_release(pinned, minimum):
            problems.append(f"{name}: pyproject.toml declares >={minimum}, .ci/oldest-constraints.txt pins {pinned}")
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "nothing"
        if installed != pinned:
            problems.append(f"{name}: pinned =={pinned}, installed {installed}")
        else:
            print(f"{name}=={installed} (declared >={minimum})")
    for problem in problems:
        print(f"check_oldest: error: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
