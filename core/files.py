"""Writing a file atomically: what ``Parameter.save`` and the Trainer's checkpoints share."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomically(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` with ``fill(handle)``: into a new file beside it, synced, then renamed over it.

    A symbolic link is written through; the file keeps the mode of the one it replaces. Whatever goes
    wrong (an exception from ``fill``, a full disk, an interrupt), the previous file, if any, is left
    whole and the temporary one removed. Raises OSError when the file cannot be written.
    """
    destination = Path(os.path.realpath(path)) if path.is_symlink() else path
    if destination.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(destination)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(destination).st_mode))
        os.replace(tmp, destination)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new empty file in ``target``'s folder; created like ``open(..., "wb")``, so the umask applies."""
    stem = target.name if len(target.name) <= 200 else "tapegrad"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = target.with_name(f".{stem}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(target.parent))
