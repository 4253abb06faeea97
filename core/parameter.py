"""``Parameter``: the named store of a graph's trainable variables, with save and load."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from .broadcast import as_shape
from .errors import InputTypeError, ParameterLoadError, ShapeError
from .variable import Variable

__all__ = ["Parameter", "Init"]

Init = Union[None, str, float, Callable[[tuple[int, ...], np.random.Generator], Any], np.ndarray]


def _initial_value(name: str, shape: tuple[int, ...], init: Init, rng: np.random.Generator, dtype: Any) -> np.ndarray:
    if init is None or init == "normal":
        fan_in = shape[0] if shape else 1
        value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
    elif isinstance(init, str):
        if init == "zeros":
            value = np.zeros(shape)
        elif init == "ones":
            value = np.ones(shape)
        else:
            raise InputTypeError(
                f"parameter {name!r}: unknown init {init!r}; expected 'normal', 'zeros', "
                "'ones', a number, an array or a callable init(shape, rng)"
            )
    elif callable(init):
        value = np.asarray(init(shape, rng))
    elif isinstance(init, (int, float)):
        value = np.full(shape, float(init))
    else:
        value = np.asarray(init)
    if value.shape != shape:
        raise ShapeError(f"parameter {name!r}: init produced shape {value.shape}, expected {shape}")
    return np.array(value, dtype=dtype)


def read_parameter_file(path: str | os.PathLike[str]) -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays of a file written by ``Parameter.save`` (``.npz`` may be left off the name)."""
    target = Path(path)
    if not target.exists() and target.suffix != ".npz" and target.with_name(target.name + ".npz").exists():
        target = target.with_name(target.name + ".npz")
    try:
        with np.load(target, allow_pickle=False) as data:
            return target, {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise ParameterLoadError(f"parameter file {str(target)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ParameterLoadError(f"parameter file {str(target)!r} is not a readable .npz file: {exc}") from None


class Parameter:
    """Named store of a graph's variables: ``{"affine_0.W": Variable, ...}``.

    ``get_variable`` creates a variable once and returns the same one afterwards;
    ``save``/``load`` move the values through an ``.npz`` file.
    """

    def __init__(self, rng: np.random.Generator | None = None, dtype: Any = np.float64) -> None:
        self.variable_dict: dict[str, Variable] = {}
        self.rng = rng if rng is not None else np.random.default_rng()
        self.dtype = np.dtype(dtype)

    def get_variable(self, name: str, shape: Any = None, init: Init = None, *, trainable: bool = True) -> Variable:
        """Return the variable called ``name``, creating it with ``init`` if it is new.

        ``init``: None or "normal" (standard normal / sqrt(shape[0])), "zeros", "ones",
        a number, an array, or a callable ``init(shape, rng) -> ndarray``.
        """
        if shape is not None:
            shape = as_shape(shape)
        existing = self.variable_dict.get(name)
        if existing is not None:
            if shape is not None and shape != existing.shape:
                raise ShapeError(f"parameter {name!r} already exists with shape {existing.shape}, requested {shape}")
            return existing
        if shape is None:
            raise InputTypeError(f"parameter {name!r} does not exist yet: a shape is needed to create it")
        value = _initial_value(name, shape, init, self.rng, self.dtype)
        variable = Variable(value, name=name, trainable=trainable)
        self.variable_dict[name] = variable
        return variable

    def trainable_variables(self) -> list[Variable]:
        return [v for v in self.variable_dict.values() if v.trainable]

    def clear_grads(self) -> None:
        """Reset every variable's gradient to zeros."""
        for variable in self.variable_dict.values():
            variable.clear_grad()

    def __getitem__(self, name: str) -> Variable:
        return self.variable_dict[name]

    def __contains__(self, name: object) -> bool:
        return name in self.variable_dict

    def __iter__(self) -> Iterator[Variable]:
        return iter(self.variable_dict.values())

    def __len__(self) -> int:
        return len(self.variable_dict)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.shape}" for k, v in self.variable_dict.items())
        return f"Parameter({{{inner}}})"

    def state_dict(self) -> dict[str, np.ndarray]:
        return {name: variable.value.copy() for name, variable in self.variable_dict.items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write every value to ``path`` (``.npz``) atomically: a temporary file, then a rename."""
        target = Path(path)
        if target.suffix != ".npz":
            target = target.with_name(target.name + ".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                arrays: dict[str, Any] = {name: v.value for name, v in self.variable_dict.items()}
                np.savez(handle, **arrays)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target

    def load(self, path: str | os.PathLike[str]) -> None:
        """Load values saved by ``save``; nothing changes unless every name, shape and dtype matches."""
        target, arrays = read_parameter_file(path)
        self.load_state_dict(arrays, source=f"parameter file {str(target)!r}")

    def load_state_dict(self, arrays: dict[str, np.ndarray], *, source: str = "state dict") -> None:
        """Copy ``arrays`` (as from ``state_dict``) into the variables; all or nothing."""
        problems = []
        missing = sorted(set(self.variable_dict) - set(arrays))
        extra = sorted(set(arrays) - set(self.variable_dict))
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected: {', '.join(extra)}")
        for name in sorted(set(arrays) & set(self.variable_dict)):
            have, got = self.variable_dict[name], arrays[name]
            if got.shape != have.shape:
                problems.append(f"{name}: shape {got.shape} given, {have.shape} expected")
            elif got.dtype != have.dtype:
                problems.append(f"{name}: dtype {got.dtype} given, {have.dtype} expected")
        if problems:
            raise ParameterLoadError(
                f"{source} does not fit these parameters (nothing was loaded): "
                + "; ".join(problems)
            )
        for name, array in arrays.items():
            self.variable_dict[name].value[...] = array
