"""``fsutil``'s writers: every byte written, in slices of at most ``WRITE_SLICE`` bytes, and
an append that fails after some of its slices were written is cut off again (a real full
tmpfs)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent import fsutil
from tests.unit.delivery.test_fulldisk_buffer import fill, small_tmpfs


def pattern(n: int) -> bytes:
    """``n`` bytes in which a slice written twice or out of order shows."""
    return b"".join(b"%08d\n" % i for i in range(n // 9 + 1))[:n]


@pytest.mark.parametrize("size", [0, 1, fsutil.WRITE_SLICE, fsutil.WRITE_SLICE + 1, 300_001])
@pytest.mark.parametrize("write", ["append_whole", "write_all"])
def test_writes_every_byte_in_slices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, write: str
) -> None:
    sizes: list[int] = []
    real_write = os.write

    def recording_write(fd: int, data: bytes | memoryview) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(fsutil.os, "write", recording_write)
    path = tmp_path / "out"
    path.write_bytes(b"before\n")
    data = pattern(size)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        getattr(fsutil, write)(fd, memoryview(data) if size % 2 else data)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"before\n" + data
    assert sum(sizes) == size
    assert all(0 < n <= fsutil.WRITE_SLICE for n in sizes)
    assert len(sizes) == -(-size // fsutil.WRITE_SLICE)  # no more calls than slices


def test_an_append_failing_after_whole_slices_is_cut_off(tmp_path: Path) -> None:
    """Room for two slices and a half: the third slice's write is short or fails, the
    fourth fails with ENOSPC, and the file ends where it ended before the call."""
    with small_tmpfs(tmp_path / "disk", size="1m") as disk:
        path = disk / "out"
        path.write_bytes(b"kept\n")
        fill(disk, leave=fsutil.WRITE_SLICE * 5 // 2, name="filler")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            with pytest.raises(OSError) as failed:
                fsutil.append_whole(fd, pattern(fsutil.WRITE_SLICE * 4))
            assert failed.value.errno == errno.ENOSPC
            assert path.read_bytes() == b"kept\n"
            (disk / "filler").unlink()
            fsutil.append_whole(fd, b"after\n")  # the next append lands right behind
        finally:
            os.close(fd)
        assert path.read_bytes() == b"kept\nafter\n"
