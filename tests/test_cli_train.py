"""``tapegrad train`` / ``tapegrad evaluate``: outputs checked before training, files checked before loading."""

import os
import zipfile

import numpy as np
import pytest

import tapegrad as tg
from tapegrad.cli import main

TRAIN = ["train", "--epochs", "1", "--hidden", "4", "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training starts: the bad output must be found before."""
    from tapegrad.training import Trainer

    def refuse(*args, **kwargs):
        pytest.fail("training started although an output path was unusable")

    monkeypatch.setattr(Trainer, "train", refuse)


def _folder(path):
    path.mkdir()
    return path


def _under_a_file(directory, *rest):
    (directory / "file").write_text("")
    return directory.joinpath("file", *rest)


@pytest.mark.parametrize(
    "option, make, fault",
    [
        ("--save", lambda d: _folder(d / "out.npz"), "is a directory"),
        ("--save", lambda d: f"{d}/folder/", "is a directory"),
        ("--save", lambda d: _under_a_file(d, "m.npz"), "is not a folder"),
        ("--plot", lambda d: _folder(d / "p.png"), "is a directory"),
        ("--plot", lambda d: _under_a_file(d, "sub", "p.png"), "is not a folder"),
        ("--plot", lambda d: d / "p.xyz", "unsupported format 'xyz'"),
        ("--plot", lambda d: d / "p.npz", "unsupported format 'npz'"),
    ],
)
def test_unusable_outputs_are_refused_before_training(tmp_path, capsys, no_training, option, make, fault):
    target = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, *TRAIN, option, str(target))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("tapegrad train: error:") and fault in err
    assert str(target).rstrip("/").split("/")[-1] in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no junk left behind


def test_unwritable_folder_is_refused_before_training(tmp_path, capsys, no_training, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)  # as root, chmod would not stop us
    code, _, err = run(capsys, *TRAIN, "--save", str(tmp_path / "m.npz"))
    assert code == 2 and "not writable (Permission denied)" in err and "Traceback" not in err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_before_training(tmp_path, capsys, no_training):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, _, err = run(capsys, *TRAIN, "--plot", str(folder / "p.png"))
    finally:
        folder.chmod(0o700)
    assert code == 2 and "not writable" in err


def test_outputs_in_folders_still_to_be_made_and_a_default_plot_format(tmp_path, capsys):
    code, out, _ = run(capsys, *TRAIN, "--save", str(tmp_path / "a" / "b" / "m"), "--plot", str(tmp_path / "c" / "curve"))
    assert code == 0
    assert (tmp_path / "a" / "b" / "m.npz").exists()
    assert (tmp_path / "c" / "curve.png").read_bytes()[:4] == b"\x89PNG" and "curve.png" in out
    code, _, _ = run(capsys, *TRAIN, "--plot", str(tmp_path / "curve.svg"))
    assert code == 0 and b"<svg" in (tmp_path / "curve.svg").read_bytes()


def test_a_save_that_fails_after_training_keeps_the_model_and_says_why(tmp_path, capsys, monkeypatch):
    original = tg.Parameter.save
    calls = []

    def fails_once(self, path):
        calls.append(path)
        if len(calls) == 1:
            raise PermissionError(13, "Permission denied", str(path))
        return original(self, path)

    monkeypatch.setattr(tg.Parameter, "save", fails_once)
    code, _, err = run(capsys, *TRAIN, "--save", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "p.png"))
    assert code == 1
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert "m.npz" in line and "Permission denied" in line and "instead" in line
    rescue = line.split("saved them to '")[1].split("'")[0]
    try:
        assert main(["evaluate", "--load", rescue]) == 0  # the trained model was not lost
    finally:
        os.unlink(rescue)
    assert (tmp_path / "p.png").exists()  # the plot was still written


def test_a_plot_that_fails_after_training_is_one_line(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    code, _, err = run(capsys, *TRAIN, "--save", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "p.png"))
    assert code == 1 and err.count("\n") == 1 and "p.png" in err and "No space left" in err
    assert (tmp_path / "m.npz").exists()


def _saved(tmp_path, capsys, hidden=4):
    path = tmp_path / "mlp.npz"
    assert main([*TRAIN[:3], "--hidden", str(hidden), "--no-progress", "--save", str(path)]) == 0
    capsys.readouterr()
    return path


def _values(path):
    with tg.parameter.ParameterFile(path) as source:
        return {name: source.read(name).copy() for name in source.names}


def _rewrite(path, values):
    p = tg.Parameter()
    for name, value in values.items():
        p.get_variable(name, value.shape, init=value)
    p.save(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_evaluate_refuses_non_finite_weights(tmp_path, capsys, bad):
    path = _saved(tmp_path, capsys)
    values = _values(path)
    values["affine_1.b"][3] = bad
    _rewrite(path, values)
    code, out, err = run(capsys, "evaluate", "--load", str(path))
    assert code == 1 and "accuracy" not in out
    assert "NaN or infinite" in err and "affine_1.b" in err and err.count("\n") == 1


@pytest.mark.parametrize("shape", [(64,), (10, 4), (64, 4, 1), (64, 0), (4, 64)])
def test_evaluate_gives_a_clear_error_for_a_wrongly_shaped_first_layer(tmp_path, capsys, shape):
    path = _saved(tmp_path, capsys)
    values = _values(path)
    values["affine_0.W"] = np.zeros(shape)
    _rewrite(path, values)
    code, _, err = run(capsys, "evaluate", "--load", str(path))
    assert code == 1 and "affine_0.W" in err and "mlp.npz" in err and "Traceback" not in err


def test_evaluate_reports_every_misshapen_layer(tmp_path, capsys):
    path = _saved(tmp_path, capsys)
    values = _values(path)
    values["affine_1.W"] = np.zeros((5, 10))
    _rewrite(path, values)
    code, _, err = run(capsys, "evaluate", "--load", str(path))
    assert code == 1 and "affine_1.W: shape (5, 10) given, (4, 10) expected" in err


def test_evaluate_refuses_malformed_files(tmp_path, capsys):
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "one.npy", np.ones(3))
    (tmp_path / "dir.npz").mkdir()
    for name, fault in [("empty.npz", "is empty"), ("one.npy", "single .npy"), ("dir.npz", "is a directory")]:
        code, _, err = run(capsys, "evaluate", "--load", str(tmp_path / name))
        assert code == 1 and fault in err and err.count("\n") == 1


def test_evaluate_refuses_a_bomb_that_describes_a_huge_model(tmp_path, capsys, monkeypatch):
    from tapegrad import tasks

    monkeypatch.setattr(tasks, "EXPANSION_FLOOR", 1 << 20)
    hidden = 20_000  # 12 MB of values in a file of a few KB
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, shape in [("affine_0.W", (64, hidden)), ("affine_0.b", (hidden,)), ("affine_1.W", (hidden, 10)),
                            ("affine_1.b", (10,))]:
            with archive.open(f"{name}.npy", "w") as out:
                np.lib.format.write_array(out, np.zeros(shape))
    code, _, err = run(capsys, "evaluate", "--load", str(path))
    assert code == 1 and "refusing to expand" in err and "20000" in err


def test_evaluate_loads_the_pre_format_files(tmp_path, capsys):
    path = _saved(tmp_path, capsys)
    code, out, _ = run(capsys, "evaluate", "--load", str(path))
    accuracy = out.split("test accuracy: ")[1].split()[0]
    np.savez(tmp_path / "old.npz", **_values(path))
    code, out, _ = run(capsys, "evaluate", "--load", str(tmp_path / "old.npz"))
    assert code == 0 and f"test accuracy: {accuracy}" in out


def test_evaluate_checks_names_before_building_a_model(tmp_path, capsys, monkeypatch):
    from tapegrad import models

    def no_model(*args, **kwargs):
        pytest.fail("a model was built for a file that cannot fit it")

    _rewrite(tmp_path / "other.npz", {"w": np.ones(3)})
    monkeypatch.setattr(models, "MLP", no_model)
    code, _, err = run(capsys, "evaluate", "--load", str(tmp_path / "other.npz"), "--hidden", str(10**6))
    assert code == 1 and "missing: affine_0.W" in err and "unexpected: 'w'" in err


# -- --profile, --draw, --no-capture ------------------------------------------------------------------
def _row(out, name):
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [name])


@pytest.mark.parametrize("eager", [False, True])
def test_train_profile_prints_the_table_after_training(capsys, eager):
    code, out, _ = run(capsys, *TRAIN, "--profile", *(["--no-capture"] if eager else []))
    assert code == 0
    table = out.split("profile of the training")[1]
    assert out.index("final test accuracy") < out.index("profile of the training")
    assert ("(eager steps" if eager else "(captured steps") in table
    steps = 1347  # one epoch at batch size 1, then one batched test prediction
    assert _row(table, "Affine")[1:3] == [str(2 * (steps + 1)), "0" if eager else str(2 * (steps - 2))]
    assert _row(table, "Sigmoid")[1] == _row(table, "SoftmaxLoss")[1] == str(steps + 1)
    assert _row(table, "SGD.step")[1] == str(steps)
    assert "Step total (the profiled block)" in table and "optimizer" in table


def _statements(text):
    return [line for line in text.splitlines() if not line.lstrip().startswith("graph [")]


def test_train_draw_writes_one_training_step_captured_or_eager(tmp_path, capsys):
    import re

    drawings = {}
    for mode in ([], ["--no-capture"]):
        target = tmp_path / f"tape{len(mode)}.dot"
        code, out, _ = run(capsys, *TRAIN, "--batch-size", "16", "--draw", str(target), *mode)
        assert code == 0 and f"wrote {target}" in out
        drawings[bool(mode)] = target.read_text()
    captured, eager = drawings[False], drawings[True]
    assert "captured step" in captured and "Graph 'MLP'" in eager
    assert _statements(captured) == _statements(eager)
    assert len(re.findall(r"^  a\d+ \[", eager, flags=re.M)) == 4 and len(re.findall(r"^  \w+ -> \w+", eager, flags=re.M)) == 9
    assert eager.count("|grad| = ") == 4 and "input\\n(16, 64)" in eager  # the four parameters' gradients


def test_train_draw_without_graphviz_is_refused_before_training_and_writes_the_dot(tmp_path, capsys, no_training, monkeypatch):
    import sys

    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    for blocked in (False, True):
        if blocked:
            monkeypatch.setitem(sys.modules, "graphviz", None)
        out_dir = tmp_path / f"out{int(blocked)}"
        out_dir.mkdir()
        code, _, err = run(capsys, *TRAIN, "--draw", str(out_dir / "tape.svg"))
        assert code == 2 and err.count("\n") == 1 and err.startswith("tapegrad train: error: cannot draw to")
        assert "pip install 'tapegrad[draw]'" in err and "or draw to a .dot file" in err
        assert str(out_dir / "tape.dot") in err and "untrained" in err
        assert sorted(p.name for p in out_dir.iterdir()) == ["tape.dot"]  # the DOT text, not the picture
        text = (out_dir / "tape.dot").read_text()
        assert text.startswith("digraph tape {") and "affine_0.W" in text and "-> loss" in text


@pytest.mark.parametrize("name, fault", [("tape.jpeg", "unsupported format 'jpeg'"), ("tape", "unsupported format '(no extension)'")])
def test_train_draw_to_an_unknown_format_is_refused_before_training(tmp_path, capsys, no_training, name, fault):
    code, _, err = run(capsys, *TRAIN, "--draw", str(tmp_path / name))
    assert code == 2 and err.count("\n") == 1 and fault in err


def test_train_draw_into_a_directory_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "tape.dot").mkdir()
    code, _, err = run(capsys, *TRAIN, "--draw", str(tmp_path / "tape.dot"))
    assert code == 2 and "cannot write --draw" in err and "is a directory" in err


def test_train_draw_that_fails_to_render_after_training_keeps_the_dot_text(tmp_path, capsys, monkeypatch):
    import sys
    import types

    from tapegrad import _cli_train

    graphviz = types.ModuleType("graphviz")

    class ExecutableNotFound(RuntimeError):
        pass

    class Source:
        def __init__(self, text):
            pass

        def pipe(self, format):
            raise ExecutableNotFound("dot vanished")

    graphviz.Source, graphviz.ExecutableNotFound = Source, ExecutableNotFound
    monkeypatch.setitem(sys.modules, "graphviz", graphviz)
    monkeypatch.setattr(_cli_train.shutil, "which", lambda name: "/usr/bin/dot")
    code, out, err = run(capsys, *TRAIN, "--draw", str(tmp_path / "tape.png"), "--save", str(tmp_path / "m.npz"))
    assert code == 1 and err.count("\n") == 1 and "needs Graphviz's dot program" in err
    assert str(tmp_path / "tape.dot") in err and (tmp_path / "tape.dot").read_text().startswith("digraph tape {")
    assert (tmp_path / "m.npz").exists() and not (tmp_path / "tape.png").exists()


def test_train_no_capture_trains_eagerly(capsys, monkeypatch):
    def no_capture(*args, **kwargs):
        pytest.fail("a step was captured under --no-capture")

    monkeypatch.setattr(tg.Graph, "capture", no_capture)
    code, out, _ = run(capsys, *TRAIN, "--no-capture", "--profile")
    assert code == 0 and "final test accuracy" in out and "(eager steps" in out


def test_train_help_documents_profile_draw_and_no_capture(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-capture run every step eagerly" in text and "Trainer(capture=False)" in text
    assert "--profile time each op's own forward and backward" in text
    assert "--draw PATH after training, draw one training step" in text and "pip install 'tapegrad[draw]'" in text


# -- bad input found before training: numbers out of range, outputs that are one file or cannot be named ---
@pytest.mark.parametrize(
    "argv, message",
    [
        ([*TRAIN, "--seed", "4294967296"], "argument --seed: expected a whole number from 0 to 4294967295, got 4294967296"),
        (["evaluate", "--load", "m.npz", "--seed", "4294967296"], "argument --seed: expected a whole number from 0 to 4294967295, got 4294967296"),
        ([*TRAIN, "--seed", "-1"], "argument --seed: expected a whole number from 0 to 4294967295, got -1"),
        ([*TRAIN, "--hidden", "100000000000"], "argument --hidden: expected a whole number from 1 to 1000000, got 100000000000"),
        (["evaluate", "--load", "m.npz", "--hidden", "100000000000"], "argument --hidden: expected a whole number from 1 to 1000000, got 100000000000"),
        ([*TRAIN, "--batch-size", "9" * 23], f"argument --batch-size: expected a whole number from 1 to 1000000000, got {'9' * 23}"),
        ([*TRAIN, "--epochs", "0"], "argument --epochs: expected a whole number from 1 to 1000000000, got 0"),
        ([*TRAIN, "--lr", "1e400"], "argument --lr: expected a finite number, got 1e400"),
    ],
)
def test_numbers_out_of_range_are_refused_by_the_parser(capsys, no_training, argv, message):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == f"tapegrad {argv[0]}: error: {message}"  # under argparse's usage lines


def test_the_bounds_themselves_are_accepted():
    from tapegrad.cli import build_parser

    args = build_parser().parse_args(["train", "--seed", str(2**32 - 1), "--hidden", "1000000", "--batch-size", str(10**9)])
    assert (args.seed, args.hidden, args.batch_size) == (2**32 - 1, 10**6, 10**9)
    args = build_parser().parse_args(["evaluate", "--load", "m.npz", "--seed", "0", "--hidden", "1000000"])
    assert (args.seed, args.hidden) == (0, 10**6)


def test_a_batch_larger_than_the_training_set_is_one_batch_of_it(capsys):
    code, out, _ = run(capsys, *TRAIN, "--batch-size", "100000")
    assert code == 0 and "batch size 100000" in out and "final test accuracy" in out


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
    from tapegrad import models

    def too_big(*args, **kwargs):
        np.empty((64, 10**15))  # numpy's own MemoryError, saying what it wanted

    monkeypatch.setattr(models, "MLP", too_big)
    code, _, err = run(capsys, *TRAIN)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("tapegrad train: error: out of memory: Unable to allocate") and "(64, 1000000000000000)" in err


@pytest.fixture
def graphviz_found(monkeypatch):
    """Rendering looks possible, whether or not Graphviz is installed: nothing is drawn before training."""
    import sys
    import types

    from tapegrad import _cli_train

    monkeypatch.setitem(sys.modules, "graphviz", sys.modules.get("graphviz") or types.ModuleType("graphviz"))
    monkeypatch.setattr(_cli_train.shutil, "which", lambda name: "/usr/bin/dot")


def _link(path, to):
    path.symlink_to(to)
    return path


@pytest.mark.parametrize(
    "outputs",
    [
        lambda d: [("--plot", d / "same.svg"), ("--draw", d / "same.svg")],
        lambda d: [("--plot", "same.png"), ("--draw", "./same.png")],  # relative, in tmp_path
        lambda d: [("--plot", d / "p.png"), ("--draw", d / "sub" / ".." / "p.png")],
        lambda d: [("--save", _link(d / "m.npz", "p.png")), ("--plot", d / "p.png")],  # m.npz -> p.png
        lambda d: [("--save", _link(d / "m.npz", "p.png")), ("--plot", d / "p")],  # p: PNG by default
        lambda d: [("--plot", _link(d / "p.png", "tape.dot")), ("--draw", d / "tape.svg")],  # beside tape.svg
        lambda d: [("--save", _link(d / "m.npz", _folder(d / "real") / "tape.dot")), ("--draw", d / "real" / "tape.pdf")],
    ],
)
def test_outputs_that_are_one_file_are_refused_before_training(tmp_path, capsys, monkeypatch, no_training, graphviz_found, outputs):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    pairs = outputs(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run(capsys, *TRAIN, *(str(a) for pair in pairs for a in pair))
    assert code == 2 and err.count("\n") == 1 and err.startswith("tapegrad train: error: --")
    assert "are the same file" in err and all(option in err for option, _ in pairs)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # the first output was not written either


def test_a_hard_link_is_one_file_too(tmp_path, capsys, no_training):
    (tmp_path / "p.png").write_bytes(b"old")
    os.link(tmp_path / "p.png", tmp_path / "m.npz")
    code, _, err = run(capsys, *TRAIN, "--save", str(tmp_path / "m.npz"), "--plot", str(tmp_path / "p.png"))
    assert code == 2 and "--save" in err and "--plot" in err and "are the same file" in err
    assert (tmp_path / "p.png").read_bytes() == b"old"


def test_different_outputs_side_by_side_are_all_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, *TRAIN, "--save", "run", "--plot", "run", "--draw", "run.dot")
    assert code == 0 and sorted(os.listdir()) == ["run.dot", "run.npz", "run.png"]


LONG = "x" * 300  # longer than any file system's longest name (255 bytes)


@pytest.mark.parametrize(
    "option, name",
    [("--save", LONG), ("--plot", f"{LONG}.png"), ("--draw", f"{LONG}.dot"), ("--save", f"{LONG}/m.npz"),
     ("--plot", f"{LONG}/sub/p.png")],
)
def test_names_too_long_are_refused_before_training(tmp_path, capsys, no_training, option, name):
    code, _, err = run(capsys, *TRAIN, option, str(tmp_path / name))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tapegrad train: error: cannot write {option} '{tmp_path}/xxx") and "too long" in err
    assert list(tmp_path.iterdir()) == []


def test_a_loop_of_symbolic_links_is_refused_before_training(tmp_path, capsys, no_training):
    (tmp_path / "la.npz").symlink_to("lb.npz")
    (tmp_path / "lb.npz").symlink_to("la.npz")
    for target in ("la.npz", "la.npz/../m.npz"):
        code, _, err = run(capsys, *TRAIN, "--save", str(tmp_path / target))
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"tapegrad train: error: cannot write --save '{tmp_path}/la.npz") and "symbolic links" in err
    assert sorted(os.listdir(tmp_path)) == ["la.npz", "lb.npz"]


@pytest.mark.parametrize("option, name", [("--save", "m\0.npz"), ("--plot", "p\0.png"), ("--draw", "t\0.dot")])
def test_a_nul_in_a_path_is_refused_before_training(tmp_path, capsys, no_training, option, name):
    code, _, err = run(capsys, *TRAIN, option, str(tmp_path / name))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"tapegrad train: error: cannot write {option} ")
    assert list(tmp_path.iterdir()) == []
