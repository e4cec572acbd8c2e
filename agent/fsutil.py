"""Writing files so that a crash or a full disk never leaves a half-written one: the one
atomic-write helper (temp file, every byte written, fsync, rename, fsync of the directory)
used by the checkpoint, the disk buffer's cursor and the file exporter's gzip of rotated
files; and the one all-or-nothing append (``append_whole``) used by the disk buffer's
segments and the file exporter's output files.

A full disk makes ``os.write`` write part of what it was given and then fail with ENOSPC;
a file object's buffered ``write`` hides that and keeps the unwritten rest in its buffer.
Every writer here uses raw file descriptors and checks what was written.

Both write at most ``WRITE_SLICE`` (64 KiB) per ``os.write``. Measured on a 2-vCPU VM
(kernel 6.18, ext4; ``docs/benchmarks.md``, session 9): a buffered write of 128 KiB or
more cost about 6 times the kernel CPU per byte of one of 64 KiB, nearly all of it in
copying into the page cache's larger folios (``copy_folio_from_iter_atomic``); the file
exporter's writer thread spent 1.1 CPU s per million bulk lines with batch-sized writes
and 0.25 s with 64 KiB slices. A slice costs one more system call (a few µs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

WRITE_SLICE = 64 * 1024  # bytes per os.write: see above


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Writes every byte of ``data`` (``os.write`` may write fewer); raises on failure."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view[:WRITE_SLICE])
        view = view[written:]


class TruncateFailed(OSError):
    """An append failed and so did cutting its bytes off again: the file must be cut back
    to ``size`` before anything else is appended to it."""

    def __init__(self, size: int, error: OSError) -> None:
        super().__init__(error.errno, f"{error.strerror or error} (cutting back to {size})")
        self.size = size


def append_whole(fd: int, data: bytes | memoryview, fsync: bool = False) -> None:
    """Appends every byte of ``data`` to ``fd`` (opened with ``O_APPEND``), then fsyncs it
    if asked, or appends nothing: when a write or the fsync fails (a full disk: part of
    the data written, then ENOSPC), the bytes this call wrote are cut off again
    (``ftruncate``) and the error raised, so the file ends where it ended before. When
    even the cut fails, raises ``TruncateFailed`` (from the first error) naming the size
    to cut back to."""
    view = memoryview(data)
    total = len(view)
    start = os.lseek(fd, 0, os.SEEK_END)  # where the file ends before this call
    written = 0
    try:
        while written < total:
            written += os.write(fd, view[written : written + WRITE_SLICE])
        if fsync:
            os.fsync(fd)
    except OSError as exc:
        if written:
            try:
                os.ftruncate(fd, start)
            except OSError as cut:
                raise TruncateFailed(start, cut) from exc
        raise


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
