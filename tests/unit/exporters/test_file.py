"""The file exporter's rotation (size, time, max files, gzip), path templates and open-file
bound, plus its plain behaviour. No engine."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import types
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from agent.config import parse
from agent.positions import Position, advance
from agent.record import ContainerMeta, Record, format_timestamp_ns
from exporters.file import FileConfig, FileExporter, rotated_files
from exporters.file import exporter as file_exporter
from exporters.file import tail as file_tail

META = ContainerMeta("d" * 64, "app", "busybox", {}, "h")


def recs(start: int, n: int, meta: ContainerMeta = META, size: int = 60) -> list[Record]:
    now = time.time_ns()
    pad = "x" * size
    return [
        Record.log(format_timestamp_ns(now + i), meta, "stdout", f"{start + i} {pad}", False)
        for i in range(n)
    ]


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    assert not data or data.endswith(b"\n")  # whole records only
    return [orjson.loads(line) for line in data.splitlines()]


def numbers(records: list[dict[str, Any]]) -> list[int]:
    return [int(r["message"].split()[0]) for r in records]


def all_files(path: Path) -> list[Path]:
    """Rotated files oldest first, then the current one."""
    return [Path(p) for p, _, _ in rotated_files(str(path))] + [path]


async def exporter(**options: Any) -> FileExporter:
    cfg = parse({"exporters": {"f": {"type": "file", **options}}}).exporters["f"]
    assert isinstance(cfg, FileConfig)
    exp = FileExporter("f", cfg)
    await exp.start()
    return exp


async def test_size_rotation_splits_batches_at_records(tmp_path: Path) -> None:
    path = tmp_path / "out" / "records.ndjson"
    exp = await exporter(path=str(path), rotate={"max_bytes": 4096, "max_files": None})
    for i in range(20):
        await exp.send(recs(i * 50, 50))
    await exp.close()
    files = all_files(path)
    assert len(files) > 20  # 50 records of ~300 bytes do not fit in 4 KiB
    for f in files:
        assert f.stat().st_size <= 4096
    assert numbers([r for f in files for r in read_ndjson(f)]) == list(range(1000))
    assert exp.rotations == len(files) - 1


async def test_max_files_and_gzip(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    exp = await exporter(
        path=str(path), rotate={"max_bytes": 8192, "max_files": 3, "compress": True}
    )
    for i in range(30):
        await exp.send(recs(i * 20, 20))
        await asyncio.sleep(0.01)  # lets the background gzip keep up
    await exp.close()  # waits for the compression in progress
    rotated = rotated_files(str(path))
    assert len(rotated) == 3
    assert not [p for p, _, tmp in rotated if tmp]
    assert [p for p, gz, _ in rotated if gz]
    # The newest files hold the newest records, contiguous up to the last one.
    kept = [r for f in all_files(path) for r in read_ndjson(f)]
    assert numbers(kept) == list(range(600 - len(kept), 600))
    # A restart compresses what was left uncompressed, then prunes.
    exp = await exporter(
        path=str(path), rotate={"max_bytes": 8192, "max_files": 3, "compress": True}
    )
    for _ in range(100):
        left = [p for p, gz, _ in rotated_files(str(path)) if not gz]
        if not left:
            break
        await asyncio.sleep(0.02)
    assert not left
    await exp.close()
    assert len(rotated_files(str(path))) <= 3


async def test_leftovers_of_an_interrupted_compression(tmp_path: Path) -> None:
    path = tmp_path / "records.ndjson"
    rotated = tmp_path / "records.ndjson.20261128T101040.123456Z"
    rotated.write_bytes(b'{"a":1}\n')
    (tmp_path / "records.ndjson.20261128T101040.123456Z.gz.tmp").write_bytes(b"\x1f\x8b torn")
    exp = await exporter(path=str(path), rotate={"max_bytes": 4096, "compress": True})
    for _ in range(100):
        if not rotated.exists():
            break
        await asyncio.sleep(0.02)
    await exp.close()
    assert [Path(p).name for p, _, _ in rotated_files(str(path))] == [rotated.name + ".gz"]
    assert gzip.decompress(Path(str(rotated) + ".gz").read_bytes()) == b'{"a":1}\n'


async def test_a_record_larger_than_max_bytes_goes_alone(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    exp = await exporter(path=str(path), rotate={"max_bytes": 1024, "max_files": None})
    await exp.send([*recs(0, 1), *recs(1, 1, size=3000), *recs(2, 1)])
    await exp.close()
    per_file = [numbers(read_ndjson(f)) for f in all_files(path)]
    assert per_file == [[0], [1], [2]]


async def test_time_rotation(tmp_path: Path) -> None:
    path = tmp_path / "r.ndjson"
    exp = await exporter(path=str(path), rotate={"max_seconds": 0.2})
    await exp.send(recs(0, 5))
    await exp.send(recs(5, 5))
    await asyncio.sleep(0.25)
    await exp.send(recs(10, 5))
    await exp.close()
    per_file = [numbers(read_ndjson(f)) for f in all_files(path)]
    assert per_file == [list(range(10)), list(range(10, 15))]


async def test_path_template_per_container_and_date(tmp_path: Path) -> None:
    web = ContainerMeta("1" * 64, "web", "nginx", {}, "h")
    db = ContainerMeta("2" * 64, "db", "postgres", {}, "h")
    late = Record.log("2026-11-27T23:59:59.999999999Z", web, "stdout", "0 late", False)
    early = Record.log("2026-11-28T00:00:00.000000001Z", web, "stdout", "1 early", False)
    other = Record.log("2026-11-28T00:00:01.000000000Z", db, "stderr", "2 db", False)
    event = Record.event("2026-11-28T00:00:02.000000000Z", db, "die", {"exitCode": "0"})
    template = str(tmp_path / "logs" / "%Y-%m-%d" / "{container_name}.ndjson")
    exp = await exporter(path=template)
    await exp.send([late, early, other, event])
    await exp.close()
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.ndjson"))
    assert found == [
        "logs/2026-11-27/web.ndjson",
        "logs/2026-11-28/db.ndjson",
        "logs/2026-11-28/web.ndjson",
    ]
    db_file = read_ndjson(tmp_path / "logs" / "2026-11-28" / "db.ndjson")
    assert [r["kind"] for r in db_file] == ["log", "event"]
    assert exp.target() == f"file:{template}"


async def test_open_files_are_bounded(tmp_path: Path) -> None:
    metas = [ContainerMeta(f"{i:064x}", f"c{i}", "img", {}, "h") for i in range(6)]
    exp = await exporter(path=str(tmp_path / "{container_name}.ndjson"), max_open_files=2)
    for round_ in range(3):
        for i, meta in enumerate(metas):
            await exp.send(recs(round_ * 10 + i, 1, meta))
            assert len(exp.files._files) <= 2
    await exp.close()
    for i in range(6):
        got = numbers(read_ndjson(tmp_path / f"c{i}.ndjson"))
        assert got == [i, 10 + i, 20 + i]


async def test_rotation_with_a_template(tmp_path: Path) -> None:
    metas = [ContainerMeta(f"{i:064x}", f"c{i}", "img", {}, "h") for i in range(2)]
    exp = await exporter(
        path=str(tmp_path / "{container_name}.ndjson"),
        rotate={"max_bytes": 2048, "max_files": 2},
    )
    for i in range(10):
        await exp.send([*recs(i * 10, 10, metas[0]), *recs(i * 10, 10, metas[1])])
    await exp.close()
    for meta in metas:
        path = tmp_path / f"{meta.name}.ndjson"
        assert len(rotated_files(str(path))) == 2
        kept = numbers([r for f in all_files(path) for r in read_ndjson(f)])
        assert kept == list(range(100 - len(kept), 100))


async def test_plain_file_keeps_its_behaviour(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "records.ndjson"
    exp = await exporter(path=str(path), fsync=True)
    assert path.exists()  # opened (and its directory made) at start
    await exp.send(recs(0, 3))
    await exp.flush()
    assert numbers(read_ndjson(path)) == [0, 1, 2]
    assert exp.health().ok and exp.target() == f"file:{path}"
    await exp.close()
    exp = await exporter(path=str(path))  # appends
    await exp.send(recs(3, 1))
    await exp.close()
    assert numbers(read_ndjson(path)) == [0, 1, 2, 3]


async def test_write_failure_is_reported_and_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    exp = await exporter(path=str(blocker / "{container_name}.ndjson"))
    with pytest.raises(OSError):
        await exp.send(recs(0, 1))
    assert not exp.health().ok and "blocker" in exp.health().detail
    blocker.unlink()
    await exp.send(recs(0, 1))
    assert exp.health().ok
    await exp.close()
    assert numbers(read_ndjson(blocker / "app.ndjson")) == [0]


async def test_a_retried_batch_is_not_written_twice(tmp_path: Path) -> None:
    ok = ContainerMeta("1" * 64, "ok", "img", {}, "h")
    bad = ContainerMeta("2" * 64, "bad", "img", {}, "h")
    (tmp_path / "bad").write_text("")  # a file where the directory should be
    exp = await exporter(path=str(tmp_path / "{container_name}" / "out.ndjson"))
    batch = [*recs(0, 3, ok), *recs(0, 3, bad)]
    with pytest.raises(OSError):
        await exp.send(batch)
    (tmp_path / "bad").unlink()
    await exp.send(batch)  # the pipeline retries the same batch
    await exp.send(recs(3, 1, ok))
    await exp.close()
    assert numbers(read_ndjson(tmp_path / "ok" / "out.ndjson")) == [0, 1, 2, 3]
    assert numbers(read_ndjson(tmp_path / "bad" / "out.ndjson")) == [0, 1, 2]


# -- exactly once after a crash: what an earlier run wrote is not written again ------------

A = ContainerMeta("a" * 64, "a", "img", {}, "h")
B = ContainerMeta("b" * 64, "b", "img", {}, "h")


def history(n: int = 100) -> list[Record]:
    """What two containers print, in the order a reader delivers it: both streams, runs of
    lines sharing a timestamp (some with the same message), and events."""
    out: list[Record] = []
    base = 1_790_000_000_000_000_000
    for i in range(n):
        meta = A if i % 3 else B
        stream = "stderr" if i % 7 == 0 else "stdout"
        ns = base + (60 if 60 <= i < 75 else i) * 1000  # records 60..74 share a stamp
        message = "same" if 60 <= i < 75 and meta is A and stream == "stdout" else f"{i} line"
        out.append(Record.log(format_timestamp_ns(ns), meta, stream, message, False))
        if i % 25 == 24:
            out.append(Record.event(format_timestamp_ns(ns), meta, "health_status", {"n": str(i)}))
    return out


def checkpoint(records: list[Record]) -> dict[str, dict[str, Position]]:
    """The positions a checkpoint written after ``records`` holds."""
    out: dict[str, dict[str, Position]] = {}
    for meta in (A, B):
        mine = [r for r in records if r.meta is meta and r.kind == "log"]
        advance(out.setdefault(meta.id, {}), mine)
    return out


def resent(records: list[Record], at: int) -> list[Record]:
    """What the readers deliver again after a restart from a checkpoint written after
    ``records[:at]``: every container's records after it, in order."""
    return list(records[at:])


def state_with(positions: dict[str, dict[str, Position]]) -> Any:
    return types.SimpleNamespace(
        followers=types.SimpleNamespace(positions=positions),
        pipeline=types.SimpleNamespace(runners=[]),
    )


def lines_of(path: Path) -> list[bytes]:
    files = all_files(path)
    out: list[bytes] = []
    for f in files:
        data = f.read_bytes()
        if f.name.endswith(".gz"):
            data = gzip.decompress(data)
        out += data.splitlines()
    return out


async def run(
    options: dict[str, Any], batches: list[list[Record]], state: Any = None
) -> FileExporter:
    cfg = parse({"exporters": {"f": {"type": "file", **options}}}).exporters["f"]
    assert isinstance(cfg, FileConfig)
    exp = FileExporter("f", cfg)
    if state is not None:
        exp.bind(state)
    await exp.start()
    for batch in batches:
        await exp.send(batch)
    await exp.close()
    return exp


def in_batches(records: list[Record], size: int) -> list[list[Record]]:
    return [records[i : i + size] for i in range(0, len(records), size)]


@pytest.mark.parametrize(
    ("written", "at"),
    [(70, 40), (70, 64), (70, 66), (70, 70), (67, 0), (100, 90), (5, 0)],
)
@pytest.mark.parametrize("told", [True, False])
async def test_a_restart_writes_each_record_once(
    tmp_path: Path, written: int, at: int, told: bool
) -> None:
    """The previous run wrote ``written`` records and its checkpoint covered ``at``: after
    the restart the readers deliver everything from ``at`` again. The file ends up with
    every record once, in order; also in the run of lines that share one timestamp (and one
    message), with and without knowing the checkpoint (``bind``)."""
    records = history()
    path = tmp_path / "records.ndjson"
    await run({"path": str(path)}, in_batches(records[:written], 16))
    state = state_with(checkpoint(records[:at])) if told else None
    exp = await run({"path": str(path)}, in_batches(resent(records, at), 16), state)
    got = lines_of(path)
    if told or not 61 < written <= 75:
        assert got == [r.json() for r in records]
        assert exp.duplicates_skipped == max(0, written - at)
    else:
        # Not told where reading resumed, identical lines sharing the last stamp cannot be
        # told apart: some may be written twice, none is lost, the order is kept.
        assert set(got) == {r.json() for r in records} and len(got) >= len(records)
        assert got[:written] == [r.json() for r in records[:written]]
        assert got[-(len(records) - 75) :] == [r.json() for r in records[75:]]

    def keys(part: list[Record]) -> set[tuple[str, str | None]]:
        return {(r.meta.id, r.stream if r.kind == "log" else r.kind) for r in part}

    if keys(records[:written]) <= keys(records[written:]):  # every stream went past it
        assert exp._written is None  # the check is over: nothing per record any more


async def test_a_torn_last_line_is_cut_and_written_again(tmp_path: Path) -> None:
    records = history()
    path = tmp_path / "records.ndjson"
    await run({"path": str(path)}, [records[:50]])
    with open(path, "ab") as f:
        f.write(records[50].json()[:40])  # the crash cut this write
    await run({"path": str(path)}, [resent(records, 30)], state_with(checkpoint(records[:30])))
    assert lines_of(path) == [r.json() for r in records]


@pytest.mark.parametrize("compress", [False, True])
async def test_exactly_once_with_templates_and_rotation(tmp_path: Path, compress: bool) -> None:
    # Log lines only: with 4 KiB files the events sent again are older than the tail read
    # back (the current file and the newest rotated one). The agent never sends events
    # again after a restart (the event stream starts at the new start).
    records = [r for r in history(300) if r.kind == "log"]
    options = {
        "path": str(tmp_path / "{container_name}.ndjson"),
        "rotate": {"max_bytes": 4096, "max_files": None, "compress": compress},
    }
    await run(options, in_batches(records[:200], 16))
    # The restart overlaps what is in the rotated files and in the current ones.
    exp = await run(
        options, in_batches(resent(records, 150), 16), state_with(checkpoint(records[:150]))
    )
    assert exp.duplicates_skipped == 50
    for meta in (A, B):
        got = lines_of(tmp_path / f"{meta.name}.ndjson")
        assert got == [r.json() for r in records if r.meta is meta]


async def test_a_rotation_just_before_the_crash(tmp_path: Path) -> None:
    """The current file is empty: what was written last is in the rotated one."""
    records = history(60)
    path = tmp_path / "records.ndjson"
    options = {"path": str(path), "rotate": {"max_seconds": 3600, "max_files": None}}
    await run(options, [records[:40]])
    rotated = path.with_name(path.name + ".20261128T101040.123456Z")
    path.rename(rotated)
    path.touch()
    exp = await run(options, [resent(records, 20)], state_with(checkpoint(records[:20])))
    assert exp.duplicates_skipped == 20
    assert rotated.read_bytes().splitlines() + path.read_bytes().splitlines() == [
        r.json() for r in records
    ]


async def test_streams_never_sent_again_stop_being_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = history()
    path = tmp_path / "records.ndjson"
    await run({"path": str(path)}, [records[:50]])
    monkeypatch.setattr(file_exporter, "DEDUPE_SECONDS", 0.05)
    cfg = parse({"exporters": {"f": {"type": "file", "path": str(path)}}}).exporters["f"]
    assert isinstance(cfg, FileConfig)
    exp = FileExporter("f", cfg)
    await exp.start()
    only_a = [r for r in records[50:] if r.meta is A]
    await exp.send(only_a[:5])  # B never sends again: its streams stay open
    assert exp._written is not None
    await asyncio.sleep(0.1)
    await exp.send(only_a[5:])
    assert exp._written is None
    await exp.close()


def test_scan_tail_reads_what_a_full_parse_reads() -> None:
    """The scan parses one line per container stream prefix; a label named ``timestamp``
    (where the prefix trick must not be trusted) changes nothing."""
    tricky = ContainerMeta("c" * 64, "c", "img", {"a": "1", "timestamp": "x"}, "h")
    records = history(200)
    records += [
        Record.log(
            format_timestamp_ns(1_790_000_000_000_000_000 + i // 2), tricky, s, str(i), False
        )
        for i in range(40)
        for s in ("stdout", "stderr")
    ]
    records.append(Record.stats_sample(format_timestamp_ns(1_790_000_001_000_000_000), A, {}))
    data = b"".join(r.json() + b"\n" for r in records)
    want_logs: dict[tuple[str, str], tuple[str, list[Any], bool]] = {}
    for r in records:  # the naive way: every line, oldest first
        if r.kind != "log":
            continue
        key = (r.meta.id, r.stream or "")
        known = want_logs.get(key)
        if known is not None and known[0] == r.timestamp:
            known[1].append(r.message)
        else:
            want_logs[key] = (r.timestamp, [r.message], known is not None)
    logs, events = file_tail.scan_tail(data, everything=False)
    assert logs == want_logs
    assert set(events) == {A.id, B.id}
    assert events[A.id][1] == {
        (r.timestamp, r.action) for r in records if r.kind == "event" and r.meta is A
    }


async def test_a_new_instance_on_a_running_agent_skips_nothing(tmp_path: Path) -> None:
    """A reload swaps the exporter: the new one is bound while readers are ahead of what
    was written (the queue the old one hands over). Nothing may be skipped, also lines
    sharing the last stamp written with the same message."""
    records = history()
    path = tmp_path / "records.ndjson"
    await run({"path": str(path)}, [records[:65]])  # ends inside the run of "same" lines
    exp = await run({"path": str(path)}, [records[65:]], state_with(checkpoint(records[:80])))
    assert lines_of(path) == [r.json() for r in records]
    assert exp.duplicates_skipped == 0


def writer_threads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, per append to an output file, whether it ran on the calling (loop) thread."""
    from exporters.file import files as file_files

    loop_thread = threading.get_ident()
    on_loop: list[bool] = []
    real = file_files.append_whole

    def recording(fd: int, data: bytes, fsync: bool = False) -> None:
        on_loop.append(threading.get_ident() == loop_thread)
        real(fd, data, fsync)

    monkeypatch.setattr(file_files, "append_whole", recording)
    return on_loop


async def test_small_batches_are_written_on_the_loop_large_ones_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = writer_threads(monkeypatch)
    path = tmp_path / "records.ndjson"
    exp = await exporter(path=str(path))
    await exp.send(recs(0, 10))  # ~2 KiB: one write, on the loop
    await exp.send(recs(10, 1000))  # ~200 KiB: the thread
    await exp.send(recs(1010, 10))
    await exp.close()
    assert on_loop == [True, False, True]
    assert numbers(read_ndjson(path)) == list(range(1020))
    assert exp.slow_loop_writes == 0

    on_loop.clear()
    synced = await exporter(path=str(tmp_path / "synced.ndjson"), fsync=True)
    await synced.send(recs(0, 10))  # an fsync may take long: never on the loop
    await synced.close()
    assert on_loop == [False]


async def test_a_slow_loop_write_sends_writes_to_the_thread_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop = writer_threads(monkeypatch)
    monkeypatch.setattr(file_exporter, "LOOP_WRITE_SLOW_SECONDS", -1.0)  # every write "slow"
    path = tmp_path / "records.ndjson"
    exp = await exporter(path=str(path))
    with capture_logs() as logs:
        await exp.send(recs(0, 10))
        await exp.send(recs(10, 10))
        await exp.send(recs(20, 10))
    assert on_loop == [True, False, False]
    assert exp.slow_loop_writes == 1
    assert [e["event"] for e in logs if e["event"] == "file_write_slow"] == ["file_write_slow"]
    exp._threads_until = 0.0  # the pause is over
    await exp.send(recs(30, 10))
    await exp.close()
    assert on_loop == [True, False, False, True]
    assert numbers(read_ndjson(path)) == list(range(40))


async def test_a_busy_lock_or_a_closed_file_sends_the_write_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop never waits for the lock (a flush or close in a thread holds it) and never
    (re)opens the file: the thread does, and the batch still lands whole, in order."""
    on_loop = writer_threads(monkeypatch)
    path = tmp_path / "records.ndjson"
    exp = await exporter(path=str(path))
    exp.files.lock.acquire()
    sending = asyncio.ensure_future(exp.send(recs(0, 10)))
    await asyncio.sleep(0.05)
    assert not sending.done()  # the thread waits for the lock; the loop did not
    exp.files.lock.release()
    await sending
    exp.files.failed(str(path), OSError(5, "EIO"))  # closes the file: the next write reopens
    await exp.send(recs(10, 10))
    await exp.send(recs(20, 10))
    await exp.close()
    assert on_loop == [False, False, True]
    assert numbers(read_ndjson(path)) == list(range(30))
