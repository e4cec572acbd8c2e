"""Writing files so that a crash or a full disk never leaves a half-written one: the one
atomic-write helper (temp file, every byte written, fsync, rename, fsync of the directory)
used by the checkpoint, the disk buffer's cursor and the file exporter's gzip of rotated
files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Writes every byte of ``data`` (``os.write`` may write fewer); raises on failure."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[BinaryIO]:
    """A file object whose contents replace ``path`` as a whole when the block ends without
    an error; on an error ``path`` is untouched and the temp file removed."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if fsync:
        fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> None:
    """Replaces ``path`` with ``data`` atomically (see ``atomic_file``)."""
    with atomic_file(path, fsync) as f:
        f.write(data)
