"""The checkpoint file of ``Trainer(checkpoint=PATH)``: one zip archive, a JSON manifest and .npy arrays.

Layout (``numpy.load`` opens it too): ``manifest.json`` holds ``{"format": "tapegrad-checkpoint",
"version": 1, "content": ...}``, the content being everything but arrays (what the Trainer saves: the
epoch, the history, optimizer and scheduler state, the generators' states, the command's
configuration) with each array replaced by ``{"array": "arrays/K.npy"}`` (and tuples and dicts tagged,
so that they come back as they were); each array is an ``.npy`` member, written and read with
``allow_pickle=False``.

Why not a pickle: a checkpoint is a file a user may receive from someone else, and unpickling runs
whatever code the file names. JSON and ``.npy`` without pickles can only hold data, and every value
read is checked against the model it is loaded into before anything changes.

``write`` replaces the file atomically (a temporary file beside it, flushed to disk, then renamed):
an interruption while saving leaves the previous checkpoint whole. ``read`` refuses a file that is not
a checkpoint, of another format version, or whose arrays are larger than ``max_bytes`` (a zip bomb).
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import ParameterLoadError
from .files import write_atomically

__all__ = ["FORMAT", "VERSION", "Checkpoint", "read", "write", "encode", "decode"]

FORMAT = "tapegrad-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
#: The largest manifest read (its history and states; arrays are members of their own).
MAX_MANIFEST_BYTES = 64 << 20


@dataclass
class Checkpoint:
    """A checkpoint as read: its ``content`` (decoded: arrays in place) and where it came from."""

    path: Path
    content: dict[str, Any]

    @property
    def label(self) -> str:
        return f"checkpoint {str(self.path)!r}"


def encode(value: Any, arrays: dict[str, np.ndarray], where: str) -> Any:
    """``value`` as JSON data: arrays moved into ``arrays`` (replaced by ``{"array": member}``), tuples
    kept apart from lists, numpy scalars as Python numbers. Anything else raises TypeError naming ``where``."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where} holds an array of Python objects, which a checkpoint cannot hold")
        member = f"arrays/{len(arrays)}.npy"
        arrays[member] = value
        return {"array": member}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return {"tuple": [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key {key!r} that is not a str, which a checkpoint cannot hold")
            out[key] = encode(v, arrays, f"{where}[{key!r}]")
        return {"dict": out}
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a checkpoint cannot hold (numbers, strings, arrays, "
        "lists, tuples and dicts of them only)"
    )


def decode(value: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The inverse of ``encode``."""
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if set(value) == {"array"}:
            return arrays[value["array"]]
        if set(value) == {"tuple"}:
            return tuple(decode(v, arrays) for v in value["tuple"])
        if set(value) == {"dict"}:
            return {key: decode(v, arrays) for key, v in value["dict"].items()}
        raise ValueError(f"unexpected entry {sorted(value)}")
    return value


def write(path: Path, content: Mapping[str, Any]) -> None:
    """Write ``content`` (data ``encode`` takes) to ``path``, atomically. Raises TypeError naming what a
    checkpoint cannot hold, OSError when it cannot be written; the previous file, if any, is left whole."""
    arrays: dict[str, np.ndarray] = {}
    encoded = encode(dict(content), arrays, "the checkpoint")
    text = json.dumps({"format": FORMAT, "version": VERSION, "content": encoded}).encode()

    def fill(handle: IO[bytes]) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            archive.writestr(MANIFEST, text)
            for member, array in arrays.items():
                with archive.open(member, "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.ascontiguousarray(array), allow_pickle=False)

    write_atomically(path, fill)


def read(path: Path, max_bytes: int) -> Checkpoint:
    """Read the checkpoint at ``path``: ``ParameterLoadError`` naming it when it is not one this version
    reads, or when its arrays hold more than ``max_bytes`` of values (checked from the members' headers,
    before any array is read)."""
    label = f"checkpoint {str(path)!r}"
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ParameterLoadError(f"{label} cannot be read as a checkpoint ({reason})") from None
    with archive:
        try:
            info = archive.getinfo(MANIFEST)
        except KeyError:
            raise ParameterLoadError(f"{label} is not a tapegrad checkpoint (it has no {MANIFEST})") from None
        if info.file_size > MAX_MANIFEST_BYTES:
            raise ParameterLoadError(f"{label}: its {MANIFEST} declares {info.file_size} bytes; refusing to read it")
        try:
            manifest = json.loads(archive.read(info).decode())
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError) as exc:
            raise ParameterLoadError(f"{label}: its {MANIFEST} is not readable JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ParameterLoadError(f"{label} is not a tapegrad checkpoint (no format {FORMAT!r} in its manifest)")
        if manifest.get("version") != VERSION:
            raise ParameterLoadError(
                f"{label} is of checkpoint format version {manifest.get('version')!r}; "
                f"this tapegrad reads version {VERSION}"
            )
        arrays = _arrays(archive, label, max_bytes)
    try:
        decoded = decode(manifest["content"], arrays)
        if not isinstance(decoded, dict):
            raise TypeError(f"its content is a {type(decoded).__name__}, not a dict")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ParameterLoadError(f"{label}: its manifest does not fit its arrays ({exc!r})") from None
    return Checkpoint(path, decoded)


def _arrays(archive: zipfile.ZipFile, label: str, max_bytes: int) -> dict[str, np.ndarray]:
    members = [i for i in archive.infolist() if i.filename != MANIFEST]
    headers = {}
    total = 0
    for info in members:
        if not info.filename.endswith(".npy"):
            raise ParameterLoadError(f"{label} holds an unexpected member {info.filename!r}")
        try:
            with archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                reader = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(handle)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise ParameterLoadError(
                f"{label}: member {info.filename!r} is not a readable .npy array ({exc})"
            ) from None
        if dtype.hasobject:
            raise ParameterLoadError(f"{label}: member {info.filename!r} holds Python objects; refusing to read it")
        headers[info.filename] = (info, shape, dtype)
        total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if total > max_bytes:
            raise ParameterLoadError(
                f"{label} declares more than {max_bytes} bytes of arrays, more than the model it is loaded into "
                "can hold; refusing to read it"
            )
    arrays = {}
    for name, (info, _, _) in headers.items():
        try:
            with archive.open(info) as handle:
                arrays[name] = np.lib.format.read_array(handle, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ParameterLoadError(f"{label}: member {name!r} cannot be read ({exc})") from None
    return arrays
