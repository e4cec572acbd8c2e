"""The disk buffer: order, restarts, torn writes, size caps and their policies."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.delivery.buffer import DiskBuffer
from agent.record import ContainerMeta, Record

META = ContainerMeta("c" * 64, "web", "img", {"l": "v"}, "h")


def recs(start: int, n: int) -> list[Record]:
    return [
        Record.log(f"2026-01-01T00:00:00.{i:09d}Z", META, "stdout", f"line {i}", False)
        for i in range(start, start + n)
    ]


def opened(path: Path, **kw) -> DiskBuffer:
    buf = DiskBuffer(path, **{"max_bytes": 1 << 20, **kw})
    buf.open()
    return buf


async def drain(buf: DiskBuffer, max_records: int = 1000) -> list[str]:
    out: list[str] = []
    while buf.size:
        records, cursor = await buf.read(max_records)
        out += [r.message for r in records]
        await buf.commit(cursor)
    return out


async def test_fifo_across_segments_and_records_rebuilt(tmp_path: Path) -> None:
    buf = opened(tmp_path, segment_bytes=4096)
    for i in range(0, 500, 50):
        await buf.append(recs(i, 50))
    assert len(list(tmp_path.glob("*.seg"))) > 3
    records, cursor = await buf.read(10)
    assert records[0].meta.name == "web" and records[0].meta.labels == {"l": "v"}
    assert records[0].json() == recs(0, 1)[0].json()
    await buf.commit(cursor)
    assert await drain(buf, 77) == [f"line {i}" for i in range(10, 500)]
    assert len(list(tmp_path.glob("*.seg"))) == 1  # sent segments are deleted
    buf.close()


async def test_restart_resumes_at_the_cursor(tmp_path: Path) -> None:
    buf = opened(tmp_path)
    await buf.append(recs(0, 100))
    _, cursor = await buf.read(30)
    await buf.commit(cursor)
    _records, _ = await buf.read(30)  # read but never committed: sent again after a restart
    buf.close()
    again = opened(tmp_path)
    assert again.records == 70
    assert await drain(again) == [f"line {i}" for i in range(30, 100)]


async def test_torn_tail_is_cut_and_counted(tmp_path: Path) -> None:
    buf = opened(tmp_path)
    await buf.append(recs(0, 5))
    buf.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b'{"kind":"log","timest')  # the agent died mid-write
    again = opened(tmp_path)
    assert again.corrupt_bytes == len(b'{"kind":"log","timest')
    assert await drain(again) == [f"line {i}" for i in range(5)]


async def test_garbage_lines_and_bad_cursor(tmp_path: Path) -> None:
    buf = opened(tmp_path)
    await buf.append(recs(0, 3))
    buf.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b"\xff\xfenot json\n")
    (tmp_path / "cursor.json").write_bytes(b"{broken")
    again = opened(tmp_path)
    await again.append(recs(3, 1))
    assert await drain(again) == ["line 0", "line 1", "line 2", "line 3"]
    assert again.corrupt_bytes > 0


async def test_drop_newest_when_full(tmp_path: Path) -> None:
    buf = opened(tmp_path, max_bytes=8192, when_full="drop_newest")
    sent = 0
    while buf.has_room():
        await buf.append(recs(sent, 10))
        sent += 10
    await buf.append(recs(sent, 10))
    assert buf.dropped == {"buffer_full": 10}
    assert len(await drain(buf)) == sent


async def test_drop_oldest_when_full(tmp_path: Path) -> None:
    buf = opened(tmp_path, max_bytes=16384, when_full="drop_oldest", segment_bytes=4096)
    for i in range(0, 400, 10):
        await buf.append(recs(i, 10))
    got = await drain(buf)
    dropped = buf.dropped["buffer_full"]
    assert dropped > 0 and len(got) + dropped == 400
    assert got == [f"line {i}" for i in range(400 - len(got), 400)]  # the newest kept


async def test_block_when_full_waits_for_room(tmp_path: Path) -> None:
    buf = opened(tmp_path, max_bytes=8192)
    n = 0
    while buf.has_room():
        await buf.append(recs(n, 10))
        n += 10
    blocked = asyncio.create_task(buf.append(recs(n, 10)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    _records, cursor = await buf.read(1000)
    await buf.commit(cursor)
    await asyncio.wait_for(blocked, 2)
    assert await drain(buf) == [f"line {i}" for i in range(n, n + 10)]
    assert not buf.dropped
