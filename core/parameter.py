"""``Parameter``: the named store of a graph's trainable variables, with save and load.

The file format is an ``.npz`` (a zip of ``.npy`` members, readable with ``np.load``): the values
are members ``0.npy``, ``1.npy``, ...; ``__tapegrad_names__.npy`` holds the parameter names in that
order (unicode) and ``__tapegrad_name_lengths__.npy`` their lengths (numpy drops trailing NULs), so
any name round-trips (``"file"``, ``"emb"`` beside ``"emb.npy"``, ``"a/b"``, ``""``, ...). Files whose
member names are the parameter names (written before this format) still load.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn, Union

import numpy as np

from .broadcast import as_shape
from .errors import InputTypeError, ParameterLoadError, ShapeError
from .events import replayable
from .files import write_atomically
from .variable import Variable
from .variable import clear_grads as clear_variable_grads

__all__ = ["Parameter", "ParameterFile", "Init", "parameter_file_path"]

Init = Union[None, str, float, Callable[[tuple[int, ...], np.random.Generator], Any], np.ndarray]


def _initial_value(name: str, shape: tuple[int, ...], init: Init, rng: np.random.Generator, dtype: Any) -> np.ndarray:
    if init is None or (isinstance(init, str) and init == "normal"):
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


_NAMES = "__tapegrad_names__.npy"
_LENGTHS = "__tapegrad_name_lengths__.npy"
_CHUNK = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"
# Without a list of expected names, the name list may expand at most this much over its stored size.
_NAMES_EXPANSION = 8
_SHORT_NAME = 256
_PLAIN_NAME = re.compile(r"[\w.\-/\[\]]+")
# Whatever a hostile zip or .npy header makes zipfile, zlib or numpy raise.
_READ_ERRORS = (
    OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error, RuntimeError,
    NotImplementedError, KeyError, IndexError, OverflowError, TypeError, SyntaxError,
)


def _show(name: object) -> str:
    """A parameter name for a message: bare when plain, quoted when it could be misread."""
    return name if isinstance(name, str) and _PLAIN_NAME.fullmatch(name) else repr(name)


def _listing(names: Iterable[object]) -> str:
    return ", ".join(_show(n) for n in sorted(names, key=repr))


def _path_text(path: object, owner: str) -> str:
    """``path`` (a str or an ``os.PathLike`` naming a str path) as a str; else an ``InputTypeError``."""
    try:
        text = os.fspath(path)  # type: ignore[call-overload]
    except TypeError:
        text = None
    if not isinstance(text, str):
        raise InputTypeError(f"{owner}: path must be a str or os.PathLike, got {type(path).__name__}")
    return text


def parameter_file_path(path: str | os.PathLike[str]) -> Path:
    """The file ``Parameter.save(path)`` writes: ``path`` with ``.npz`` added unless it ends so."""
    text = _path_text(path, "parameter_file_path")
    if "\0" in text:
        raise OSError(errno.EINVAL, "a path cannot hold a NUL character", text)
    target = Path(text)
    if target.name in ("", ".", "..") or text.endswith(("/", os.sep)):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    return target if target.suffix == ".npz" else target.with_name(target.name + ".npz")


@dataclass(frozen=True)
class _Member:
    """One ``.npy`` member as its zip entry and header describe it (no data read)."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes of .npy header before the data

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class ParameterFile:
    """A parameter file (``.npz`` from ``Parameter.save``), opened and checked without reading values.

    Opening reads only the zip directory and each member's ``.npy`` header. Malformed files (empty,
    not a zip, truncated, a lone ``.npy``, non-``.npy`` or pickled members, sizes that contradict the
    headers) raise ``ParameterLoadError`` naming the file and the fault before any data is
    decompressed. ``shapes``/``dtypes`` describe the values; ``read(name)`` decompresses exactly the
    bytes of one value. ``expected_names`` (the names the caller can use) bounds how much of the name
    list may be read. Use as a context manager, or call ``close``. A ``path`` that is neither a str
    nor an ``os.PathLike`` raises ``InputTypeError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, expected_names: Iterable[object] | None = None) -> None:
        target = Path(_path_text(path, "ParameterFile"))
        with contextlib.suppress(OSError):  # an unreadable path is reported by _open
            if not target.exists() and target.suffix != ".npz" and target.name not in ("", ".", ".."):
                candidate = target.with_name(target.name + ".npz")
                if candidate.exists():
                    target = candidate
        self.path = target
        self.label = f"parameter file {str(target)!r}"
        self.file_size = 0
        self._handle: IO[bytes] | None = None
        self._zip = self._open()
        try:
            self._members = self._index(expected_names)
        except BaseException:
            self.close()
            raise

    def _fail(self, what: str) -> NoReturn:
        raise ParameterLoadError(f"{self.label} {what}")

    def _open(self) -> zipfile.ZipFile:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._fail("does not exist")
        except OSError as exc:
            self._fail(f"cannot be read: {exc.strerror or exc}")
        except ValueError as exc:  # a path holding a NUL character
            self._fail(f"cannot be read: {exc}")
        if stat.S_ISDIR(info.st_mode):
            self._fail("is a directory, not a parameter file")
        if not stat.S_ISREG(info.st_mode):
            self._fail("is not a regular file")
        if info.st_size == 0:
            self._fail("is empty")
        self.file_size = info.st_size
        try:
            self._handle = open(self.path, "rb")  # noqa: SIM115 (closed by close())
            head = self._handle.read(len(_NPY_MAGIC))
            if head == _NPY_MAGIC:
                self._fail("is a single .npy array, not a .npz parameter file as Parameter.save writes")
            self._handle.seek(0)
            return zipfile.ZipFile(self._handle)
        except ParameterLoadError:
            self.close()
            raise
        except zipfile.BadZipFile:
            self.close()
            damaged = "a damaged or truncated zip archive" if head[:2] == b"PK" else "not a zip archive"
            self._fail(f"is not a readable .npz parameter file: {damaged}")
        except OSError as exc:
            self.close()
            self._fail(f"cannot be read: {exc.strerror or exc}")
        except _READ_ERRORS as exc:
            self.close()
            self._fail(f"cannot be read: {type(exc).__name__}: {exc}")

    def _index(self, expected_names: Iterable[object] | None) -> dict[str, _Member]:
        problems: list[str] = []
        members: dict[str, _Member] = {}
        seen: set[str] = set()
        for info in self._zip.infolist():
            member = info.filename
            if member in seen:
                problems.append(f"member {member!r} appears twice")
                continue
            seen.add(member)
            if not member.endswith(".npy"):
                problems.append(f"member {member!r} is not a .npy array")
            elif info.flag_bits & 0x1:
                problems.append(f"member {member!r} is encrypted")
            elif info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                problems.append(
                    f"member {member!r} uses compression method {info.compress_type} "
                    "(only stored and deflated are read)"
                )
            else:
                found = self._header(info)
                if isinstance(found, str):
                    problems.append(found)
                else:
                    members[member] = found
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            self._fail(f"is malformed (nothing was loaded): {'; '.join(problems[:5])}{more}")
        if _NAMES in members:
            return self._named(members, expected_names)
        return {member[: -len(".npy")]: entry for member, entry in members.items()}

    def _header(self, info: zipfile.ZipInfo) -> _Member | str:
        """The member's header, or what is wrong with it; reads only the header's bytes."""
        member = info.filename
        try:
            with self._zip.open(info) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(fp)
                else:
                    return f"member {member!r} has unsupported .npy version {version}"
                offset = fp.tell()
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            return f"member {member!r} is damaged ({exc or type(exc).__name__})"
        except _READ_ERRORS as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return f"member {member!r} is not a valid .npy array ({reason})"
        shape = tuple(shape)
        if dtype.hasobject:
            return f"member {member!r} holds Python objects (pickled data), which are never loaded"
        if any(size < 0 for size in shape):
            return f"member {member!r} declares an invalid shape {shape}"
        entry = _Member(info, shape, dtype, bool(fortran_order), offset)
        if info.file_size != offset + entry.nbytes:
            return (
                f"member {member!r} holds {info.file_size} bytes, but its header describes "
                f"{offset + entry.nbytes} (shape {shape}, dtype {dtype})"
            )
        return entry

    def _named(self, members: dict[str, _Member], expected_names: Iterable[object] | None) -> dict[str, _Member]:
        """The current format: values ``0.npy``, ... named by the names member."""
        names_entry, lengths_entry = members.pop(_NAMES), members.pop(_LENGTHS, None)
        if names_entry.dtype.kind != "U" or len(names_entry.shape) != 1:
            self._fail(
                f"is malformed (nothing was loaded): {_NAMES!r} must be a 1-d array of str, "
                f"not shape {names_entry.shape} dtype {names_entry.dtype}"
            )
        count = names_entry.shape[0]
        if lengths_entry is None or lengths_entry.dtype.kind not in "iu" or lengths_entry.shape != (count,):
            self._fail(f"is malformed (nothing was loaded): {_LENGTHS!r} must be {count} integers beside {_NAMES!r}")
        wanted = {f"{i}.npy" for i in range(count)}
        if set(members) != wanted:
            absent = sorted(wanted - set(members), key=lambda m: int(m[:-4]))
            stray = sorted(set(members) - wanted)
            self._fail(
                f"is malformed (nothing was loaded): it names {count} values, but "
                + "; ".join(filter(None, [
                    f"members {', '.join(absent[:5])} are missing" if absent else "",
                    f"members {', '.join(map(repr, stray[:5]))} are not among them" if stray else "",
                ]))
            )
        longest = names_entry.dtype.itemsize // 4
        if expected_names is not None:
            # A longer name cannot be one the caller expects; short ones are read to be named in errors.
            limit = max((len(n) for n in expected_names if isinstance(n, str)), default=0)
            if longest > max(limit, _SHORT_NAME):
                raise ParameterLoadError(
                    f"{self.label} does not fit these parameters (nothing was loaded): it holds a name "
                    f"of {longest} characters, longer than any expected"
                )
        elif names_entry.nbytes > max(_CHUNK, _NAMES_EXPANSION * names_entry.info.compress_size):
            self._fail(f"is malformed (nothing was loaded): its name list expands to {names_entry.nbytes} bytes")
        stored = self._read(names_entry).tolist()
        lengths = self._read(lengths_entry).tolist()
        result: dict[str, _Member] = {}
        for index, (text, length) in enumerate(zip(stored, lengths)):
            if not len(text) <= length <= longest:
                self._fail(f"is malformed (nothing was loaded): name {index} has length {length}, not {len(text)}")
            name = text + "\x00" * (length - len(text))  # restore the trailing NULs numpy drops
            if name in result:
                self._fail(f"is malformed (nothing was loaded): the name {_show(name)} appears twice")
            result[name] = members[f"{index}.npy"]
        return result

    def _read(self, entry: _Member) -> np.ndarray:
        """Decompress exactly ``entry``'s bytes (the zip's CRC is checked at the end)."""
        size = entry.nbytes
        buffer = bytearray(size)
        view = memoryview(buffer)
        try:
            with self._zip.open(entry.info) as fp:
                fp.read(entry.offset)
                done = 0
                while done < size:
                    chunk = fp.read(min(_CHUNK, size - done))
                    if not chunk:
                        raise EOFError(f"{size - done} of {size} bytes missing")
                    view[done : done + len(chunk)] = chunk
                    done += len(chunk)
                if fp.read(1):
                    raise ValueError("more data than its header describes")
        except _READ_ERRORS as exc:
            self._fail(f"is damaged (nothing was loaded): member {entry.info.filename!r}: {exc}")
        if size == 0:
            return np.zeros(entry.shape, dtype=entry.dtype)
        flat = np.frombuffer(buffer, dtype=entry.dtype)
        if entry.fortran_order:
            return flat.reshape(entry.shape[::-1]).transpose()
        return flat.reshape(entry.shape)

    @property
    def names(self) -> list[str]:
        return list(self._members)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self._members.items()}

    @property
    def dtypes(self) -> dict[str, np.dtype]:
        return {name: entry.dtype for name, entry in self._members.items()}

    @property
    def nbytes(self) -> int:
        """Bytes the values take once read (as the headers declare them)."""
        return sum(entry.nbytes for entry in self._members.values())

    def read(self, name: str) -> np.ndarray:
        """The value called ``name``: exactly its declared bytes are decompressed."""
        if name not in self._members:
            raise KeyError(name)
        return self._read(self._members[name])

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ParameterFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Reading a file whole, without parameters to compare against, expands it at most this much (beyond a floor).
EXPANSION, EXPANSION_FLOOR = 16, 64 << 20


def read_parameter_file(path: str | os.PathLike[str]) -> tuple[Path, dict[str, np.ndarray]]:
    """Every value of a file written by ``Parameter.save`` (``.npz`` may be left off the name).

    With no parameters to bound them, the values may take at most 16 times the file's size (or
    64 MiB): more is a zip bomb and raises ``ParameterLoadError``. ``Parameter.load`` has no such
    limit: it compares the file with the parameters before reading.
    """
    with ParameterFile(path) as source:
        if source.nbytes > max(EXPANSION_FLOOR, EXPANSION * source.file_size):
            raise ParameterLoadError(
                f"{source.label} declares {source.nbytes} bytes of values in {source.file_size} bytes: "
                "refusing to expand it"
            )
        return source.path, {name: source.read(name) for name in source.names}


def _write_npz(handle: IO[bytes], names: list[str], values: list[np.ndarray]) -> None:
    members: list[tuple[str, np.ndarray]] = [
        (_NAMES, np.array(names, dtype=str) if names else np.array([], dtype="<U1")),
        (_LENGTHS, np.array([len(n) for n in names], dtype=np.int64)),
        *((f"{i}.npy", value) for i, value in enumerate(values)),
    ]
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for member, array in members:
            with archive.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, array, allow_pickle=False)


class Parameter:
    """Named store of a graph's variables: ``{"affine_0.W": Variable, ...}``.

    ``get_variable`` creates a variable once and returns the same one afterwards;
    ``save``/``load`` move the values through an ``.npz`` file (any str name round-trips).
    """

    def __init__(self, rng: np.random.Generator | None = None, dtype: Any = np.float64) -> None:
        self.variable_dict: dict[str, Variable] = {}
        self.rng = rng if rng is not None else np.random.default_rng()
        self.dtype = np.dtype(dtype)

    def get_variable(self, name: str, shape: Any = None, init: Init = None, *, trainable: bool = True) -> Variable:
        """Return the variable called ``name``, creating it with ``init`` if it is new.

        ``init``: None or "normal" (standard normal / sqrt(shape[0])), "zeros", "ones",
        a number, an array, or a callable ``init(shape, rng) -> ndarray``. Names are str.
        """
        if not isinstance(name, str):
            raise InputTypeError(f"parameter name {name!r} is a {type(name).__name__}; expected a str")
        if shape is not None:
            shape = as_shape(shape, f"parameter {name!r}")
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

    @replayable
    def clear_grads(self) -> None:
        """Reset every variable's gradient to zeros."""
        clear_variable_grads(self.variable_dict.values())

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
        """Write every value to ``path`` (``.npz`` is added if missing) atomically and return the path.

        The data goes to a temporary file beside the target, which then replaces it: a failed save
        leaves an earlier file intact. A new file gets the mode ``open`` would give it (0o666 less
        the umask); a replaced one keeps its mode. Raises ``OSError`` when it cannot be written (a
        path holding a NUL character included) and ``InputTypeError`` when ``path`` is neither a str
        nor an ``os.PathLike``.
        """
        target = parameter_file_path(_path_text(path, "Parameter.save"))
        names = list(self.variable_dict)
        for name in names:
            if not isinstance(name, str):
                raise InputTypeError(
                    f"parameter name {name!r} is a {type(name).__name__}, not a str: it cannot be saved"
                )
        values = [np.asarray(v.value) for v in self.variable_dict.values()]
        for name, value in zip(names, values):
            if value.dtype.hasobject:
                raise InputTypeError(f"parameter {_show(name)} holds Python objects (dtype object): it cannot be saved")
        write_atomically(target, lambda handle: _write_npz(handle, names, values))
        return target

    @replayable
    def load(self, path: str | os.PathLike[str] | ParameterFile) -> None:
        """Load the values of a file written by ``save`` (or of an open ``ParameterFile``).

        All or nothing: the file must be well formed, its names, shapes and dtypes must match these
        parameters exactly and every target array must be writable before any value is read and
        copied in. Anything else raises ``ParameterLoadError`` naming the file and the fault; a ``path``
        that is neither a str nor an ``os.PathLike`` raises ``InputTypeError``.
        """
        if isinstance(path, ParameterFile):
            self._load_from(path)
            return
        with ParameterFile(_path_text(path, "Parameter.load"), expected_names=self.variable_dict) as source:
            self._load_from(source)

    def _load_from(self, source: ParameterFile) -> None:
        shapes, dtypes = source.shapes, source.dtypes
        self._check_fits({name: (shapes[name], dtypes[name]) for name in shapes}, source.label)
        arrays = {name: source.read(name) for name in self.variable_dict}
        self._assign(arrays)

    @replayable
    def load_state_dict(self, arrays: Mapping[str, Any], *, source: str = "state dict") -> None:
        """Copy ``arrays`` (as from ``state_dict``) into the variables; all or nothing."""
        converted: dict[str, np.ndarray] = {}
        problems = []
        for name, value in arrays.items():
            try:
                array = value if isinstance(value, np.ndarray) else np.asarray(value)
            except Exception as exc:  # whatever a foreign object's __array__ raises
                problems.append(f"{_show(name)}: not an array ({type(exc).__name__}: {exc})")
                continue
            if array.dtype.hasobject:
                problems.append(f"{_show(name)}: holds Python objects (dtype object)")
            converted[name] = array
        if problems:
            raise ParameterLoadError(
                f"{source} does not fit these parameters (nothing was loaded): " + "; ".join(problems)
            )
        self._check_fits({name: (a.shape, a.dtype) for name, a in converted.items()}, source)
        self._assign(converted)

    def _check_fits(self, specs: Mapping[Any, tuple[tuple[int, ...], np.dtype]], source: str) -> None:
        """Raise ``ParameterLoadError`` unless values of ``specs`` can replace every value here."""
        frozen = [
            name for name, v in self.variable_dict.items()
            if not isinstance(v.value, np.ndarray) or not v.value.flags.writeable
        ]
        if frozen:
            raise ParameterLoadError(
                f"cannot load {source} (nothing was loaded): the values of {_listing(frozen)} are read-only arrays"
            )
        problems = []
        missing = [name for name in self.variable_dict if name not in specs]
        extra = [name for name in specs if name not in self.variable_dict]
        if missing:
            problems.append(f"missing: {_listing(missing)}")
        if extra:
            problems.append(f"unexpected: {_listing(extra)}")
        for name, variable in self.variable_dict.items():
            if name not in specs:
                continue
            shape, dtype = specs[name]
            if tuple(shape) != variable.shape:
                problems.append(f"{_show(name)}: shape {tuple(shape)} given, {variable.shape} expected")
            elif dtype.newbyteorder("=") != variable.dtype:
                problems.append(f"{_show(name)}: dtype {dtype} given, {variable.dtype} expected")
        if problems:
            raise ParameterLoadError(
                f"{source} does not fit these parameters (nothing was loaded): " + "; ".join(problems)
            )

    def _assign(self, arrays: Mapping[str, np.ndarray]) -> None:
        # Everything was checked (names, shapes, dtypes, writable targets): no copy can fail.
        for name, array in arrays.items():
            self.variable_dict[name].value[...] = array
