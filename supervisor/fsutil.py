"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write(path: Path, data: bytes, mode: int = 0o600, gid: int | None = None) -> bool:
    """Write data to path through a temp file + rename. Returns False when the content was the same."""
    try:
        if path.read_bytes() == data:
            _set_owner_mode(path, mode, gid)
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(stream.fileno(), mode)
            if gid is not None:
                os.fchown(stream.fileno(), -1, gid)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _set_owner_mode(path: Path, mode: int, gid: int | None) -> None:
    if gid is not None and path.stat().st_gid != gid:
        os.chown(path, -1, gid)
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)


def ensure_dir(path: Path, mode: int = 0o700, gid: int | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _set_owner_mode(path, mode, gid)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on path (created if missing) for read-modify-write cycles."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
