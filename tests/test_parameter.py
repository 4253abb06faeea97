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
