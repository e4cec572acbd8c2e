"""The disk buffer on a real full disk (a 2 MB tmpfs): an append that fails leaves no torn
line and can be retried; nothing lost, nothing twice; a cursor that cannot be saved is no
crash. Also holds the tmpfs helpers the other full-disk tests use."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from agent.delivery.buffer import DiskBuffer
from agent.record import ContainerMeta, Record

META = ContainerMeta("c" * 64, "web", "img", {"l": "v"}, "h")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path``, unmounted afterwards: a disk that really
    fills (ENOSPC, short writes). Skips when mounting is not permitted here (the CI runs
    the tests as root on a fresh machine, where it is)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); the CI runs tests as root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path, leave: int = 0, name: str = "filler") -> Path:
    """A file taking the free space of ``directory``'s filesystem but ``leave`` bytes (0:
    every byte, down to the last one a write can take); delete it to free the space."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        st = os.statvfs(directory)
        want = max(0, st.f_bavail * st.f_frsize - leave)
        block = b"\0" * (1 << 16)
        while want > 0:
            try:
                want -= os.write(fd, block[: min(len(block), want)])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        if not leave:
            for size in (4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block[:size])
    finally:
        os.close(fd)
    return path


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def recs(start: int, n: int) -> list[Record]:
    return [
        Record.log(f"2026-01-01T00:00:00.{i:09d}Z", META, "stdout", f"line {i} " + "x" * 150, False)
        for i in range(start, start + n)
    ]


def whole_lines(directory: Path) -> int:
    """Asserts every segment holds whole, readable lines only; returns how many."""
    n = 0
    for seg in sorted(directory.glob("*.seg")):
        data = seg.read_bytes()
        assert not data or data.endswith(b"\n"), f"{seg.name}: torn last line"
        for line in data.splitlines():
            orjson.loads(line)
            n += 1
    return n


async def drain(buf: DiskBuffer) -> list[int]:
    out: list[int] = []
    while buf.size:
        records, cursor = await buf.read(1000)
        out += [int((r.message or "").split()[1]) for r in records]
        await buf.commit(cursor)
    return out


@pytest.mark.parametrize("segment_bytes", [8 << 20, 16 * 1024])
async def test_an_append_on_a_full_disk_is_whole_or_nothing_and_retried(
    disk: Path, segment_bytes: int
) -> None:
    directory = disk / "buffers" / "x"
    buf = DiskBuffer(directory, max_bytes=64 << 20, fsync=True, segment_bytes=segment_bytes)
    buf.open()
    filler = fill(disk, leave=200 * 1024)
    n, failed = 0, None
    for _ in range(100):
        batch = recs(n, 100)  # ~20 KB
        try:
            await buf.append(batch)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            failed = batch
            break
        n += 100
    assert failed is not None, "the disk never filled"
    assert n > 0
    # The failed append left the segments as they were: whole lines, those appended.
    assert whole_lines(directory) == n == buf.records
    for _ in range(3):  # the caller retries while the disk is still full
        with pytest.raises(OSError):
            await buf.append(failed)
        assert whole_lines(directory) == n == buf.records
    filler.unlink()
    await buf.append(failed)  # space came back: the retry goes through
    await buf.append(recs(n + 100, 100))
    n += 200
    assert whole_lines(directory) == n
    assert await drain(buf) == list(range(n))
    assert buf.corrupt_bytes == 0 and not buf.dropped
    buf.close()


async def test_what_was_appended_on_a_full_disk_survives_a_restart(disk: Path) -> None:
    directory = disk / "buf"
    buf = DiskBuffer(directory, max_bytes=64 << 20)
    buf.open()
    filler = fill(disk, leave=100 * 1024)
    n = 0
    with pytest.raises(OSError):
        while True:
            await buf.append(recs(n, 50))
            n += 50
    buf.close()
    filler.unlink()
    again = DiskBuffer(directory, max_bytes=64 << 20)
    again.open()
    assert again.corrupt_bytes == 0 and again.records == n
    assert await drain(again) == list(range(n))
    again.close()


async def test_a_cursor_that_cannot_be_saved_is_no_crash(disk: Path) -> None:
    """The unspooling worker commits after every send: a full disk must not end it."""
    directory = disk / "buf"
    buf = DiskBuffer(directory, max_bytes=64 << 20)  # one segment: a commit deletes none
    buf.open()
    await buf.append(recs(0, 200))
    records, cursor = await buf.read(50)
    await buf.commit(cursor)  # a first cursor file
    saved = (directory / "cursor.json").read_bytes()
    filler = fill(disk)
    records, cursor = await buf.read(50)
    assert len(records) == 50
    await buf.commit(cursor)  # cannot be saved: no exception, the buffer goes on
    assert (directory / "cursor.json").read_bytes() == saved
    assert not list(directory.glob("*.tmp"))
    records, cursor = await buf.read(50)
    assert [int((r.message or "").split()[1]) for r in records] == list(range(100, 150))
    filler.unlink()
    await buf.commit(cursor)  # space came back: saved again
    assert orjson.loads((directory / "cursor.json").read_bytes())["offset"] > 0
    assert await drain(buf) == list(range(150, 200))
    buf.close()
    again = DiskBuffer(directory, max_bytes=64 << 20)
    again.open()
    assert again.records == 0
    again.close()


async def test_the_pipeline_spools_again_once_space_returns(disk: Path) -> None:
    """Both halves of a full disk: the append raises having stored nothing, and the runner
    (ExporterRunner._spool) backs off and appends the same batch again, so that everything
    reaches the exporter once space returns, once and in order."""
    from agent.delivery.runner import ExporterRunner
    from agent.retry import Backoff
    from tests.unit.delivery.test_pipeline import Config, Memory

    buf = DiskBuffer(disk / "buf", max_bytes=64 << 20)
    buf.open()
    exp = Memory("m", Config())
    runner = ExporterRunner(exp, Config(), Backoff(0.01, 0.05), buf)
    runner.start()
    filler = fill(disk, leave=50 * 1024)
    try:
        for i in range(0, 2000, 100):
            await runner.put(recs(i, 100))  # ~400 KB in all: the disk fills
        await asyncio.sleep(0.3)
        filler.unlink()
        for _ in range(100):
            if len(exp.got) >= 2000:
                break
            await asyncio.sleep(0.05)
        assert [int((r.message or "").split()[1]) for r in exp.got] == list(range(2000))
    finally:
        await runner.stop()
