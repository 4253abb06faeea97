"""tox's ``build`` env: build the distributions as a packager would, then use them as a user would.

1. ``python -m build`` (an sdist, then the wheel built from that sdist) for tapegrad and each
   contrib pack; a build that prints a deprecation warning fails.
2. ``twine check --strict`` on every file; each sdist and wheel carries the LICENSE.
3. The wheels go into a fresh venv in a temporary folder outside the source tree (tapegrad with its
   ``train`` extra); there ``tapegrad ops``, ``plugins``, ``check --plugin rnn,ctc`` and
   ``train --epochs 1`` run, the packages import from the venv, and every version agrees with its
   distribution's metadata (``tapegrad plugins`` included).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DISTS = {  # distribution -> (source folder, import package)
    "tapegrad": (ROOT, "tapegrad"),
    "tapegrad-rnn": (ROOT / "contrib" / "tapegrad-rnn", "tapegrad_rnn"),
    "tapegrad-ctc": (ROOT / "contrib" / "tapegrad-ctc", "tapegrad_ctc"),
}
PLUGINS = {"math": "tapegrad", "activations": "tapegrad", "layers": "tapegrad", "losses": "tapegrad",
           "rnn": "tapegrad-rnn", "ctc": "tapegrad-ctc"}

# Run inside the venv: each package imports from the venv (not a source tree) and its __version__ is
# its distribution's version; prints {distribution: version} as JSON.
VERSIONS = """
import importlib, importlib.metadata, json, sys
versions = {}
for dist, package in json.loads(sys.argv[1]).items():
    module = importlib.import_module(package)
    assert module.__file__.startswith(sys.prefix), f"{package} imported from {module.__file__}"
    versions[dist] = importlib.metadata.version(dist)
    assert module.__version__ == versions[dist], f"{package}.__version__ {module.__version__} != {versions[dist]}"
print(json.dumps(versions))
"""


def fail(message: str) -> None:
    sys.exit(f"check_dists: error: {message}")


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, show: bool = True) -> str:
    """Run ``cmd``, print it and (if ``show``, or if it fails) its output; return the output."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if show or proc.returncode != 0:
        print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        fail(f"{' '.join(str(c) for c in cmd[:3])} ... exited with {proc.returncode}")
    return proc.stdout


def build(dist_dir: Path) -> None:
    for name, (source, _) in DISTS.items():
        out = run(sys.executable, "-m", "build", "--outdir", dist_dir, source, show=False)
        # setuptools' own chatter is long: show its warnings and the result only
        for line in out.splitlines():
            if re.search(r"warn|deprecat|^Successfully", line, re.IGNORECASE):
                print(line)
        if re.search(r"deprecat", out, re.IGNORECASE):
            fail(f"building {name} printed a deprecation warning:\n{out}")
    run(sys.executable, "-m", "twine", "check", "--strict", *sorted(dist_dir.iterdir()))
    for path in sorted(dist_dir.iterdir()):
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as archive:
                names, pattern = archive.namelist(), r"[^/]+\.dist-info/licenses/LICENSE"
        else:
            with tarfile.open(path) as archive:
                names, pattern = archive.getnames(), r"[^/]+/LICENSE"
        if not any(re.fullmatch(pattern, n) for n in names):
            fail(f"{path.name} has no LICENSE")


def use(dist_dir: Path, work: Path) -> None:
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv)
    python, tapegrad = venv / "bin" / "python", venv / "bin" / "tapegrad"
    wheels = {name: next(dist_dir.glob(f"{name.replace('-', '_')}-*.whl")) for name in DISTS}
    run(python, "-m", "pip", "install", "--quiet", f"{wheels['tapegrad']}[train]",
        *(w for name, w in wheels.items() if name != "tapegrad"))
    # Away from the source tree: a scratch folder as working directory, nothing of ROOT on sys.path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    cwd = work / "scratch"
    cwd.mkdir()
    packages = json.dumps({name: package for name, (_, package) in DISTS.items()})
    versions = json.loads(run(python, "-c", VERSIONS, packages, cwd=cwd, env=env))
    if run(tapegrad, "--version", cwd=cwd, env=env).strip() != f"tapegrad {versions['tapegrad']}":
        fail("tapegrad --version does not match the installed distribution")
    plugins = {p["name"]: p for p in json.loads(run(tapegrad, "plugins", "--json", cwd=cwd, env=env, show=False))}
    for name, dist in PLUGINS.items():
        p = plugins.get(name)
        if p is None or (p["distribution"], p["version"], p["status"]) != (dist, versions[dist], "ok"):
            fail(f"tapegrad plugins shows {p} for plugin {name!r}; expected {dist} {versions[dist]}, status ok")
    run(tapegrad, "plugins", cwd=cwd, env=env)
    run(tapegrad, "ops", cwd=cwd, env=env)
    run(tapegrad, "check", "--plugin", "rnn,ctc", cwd=cwd, env=env)
    run(tapegrad, "train", "--epochs", "1", cwd=cwd, env=env)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tapegrad-dists-") as tmp:
        work = Path(tmp)
        if work.resolve().is_relative_to(ROOT):
            fail(f"the temporary folder {work} lies inside the source tree")
        dist_dir = work / "dist"
        build(dist_dir)
        use(dist_dir, work)
    print("check_dists: every distribution built, checked and used from its wheel")


if __name__ == "__main__":
    main()
