"""The benchmarks' output watch (``bench.common.watch_output``): while a reader writes, the
file is only stat'ed, never read; its records are counted once the writes pause, after the
CPU figures are taken; the end is when the last log record was written, not a later event."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson

from bench import common
from bench.common import RecordTail, watch_output


def log_lines(n: int, start: int) -> bytes:
    records = ({"kind": "log", "message": f"line {i}"} for i in range(start, start + n))
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


async def write_in_bursts(path: Path, bursts: int, per_burst: int, gap_s: float) -> float:
    """Appends ``bursts`` bursts of log records ``gap_s`` apart (less than QUIET_S), then an
    event record 0.3 s later; returns the file's time after the last log record."""
    last_log = 0.0
    with open(path, "ab", buffering=0) as f:
        for b in range(bursts):
            half = log_lines(per_burst, b * per_burst)
            f.write(half[: len(half) // 2])  # a record cut between two writes
            f.write(half[len(half) // 2 :])
            last_log = os.stat(path).st_mtime_ns / 1e9
            await asyncio.sleep(gap_s)
        await asyncio.sleep(0.3 - gap_s)
        f.write(orjson.dumps({"kind": "event", "action": "die", "container_id": "c1"}) + b"\n")
    return last_log


async def test_counts_only_after_the_writes_pause_and_ends_at_the_last_log_record(
    tmp_path: Path,
) -> None:
    assert common.QUIET_S > 0.3 and common.POLL_S < 0.3  # the event lands in its own poll
    path = tmp_path / "records.ndjson"
    tail = RecordTail(path)
    read_when_paused: list[int] = []
    writer = asyncio.create_task(write_in_bursts(path, bursts=6, per_burst=500, gap_s=0.1))

    end = await watch_output(
        tail,
        expected=3000,
        paused=lambda: read_when_paused.append(tail.size),
        give_up=lambda quiet: "stalled" if quiet > 5 else None,
        alive=lambda: None,
    )

    last_log = await writer
    assert tail.logs == 3000
    assert read_when_paused == [0]  # nothing read while the writes went on
    assert end == last_log
    assert tail.event_ids("die") == {"c1"}


async def test_gives_up_with_what_came(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    path.write_bytes(log_lines(10, 0))
    tail = RecordTail(path)
    reasons: list[float] = []

    def give_up(quiet: float) -> str | None:
        if quiet > common.QUIET_S + 0.2:
            reasons.append(quiet)
            return "stalled"
        return None

    end = await watch_output(tail, 20, lambda: None, give_up, lambda: None)

    assert tail.logs == 10 and len(reasons) == 1
    assert end == os.stat(path).st_mtime_ns / 1e9


def test_counts_every_line_without_a_prefix(tmp_path: Path) -> None:
    path = tmp_path / "fluent-bit.out"
    path.write_bytes(b"a\nb\nc")
    tail = RecordTail(path, prefix=None)
    assert tail.poll() == 2 and tail.logs_end == 4
    with open(path, "ab") as f:
        f.write(b"\n")
    assert tail.poll() == 3 and tail.logs_end == 6
