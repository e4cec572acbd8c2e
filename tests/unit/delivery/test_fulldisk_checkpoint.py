"""Checkpoints when ``state_dir`` is full (a real 2 MB tmpfs) or no file descriptor is
left: the old file stays intact, the failure is logged once, ``last_error`` says why, and
the next write after the cause is gone succeeds."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.delivery.checkpoint import CheckpointStore
from agent.positions import Position
from tests.unit.delivery.test_fulldisk_buffer import fill, small_tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk") as mounted:
        yield mounted


def positions(step: int, containers: int = 300) -> dict[str, dict[str, Position]]:
    ts = f"2026-01-01T00:00:{step:02d}.000000000Z"
    return {f"{c:064x}": {"stdout": Position(ts, step + 1)} for c in range(containers)}


async def test_a_full_state_dir_never_corrupts_the_checkpoint(disk: Path) -> None:
    store = CheckpointStore(str(disk / "state"), 1.0)
    await store.write_async(positions(0))
    assert store.last_error == ""
    before = store.path.read_bytes()
    filler = fill(disk)
    with capture_logs() as logs:
        for step in range(1, 6):  # the checkpoint loop, once a second
            await store.write_async(positions(step))
            assert store.last_error and "No space" in store.last_error
            assert store.path.read_bytes() == before  # the old file, whole
            assert not list((disk / "state").glob("*.tmp"))  # no temp file left taking space
    failed = [e for e in logs if e["event"] == "checkpoint_write_failed"]
    assert len(failed) == 1, failed  # once, not every second
    assert CheckpointStore(str(disk / "state"), 1.0).load()[0] == positions(0)
    filler.unlink()
    with capture_logs() as logs:
        await store.write_async(positions(6))
    assert store.last_error == ""
    assert [e["event"] for e in logs] == ["checkpoint_write_recovered"]
    assert CheckpointStore(str(disk / "state"), 1.0).load()[0] == positions(6)
    # Failing again later is reported again.
    filler = fill(disk)
    with capture_logs() as logs:
        await store.write_async(positions(7))
    assert [e["event"] for e in logs] == ["checkpoint_write_failed"]
    filler.unlink()


@contextlib.contextmanager
def no_file_descriptors_left() -> Iterator[None]:
    """Every open() fails with EMFILE until the block ends (the soft limit lowered to the
    lowest free descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest = os.dup(0)
    os.close(lowest)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_no_file_descriptor_left_is_no_crash(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), 1.0)
    await store.write_async(positions(0))
    before = store.path.read_bytes()
    with capture_logs() as logs:
        with no_file_descriptors_left():
            for step in range(1, 4):
                await store.write_async(positions(step))
        assert "Too many open files" in store.last_error
        assert store.path.read_bytes() == before
        assert not list(tmp_path.glob("*.tmp"))
        await store.write_async(positions(4))
    assert [e["event"] for e in logs] == ["checkpoint_write_failed", "checkpoint_write_recovered"]
    assert store.last_error == ""
    assert CheckpointStore(str(tmp_path), 1.0).load()[0] == positions(4)
