"""Delivery costs without the engine: the disk buffer's write and drain rates, and the cost
of one checkpoint write.

    python -m bench.delivery [--delivery-records 200000] [--delivery-reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.delivery.buffer import DiskBuffer
from agent.delivery.checkpoint import CheckpointStore
from agent.positions import Position
from agent.record import ContainerMeta, Record
from bench.common import BenchEngine, fmt, median, standalone, table

BATCH = 500  # about one 64 KiB read of 100-byte lines


def _records(n: int) -> list[Record]:
    meta = ContainerMeta("c" * 64, "/web-1", "nginx:1.27", {"team": "a"}, "host-1")
    return [
        Record.log(f"2026-01-01T00:00:00.{i:09d}Z", meta, "stdout", f"{'x' * 90} {i}", False)
        for i in range(n)
    ]


async def _buffer_round(records: list[Record], fsync: bool) -> dict[str, float]:
    directory = Path(tempfile.mkdtemp(prefix="ca-bench-buffer-"))
    try:
        buf = DiskBuffer(directory, max_bytes=1 << 34, fsync=fsync)
        buf.open()
        size = 0
        t0 = time.perf_counter()
        for i in range(0, len(records), BATCH):
            await buf.append(records[i : i + BATCH])
        write_s = time.perf_counter() - t0
        size = buf.size
        t1 = time.perf_counter()
        drained = 0
        while buf.size:
            got, cursor = await buf.read(8192)
            drained += len(got)
            await buf.commit(cursor)
        drain_s = time.perf_counter() - t1
        buf.close()
        assert drained == len(records), (drained, len(records))
        return {
            "write_records_per_s": len(records) / write_s,
            "write_mb_per_s": size / write_s / 1e6,
            "drain_records_per_s": drained / drain_s,
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _checkpoint_cost(containers: int, reps: int) -> float:
    directory = tempfile.mkdtemp(prefix="ca-bench-ckpt-")
    try:
        store = CheckpointStore(directory, 1.0)
        times = []
        for r in range(reps):
            positions = {
                f"{c:064x}": {
                    "stdout": Position(f"2026-01-01T00:00:00.{r:09d}Z", 1),
                    "stderr": Position(f"2026-01-01T00:00:00.{r:09d}Z", 2),
                }
                for c in range(containers)
            }
            t0 = time.perf_counter()
            store.write(positions)
            times.append(time.perf_counter() - t0)
        return median(times) or 0.0
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def run(args: argparse.Namespace, engine: BenchEngine | None = None) -> dict[str, Any]:
    records = _records(args.delivery_records)
    out: dict[str, Any] = {"params": {"records": len(records), "batch": BATCH}}
    for fsync in (True, False):
        rounds = [await _buffer_round(records, fsync) for _ in range(args.delivery_reps)]
        out[f"buffer_fsync_{'on' if fsync else 'off'}"] = {
            k: median(r[k] for r in rounds) for k in rounds[0]
        }
    out["checkpoint_write_ms"] = {str(n): 1000 * _checkpoint_cost(n, 20) for n in (10, 100, 1000)}
    return out


def report(result: dict[str, Any]) -> str:
    rows = []
    for key in ("buffer_fsync_on", "buffer_fsync_off"):
        r = result[key]
        rows.append(
            [
                key.replace("buffer_", "disk buffer, "),
                fmt(r["write_records_per_s"], 0),
                fmt(r["write_mb_per_s"], 1),
                fmt(r["drain_records_per_s"], 0),
            ]
        )
    lines = [
        table(["", "append records/s", "append MB/s", "drain records/s"], rows),
        "checkpoint write (temp file, fsync, rename, fsync dir), median: "
        + ", ".join(
            f"{n} containers {ms:.2f} ms" for n, ms in result["checkpoint_write_ms"].items()
        ),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("delivery")
    g.add_argument("--delivery-records", type=int, default=200_000)
    g.add_argument("--delivery-reps", type=int, default=3)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
