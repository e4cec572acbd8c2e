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


def on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.seg"))


async def test_drop_oldest_never_deletes_what_the_exporter_is_reading(tmp_path: Path) -> None:
    """A slow exporter (a backend outage: each send takes a while) reads while appends
    overflow the cap: the segment it reads stays, its worker lives on, every record is
    delivered once or counted as dropped, and the buffer stays under its cap."""
    cap = 16384
    buf = opened(tmp_path, max_bytes=cap, when_full="drop_oldest", segment_bytes=4096)
    delivered: list[int] = []

    async def slow_exporter() -> None:
        while True:
            records, cursor = await buf.read(30)
            await asyncio.sleep(0.03)  # the send
            delivered.extend(int((r.message or "").split()[1]) for r in records)
            await buf.commit(cursor)

    worker = asyncio.create_task(slow_exporter())
    peak = 0
    for i in range(0, 500, 10):
        await buf.append(recs(i, 10))
        peak = max(peak, on_disk(tmp_path))
        assert buf.size <= cap
        await asyncio.sleep(0.002)
    await asyncio.wait_for(buf.wait_empty(), 10)
    assert not worker.done(), worker.exception()
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    dropped = buf.dropped["buffer_full"]
    assert dropped > 0
    assert len(delivered) + dropped == 500
    assert delivered == sorted(set(delivered))  # in order, none twice
    assert delivered[-1] == 499  # the newest kept
    assert peak <= cap + 4096  # at most the segment being written past the cap
    assert buf.size == 0 and buf.records == 0
    buf.close()


async def test_drop_oldest_during_an_outage_keeps_the_batch_in_flight(tmp_path: Path) -> None:
    """The exporter took a batch and cannot send it (backend down) while the buffer
    overflows: the batch it holds is delivered when the backend returns, not dropped and
    not lost; the oldest segments after it are dropped."""
    buf = opened(tmp_path, max_bytes=16384, when_full="drop_oldest", segment_bytes=4096)
    await buf.append(recs(0, 10))
    held, cursor = await buf.read(10)  # the send of these hangs
    for i in range(10, 400, 10):
        await buf.append(recs(i, 10))
        assert buf.size <= 16384
    await buf.commit(cursor)  # the backend came back: the held batch went
    rest = await drain(buf)
    got = [r.message for r in held] + rest
    assert got[:10] == [f"line {i}" for i in range(10)]
    assert got == sorted(set(got), key=lambda m: int(m.split()[1]))
    assert len(got) + buf.dropped["buffer_full"] == 400
    assert rest[-1] == "line 399"


async def test_a_missing_segment_is_logged_counted_and_skipped(tmp_path: Path) -> None:
    buf = opened(tmp_path, segment_bytes=4096)
    for i in range(0, 200, 10):
        await buf.append(recs(i, 10))
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) >= 4
    lost = segments[1].read_bytes().count(b"\n")
    segments[1].unlink()  # removed behind the buffer's back
    got = await drain(buf)
    assert len(got) == 200 - lost
    assert buf.dropped["segment_missing"] == lost
    assert buf.size == 0 and buf.records == 0
    await buf.append(recs(200, 1))  # and it goes on
    assert await drain(buf) == ["line 200"]


async def test_what_processing_added_survives_the_buffer(tmp_path: Path) -> None:
    """A level, parsed fields and a joined record's line count come back from the disk
    buffer with the record (the http formats read them from the record)."""
    from agent.record import Extra

    buf = opened(tmp_path / "buf")
    rec = recs(0, 1)[0]
    rec.extra = Extra()
    rec.extra.level, rec.extra.fields, rec.extra.lines = "error", {"user": "ada"}, 3
    rec.json()  # as the processing chain does: its JSON is made before the C encoder
    await buf.append([rec, *recs(1, 1)])
    got, _cursor = await buf.read(10)
    assert (got[0].level, got[0].fields, got[0].lines) == ("error", {"user": "ada"}, 3)
    assert got[0].json() == rec.json()
    assert (got[1].level, got[1].lines) == (None, 1)
    buf.close()
