import numpy as np
import pytest

import tapegrad as tg


def test_get_variable_creates_once_and_returns_the_same_variable():
    p = tg.Parameter(np.random.default_rng(0))
    w = p.get_variable("w", (3, 4))
    assert p.get_variable("w") is w
    assert p.get_variable("w", (3, 4)) is w
    assert list(p.variable_dict) == ["w"]
    with pytest.raises(tg.ShapeError):
        p.get_variable("w", (4, 3))


def test_default_init_is_normal_over_sqrt_fan_in_and_named_inits():
    p = tg.Parameter(np.random.default_rng(0))
    w = p.get_variable("w", (400, 300))
    assert abs(w.value.std() - 1 / np.sqrt(400)) < 0.002
    assert not p.get_variable("z", (2,), init="zeros").value.any()
    assert (p.get_variable("o", (2,), init="ones").value == 1).all()
    custom = p.get_variable("c", (2, 2), init=lambda shape, rng: np.full(shape, 7.0))
    assert (custom.value == 7).all()
    with pytest.raises(tg.InputTypeError, match="unknown init"):
        p.get_variable("bad", (2,), init="glorot")
    with pytest.raises(tg.ShapeError):
        p.get_variable("bad2", (2,), init=lambda shape, rng: np.ones(3))


def test_clear_grads():
    p = tg.Parameter()
    w = p.get_variable("w", (2,))
    w.grad += 1
    p.clear_grads()
    assert not w.grad.any()


def _store(seed=0, shape=(3, 2)):
    g = tg.Graph(seed=seed)
    g.get_variable("a.W", shape)
    g.get_variable("a.b", (shape[1],), init="zeros")
    return g.parameter


def test_save_load_round_trip(tmp_path):
    src, dst = _store(0), _store(1)
    path = src.save(tmp_path / "params.npz")
    assert path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no temporary file may be left behind"
    dst.load(path)
    for name in src.variable_dict:
        assert np.array_equal(src[name].value, dst[name].value)


def test_save_adds_npz_suffix(tmp_path):
    path = _store().save(tmp_path / "weights")
    assert path.name == "weights.npz"
    _store(1).load(tmp_path / "weights")


@pytest.mark.parametrize(
    "other, message",
    [
        (lambda: _store(shape=(4, 2)), "shape"),
        (lambda: _extra(), "unexpected: extra"),
        (lambda: _missing(), "missing: a.b"),
    ],
)
def test_load_refuses_files_that_do_not_fit_and_changes_nothing(tmp_path, other, message):
    path = other().save(tmp_path / "p.npz")
    target = _store(5)
    before = target.state_dict()
    with pytest.raises(tg.ParameterLoadError, match=message):
        target.load(path)
    for name, value in before.items():
        assert np.array_equal(target[name].value, value)


def test_load_refuses_other_dtype_and_missing_file(tmp_path):
    g32 = tg.Graph(dtype=np.float32)
    g32.get_variable("a.W", (3, 2))
    g32.get_variable("a.b", (2,))
    path = g32.parameter.save(tmp_path / "p32.npz")
    with pytest.raises(tg.ParameterLoadError, match="dtype"):
        _store().load(path)
    with pytest.raises(tg.ParameterLoadError, match="does not exist"):
        _store().load(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(tg.ParameterLoadError):
        _store().load(tmp_path / "junk.npz")


def _extra():
    p = _store()
    p.get_variable("extra", (1,))
    return p


def _missing():
    g = tg.Graph()
    g.get_variable("a.W", (3, 2))
    return g.parameter


def test_load_state_dict_is_all_or_nothing():
    target = _store(5)
    before = target.state_dict()
    bad = _store(0).state_dict()
    bad["a.b"] = bad["a.b"][:1]
    with pytest.raises(tg.ParameterLoadError, match=r"a.b: shape \(1,\) given, \(2,\) expected"):
        target.load_state_dict(bad)
    assert all(np.array_equal(target[n].value, v) for n, v in before.items())
    good = _store(0).state_dict()
    target.load_state_dict(good)
    assert all(np.array_equal(target[n].value, v) for n, v in good.items())


# --- the file format: any name round-trips, malformed files are refused before any data is read ---

import io  # noqa: E402
import os  # noqa: E402
import zipfile  # noqa: E402

from tapegrad.parameter import ParameterFile  # noqa: E402

AWKWARD_NAMES = [
    "emb", "emb.npy", "file", "a/b", "", "\x00", "a\x00", "ünï 名", "\ud800", "0", "__tapegrad_names__", "x" * 300
]


def _named(names, seed=0, shape=(3, 2)):
    p = tg.Parameter(np.random.default_rng(seed))
    for name in names:
        p.get_variable(name, shape)
    return p


def test_any_name_round_trips_without_collisions(tmp_path):
    src = _named(AWKWARD_NAMES, 0)
    path = src.save(tmp_path / "w.npz")
    dst = _named(AWKWARD_NAMES, 1)
    dst.load(path)
    for name in AWKWARD_NAMES:
        assert np.array_equal(dst[name].value, src[name].value), repr(name)
    assert len({v.value.tobytes() for v in dst}) == len(AWKWARD_NAMES)  # no value overwrote another


def test_saved_file_is_a_plain_npz_with_generated_member_names(tmp_path):
    path = _named(["file", "emb"]).save(tmp_path / "w.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["0", "1", "__tapegrad_name_lengths__", "__tapegrad_names__"]
        assert list(data["__tapegrad_names__"]) == ["file", "emb"]


def test_files_named_by_member_still_load(tmp_path):
    src = _store(0)
    np.savez(tmp_path / "old.npz", **src.state_dict())
    np.savez_compressed(tmp_path / "old_compressed.npz", **src.state_dict())
    for name in ("old.npz", "old_compressed.npz"):
        dst = _store(1)
        dst.load(tmp_path / name)
        assert all(np.array_equal(dst[n].value, v) for n, v in src.state_dict().items())


def test_non_str_names_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(tg.InputTypeError, match="not a str|expected a str"):
        tg.Parameter().get_variable(3, (2,))
    p = _store()
    p.variable_dict[("a", 1)] = tg.Variable(np.ones(2))
    with pytest.raises(tg.InputTypeError, match=r"\('a', 1\)"):
        p.save(tmp_path / "p.npz")
    assert list(tmp_path.iterdir()) == []


def test_saved_files_honour_the_umask_and_keep_an_existing_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = _store().save(tmp_path / "p.npz")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640
    os.chmod(path, 0o604)
    _store(1).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o604
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_a_failed_save_keeps_the_earlier_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = _store(0).save(tmp_path / "p.npz")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="No space"):
        _store(1).save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]


def test_save_into_a_directory_or_under_a_file_is_an_os_error(tmp_path):
    (tmp_path / "d.npz").mkdir()
    (tmp_path / "f").write_text("")
    for bad in (tmp_path / "d.npz", tmp_path / "f" / "p.npz", f"{tmp_path}/sub/"):
        with pytest.raises(OSError):
            _store().save(bad)


def test_a_read_only_target_fails_the_load_before_anything_changes(tmp_path):
    path = _store(0).save(tmp_path / "p.npz")
    target = _store(5)
    before = target.state_dict()
    target["a.b"].value.flags.writeable = False
    with pytest.raises(tg.ParameterLoadError, match=r"nothing was loaded.*a\.b.*read-only"):
        target.load(path)
    with pytest.raises(tg.ParameterLoadError, match="read-only"):
        target.load_state_dict(_store(0).state_dict())
    assert all(np.array_equal(target[n].value, v) for n, v in before.items())


def _zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _npy(array=None, header=None):
    buffer = io.BytesIO()
    if header is not None:
        np.lib.format.write_array_header_1_0(buffer, header)
    else:
        np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _malformed_files(tmp_path):
    good = _store(0).save(tmp_path / "good.npz").read_bytes()
    legacy = io.BytesIO()
    np.savez(legacy, **_store(0).state_dict())
    legacy = legacy.getvalue()
    (tmp_path / "empty.npz").write_bytes(b"")
    np.save(tmp_path / "single.npy", np.ones((3, 2)))
    (tmp_path / "truncated.npz").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.npz").write_bytes(b"hello, not a zip")
    flipped = bytearray(legacy)
    flipped[legacy.index(b"\x93NUMPY") + 130] ^= 0xFF  # inside a.W's data: the CRC no longer matches
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    huge = {"descr": "<f8", "fortran_order": False, "shape": (10**11,)}
    b = _npy(np.ones(2))
    _zip(tmp_path / "member.npz", {"a.W.npy": _npy(np.ones((3, 2))), "a.b.npy": b, "notes.txt": b"hi"})
    _zip(tmp_path / "pickled.npz", {"a.W.npy": _npy(np.array([object(), 1], dtype=object)), "a.b.npy": b})
    _zip(tmp_path / "huge.npz", {"a.W.npy": _npy(header=huge), "a.b.npy": b})
    _zip(tmp_path / "garbage_header.npz", {"a.W.npy": b"\x93NUMPY\x01\x00\x04\x00{}  ", "a.b.npy": b})
    return {
        "empty.npz": "is empty",
        "single.npy": "single .npy array",
        "truncated.npz": "damaged or truncated",
        "text.npz": "not a zip",
        "flipped.npz": "damaged",
        "member.npz": "'notes.txt' is not a .npy array",
        "pickled.npz": "Python objects",
        "huge.npz": r"header describes 800000000\d+",
        "garbage_header.npz": "not a valid .npy",
    }


def test_malformed_files_raise_parameter_load_error_naming_file_and_fault(tmp_path):
    import warnings

    cases = _malformed_files(tmp_path)
    for name, fault in cases.items():
        target = _store(5)
        before = target.state_dict()
        with pytest.raises(tg.ParameterLoadError, match=fault) as info:
            target.load(tmp_path / name)
        assert name in str(info.value)
        assert all(np.array_equal(target[n].value, v) for n, v in before.items()), name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        with zipfile.ZipFile(tmp_path / "twice.npz", "w") as archive:
            archive.writestr("a.W.npy", _npy(np.ones((3, 2))))
            archive.writestr("a.W.npy", _npy(np.zeros((3, 2))))
    with pytest.raises(tg.ParameterLoadError, match="appears twice"):
        _store().load(tmp_path / "twice.npz")


def test_current_format_files_with_broken_name_lists_are_refused(tmp_path):
    names = _npy(np.array(["a.W", "a.b"]))
    lengths = _npy(np.array([3, 3]))
    values = {"0.npy": _npy(np.ones((3, 2))), "1.npy": _npy(np.ones(2))}
    cases = {
        "no_lengths": ({"__tapegrad_names__.npy": names, **values}, "integers"),
        "missing_value": ({"__tapegrad_names__.npy": names, "__tapegrad_name_lengths__.npy": lengths,
                           "0.npy": values["0.npy"]}, "1.npy are missing"),
        "numbers_as_names": ({"__tapegrad_names__.npy": _npy(np.ones(2)), "__tapegrad_name_lengths__.npy": lengths,
                              **values}, "array of str"),
        "same_name": ({"__tapegrad_names__.npy": _npy(np.array(["a.W", "a.W"])),
                       "__tapegrad_name_lengths__.npy": lengths, **values}, "appears twice"),
        "bad_length": ({"__tapegrad_names__.npy": names, "__tapegrad_name_lengths__.npy": _npy(np.array([1, 3])),
                        **values}, "length"),
    }
    for name, (members, fault) in cases.items():
        with pytest.raises(tg.ParameterLoadError, match=fault):
            _store().load(_zip(tmp_path / f"{name}.npz", members))


def test_a_zip_bomb_is_refused_from_its_headers_without_decompressing(tmp_path):
    import tracemalloc

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in ("a.W.npy", "a.b.npy"):
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.zeros(2 * 10**6))  # 16 MB each
    assert path.stat().st_size < 100_000
    target = _store()
    tracemalloc.start()
    try:
        with pytest.raises(tg.ParameterLoadError, match=r"a\.W: shape \(2000000,\) given, \(3, 2\) expected"):
            target.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # nothing near the 32 MB the members expand to


def test_parameter_file_reads_exactly_the_declared_bytes(tmp_path):
    src = _named(["w"], shape=(1000,))
    path = src.save(tmp_path / "p.npz")
    with ParameterFile(path) as source:
        assert source.names == ["w"] and source.dtypes["w"] == np.float64 and source.nbytes == 8000
        assert np.array_equal(source.read("w"), src["w"].value)
        with pytest.raises(KeyError):
            source.read("nope")


def test_a_name_longer_than_any_expected_is_not_read(tmp_path):
    path = _named(["y" * 5000]).save(tmp_path / "long.npz")
    with pytest.raises(tg.ParameterLoadError, match="5000 characters, longer than any expected"):
        _named(["a"]).load(path)


def test_byte_swapped_files_load(tmp_path):
    src = _store(0)
    swapped = {n: v.astype(v.dtype.newbyteorder("S")) for n, v in src.state_dict().items()}
    np.savez(tmp_path / "swapped.npz", **swapped)
    dst = _store(1)
    dst.load(tmp_path / "swapped.npz")
    assert all(np.array_equal(dst[n].value, v) for n, v in src.state_dict().items())


def test_read_parameter_file_reads_every_value_but_refuses_a_bomb(tmp_path, monkeypatch):
    from tapegrad import parameter

    src = _named(AWKWARD_NAMES[:4])
    path, values = parameter.read_parameter_file(src.save(tmp_path / "w"))
    assert path.name == "w.npz" and list(values) == AWKWARD_NAMES[:4]
    assert all(np.array_equal(values[n], src[n].value) for n in values)
    _zip(tmp_path / "bomb.npz", {"w.npy": _npy(np.zeros(10**6))}, compression=zipfile.ZIP_DEFLATED)
    monkeypatch.setattr(parameter, "EXPANSION_FLOOR", 1 << 20)
    with pytest.raises(tg.ParameterLoadError, match="refusing to expand"):
        parameter.read_parameter_file(tmp_path / "bomb.npz")


def test_a_path_with_a_nul_character_is_refused_with_the_path_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = _store()
    with pytest.raises(tg.ParameterLoadError, match=r"parameter file 'a\\x00b' cannot be read: .*null"):
        store.load("a\0b")
    with pytest.raises(OSError, match=r"NUL character: 'a\\x00b"):
        store.save("a\0b")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [None, 3, b"p.npz"])
def test_a_path_that_is_not_a_str_or_path_like_is_an_input_type_error(tmp_path, bad):
    from tapegrad.parameter import ParameterFile

    store = _store()
    name = type(bad).__name__
    with pytest.raises(tg.InputTypeError, match=rf"Parameter.load: path must be a str or os.PathLike, got {name}"):
        store.load(bad)
    with pytest.raises(tg.InputTypeError, match=rf"Parameter.save: path must be a str or os.PathLike, got {name}"):
        store.save(bad)
    with pytest.raises(tg.InputTypeError, match=rf"ParameterFile: path must be a str or os.PathLike, got {name}"):
        ParameterFile(bad)
    store.load(store.save(tmp_path / "p"))  # a Path still works
