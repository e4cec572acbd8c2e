"""The json-file source without an engine: recorded files against the logs API's bytes of the
same containers, and hand-written files in a temp directory for rotation, truncation and
removal (a fake engine answers the inspects)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from inotify_simple import INotify
from structlog.testing import capture_logs

from agent.engine.client import NotFound
from agent.positions import FileMark, Position, advance
from agent.record import ContainerMeta, Record, format_timestamp_ns
from agent.sources.api.decoder import LogDecoder
from agent.sources.base import StreamEnd
from agent.sources.choice import SourceChooser
from agent.sources.jsonfile.decoder import JsonFileDecoder, normalize_time
from agent.sources.jsonfile.inotify import WAKE_LINGER_SECONDS
from agent.sources.jsonfile.seek import first_offset_at_or_after
from agent.sources.jsonfile.source import JsonFileLogSource

DATA = Path(__file__).parents[1] / "data"
CID = "f" * 64


def inotify_available() -> bool:
    """inotify instances are limited per user (fs.inotify.max_user_instances, often 128),
    and a busy dockerd uses one per followed log: there may be none left."""
    try:
        INotify().close()
    except OSError:
        return False
    return True


def meta(tty: bool | None = None) -> ContainerMeta:
    return ContainerMeta(CID, "/web", "busybox", {"a": "b"}, "host1", tty)


def api_records(name: str, max_bytes: int, resume: dict | None = None) -> list[Record]:
    dec = LogDecoder(meta(), max_bytes, resume=resume)
    return dec.feed((DATA / f"{name}.api.bin").read_bytes()) + dec.finish()


def file_records(
    data: bytes, max_bytes: int, lines_per_feed: int, tty: bool | None, **kw: Any
) -> list[Record]:
    dec = JsonFileDecoder(meta(tty), max_bytes, tty=tty, **kw)
    lines = data.splitlines(keepends=True)
    out: list[Record] = []
    for i in range(0, len(lines), lines_per_feed):
        out += dec.feed_lines(b"".join(lines[i : i + lines_per_feed]))
    return out + dec.finish()


def as_json(records: list[Record]) -> list[bytes]:
    return [r.json() for r in records]


# -- records identical to the API's ---------------------------------------------------------


@pytest.mark.parametrize("name,tty", [("jsonfile", False), ("jsonfile-tty", True)])
@pytest.mark.parametrize("max_bytes", [1 << 20, 30000, 16384, 1024])
@pytest.mark.parametrize("lines_per_feed", [1, 2, 5, 1000])
def test_recorded_file_gives_the_apis_records(
    name: str, tty: bool, max_bytes: int, lines_per_feed: int
) -> None:
    """The same container's json-file and logs-API bytes, recorded from the test engine:
    partial lines over 16 KiB, stderr, invalid UTF-8 (U+FFFD in the file), escapes, emoji,
    TTY's \\r\\n, a last line without newline, stamps with trimmed zeros."""
    data = (DATA / f"{name}.log").read_bytes()
    expected = api_records(name, max_bytes)
    got = file_records(data, max_bytes, lines_per_feed, tty)
    assert as_json(got) == as_json(expected)
    assert len(got) == 9
    messages = [r.message for r in got]
    assert messages[0] == "hello" and messages[-1] == "no newline at end"
    assert "\ufffd\ufffdbad utf8" in messages
    assert any(m.startswith("tab\there") and m.endswith("€ 😀") for m in messages)
    assert {r.stream for r in got} == ({"stdout"} if tty else {"stdout", "stderr"})
    assert all(len(r.timestamp) == 30 for r in got)
    long_b = next(r for r in got if r.message.startswith("b"))
    assert long_b.truncated == (max_bytes < 36000)


def test_tty_told_from_the_lines_when_unknown() -> None:
    data = (DATA / "jsonfile-tty.log").read_bytes()
    got = file_records(data, 1 << 20, 3, None)
    assert as_json(got) == as_json(api_records("jsonfile-tty", 1 << 20))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8])
def test_resume_skips_what_the_api_source_would_skip(k: int) -> None:
    """Positions left by either source: the other resumes with nothing lost or repeated."""
    expected = api_records("jsonfile", 1 << 20)
    positions: dict[str, Position] = {}
    advance(positions, expected[:k])
    since = min((p.timestamp for p in positions.values()), default=None)
    got = file_records(
        (DATA / "jsonfile.log").read_bytes(), 1 << 20, 4, False, resume=positions, since=since
    )
    assert as_json(got) == as_json(api_records("jsonfile", 1 << 20, resume=positions))
    assert as_json(got) == as_json(expected[k:]) or k == 0


def test_normalize_time() -> None:
    assert normalize_time("2026-11-28T10:21:33.39940479Z") == "2026-11-28T10:21:33.399404790Z"
    assert normalize_time("2026-11-28T10:21:33.1Z") == "2026-11-28T10:21:33.100000000Z"
    assert normalize_time("2026-11-28T10:21:33Z") == "2026-11-28T10:21:33.000000000Z"
    assert normalize_time("2026-11-28T11:21:33.5+01:00") == "2026-11-28T10:21:33.500000000Z"
    assert normalize_time("2026-11-28T10:21:33.123456789Z") == "2026-11-28T10:21:33.123456789Z"


def test_malformed_lines_are_counted_not_fatal() -> None:
    good = b'{"log":"ok\\n","stream":"stdout","time":"2026-11-28T10:21:33.1Z"}\n'
    data = good + b"garbage\n" + b'{"stream":"stdout"}\n' + good
    dec = JsonFileDecoder(meta(), 1 << 20, tty=False)
    out = dec.feed_lines(data)
    assert [r.message for r in out] == ["ok", "ok"]
    assert dec.malformed == 2


def test_lone_surrogate_escape_becomes_replacement_character() -> None:
    data = b'{"log":"a\\ud800b\\n","stream":"stdout","time":"2026-11-28T10:21:33.1Z"}\n'
    out = JsonFileDecoder(meta(), 1 << 20, tty=False).feed_lines(data)
    assert [r.message for r in out] == ["a\ufffdb"]


def test_first_offset_at_or_after_bisects_like_a_scan(tmp_path: Path) -> None:
    base = 1_800_000_000 * 10**9
    lines = []
    for i in range(20000):
        ts = format_timestamp_ns(base + (i // 3) * 1_000_000)  # three lines a stamp
        lines.append(orjson.dumps({"log": f"l{i}\n", "stream": "stdout", "time": ts}) + b"\n")
    path = tmp_path / "x-json.log"
    path.write_bytes(b"".join(lines))
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    fd = os.open(path, os.O_RDONLY)
    try:
        size = starts[-1]
        for i in (0, 1, 2, 3, 4, 5000, 5001, 19997, 19999):
            cut = format_timestamp_ns(base + (i // 3) * 1_000_000)
            assert first_offset_at_or_after(fd, size, cut) == starts[(i // 3) * 3]
        assert first_offset_at_or_after(fd, size, format_timestamp_ns(base * 2)) == size
        assert first_offset_at_or_after(fd, size, format_timestamp_ns(0)) == 0
    finally:
        os.close(fd)


# -- the source on a temp directory ---------------------------------------------------------


class FakeEngine:
    def __init__(self, tty: bool = False, max_size: str = "2k") -> None:
        self.running = True
        self.removed = False
        self.tty = tty
        self.max_size = max_size
        self.inspects = 0

    async def inspect(self, cid: str) -> dict[str, Any]:
        self.inspects += 1
        if self.removed:
            raise NotFound(f"no such container {cid}")
        return {
            "State": {"Running": self.running},
            "Config": {"Tty": self.tty},
            "HostConfig": {
                "LogConfig": {"Type": "json-file", "Config": {"max-size": self.max_size}}
            },
        }


class Writer:
    """Writes json-file lines and rotates like the engine (close, shift, create)."""

    def __init__(self, root: Path, max_files: int = 3) -> None:
        self.dir = root / CID
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"{CID}-json.log"
        self.max_files = max_files
        self.n = 0
        self.step_ns = 1000  # between two lines' stamps
        self.file = open(self.path, "ab")  # noqa: SIM115 - closed by close()/rotate()

    def write(self, count: int, stream: str = "stdout") -> None:
        out = []
        for _ in range(count):
            ts = format_timestamp_ns(1_800_000_000 * 10**9 + self.n * self.step_ns)
            out.append(orjson.dumps({"log": f"line {self.n}\n", "stream": stream, "time": ts}))
            self.n += 1
        self.file.write(b"\n".join(out) + b"\n")
        self.file.flush()

    def rotate(self) -> None:
        self.file.close()
        last = Path(f"{self.path}.{self.max_files - 1}")
        if last.exists():
            last.unlink()
        for i in range(self.max_files - 1, 1, -1):
            src = Path(f"{self.path}.{i - 1}")
            if src.exists():
                src.rename(f"{self.path}.{i}")
        self.path.rename(f"{self.path}.1")
        self.file = open(self.path, "ab")  # noqa: SIM115

    def close(self) -> None:
        self.file.close()

    def reopen(self) -> None:
        self.file = open(self.path, "ab")  # noqa: SIM115


class Run:
    """One ``read()`` of the source as a task, collecting what it emits."""

    def __init__(self, source: JsonFileLogSource, on_emit: Any = None, now: bool = True) -> None:
        self.source = source
        self.records: list[Record] = []
        self.on_emit = on_emit
        self.answers: list[dict[str, Any]] = []  # inspect answers handed to the reader
        self.reader = SimpleNamespace(
            meta=meta(),
            followers=SimpleNamespace(positions={CID: {}}, marks={}, lines_lost=0),
            decoder=None,
            lost=0,
            # as a reader without a processing chain, its pipeline with room (``now``):
            # new lines of a slow writer are read in the inotify handler
            emit_ready=lambda: now,
            emit_now=self.took,
            inspected=self.answers.append,
        )
        self.task: asyncio.Task[StreamEnd] | None = None

    async def emit(self, batch: list[Record]) -> None:
        self.took(batch)

    def took(self, batch: list[Record]) -> None:
        self.records += batch
        advance(self.reader.followers.positions[CID], batch)
        if self.on_emit is not None:
            hook, self.on_emit = self.on_emit, None
            hook()

    def start(self) -> Run:
        positions = self.reader.followers.positions[CID]
        self.task = asyncio.create_task(self.source.read(self.reader, positions, self.emit))
        return self

    def messages(self) -> list[str]:
        return [r.message for r in self.records]

    async def until(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.records) < count:
                if self.task is not None and self.task.done():
                    self.task.result()
                    raise AssertionError(f"read ended at {len(self.records)} records")
                await asyncio.sleep(0.01)


def source_for(root: Path, engine: FakeEngine, **kw: Any) -> JsonFileLogSource:
    return JsonFileLogSource(engine, str(root), 1 << 20, **kw)  # type: ignore[arg-type]


async def stop(run: Run, engine: FakeEngine, writer: Writer) -> StreamEnd:
    engine.running = False
    writer.close()  # IN_CLOSE_WRITE, as when the engine closes a stopped container's log
    assert run.task is not None
    return await asyncio.wait_for(run.task, 10)


@pytest.mark.parametrize("inotify", [True, False])
async def test_follows_a_file_and_stops_when_the_container_stops(
    tmp_path: Path, inotify: bool
) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(10)
    run = Run(source_for(tmp_path, engine, use_inotify=inotify)).start()
    await run.until(10)
    writer.write(5)
    await run.until(15)
    assert await stop(run, engine, writer) is StreamEnd.STOPPED
    assert run.messages() == [f"line {i}" for i in range(15)]
    # The inspect answer at the start went to the reader (for the inventory's stats).
    assert run.answers and run.answers[0]["State"]["Running"] is True


async def test_write_to_record_latency_is_short(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    run = Run(source_for(tmp_path, engine)).start()
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    for i in range(5):
        t0 = loop.time()
        writer.write(1)
        await run.until(i + 1)
        # woken by inotify: within its linger (the modifications of many files are handed
        # to the loop together), not at the reader's next liveness look (seconds later)
        assert loop.time() - t0 < WAKE_LINGER_SECONDS + 0.2
        await asyncio.sleep(0.05)
    await stop(run, engine, writer)


@pytest.mark.parametrize("now", [True, False])
async def test_a_slow_writers_watch_stays_and_a_burst_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, now: bool
) -> None:
    """A file written now and then keeps one watch (no watch set, nor stat, per line),
    and its lines are read in the inotify handler when the pipeline has room (``now``),
    else by the reader; a burst read in whole chunks ends it, and nothing is lost or
    repeated either way."""
    from agent.sources.jsonfile.inotify import FileWatches

    adds: list[int] = []
    removes: list[int] = []
    add, remove = FileWatches.add, FileWatches.remove

    def counted_add(self: FileWatches, path: str, mask: int, handler: Any) -> int:
        adds.append(mask)
        return add(self, path, mask, handler)

    def counted_remove(self: FileWatches, wd: int, handler: Any) -> None:
        removes.append(wd)
        remove(self, wd, handler)

    monkeypatch.setattr(FileWatches, "add", counted_add)
    monkeypatch.setattr(FileWatches, "remove", counted_remove)
    engine = FakeEngine()
    writer = Writer(tmp_path)
    source = source_for(tmp_path, engine, chunk_bytes=4096)
    run = Run(source, now=now).start()
    await asyncio.sleep(0.3)
    for i in range(8):
        writer.write(1)
        await run.until(i + 1)
        await asyncio.sleep(0.15)
    assert len(adds) <= 4, adds  # not one per line
    assert not removes
    # Once the watch stays, each line is read where its notice is handled (or never).
    assert source.in_place_reads >= 5 if now else source.in_place_reads == 0
    assert run.reader.followers.marks[CID].offset == writer.path.stat().st_size
    writer.write(5000)  # 5000 lines of ~90 bytes: whole chunks of 4 KiB
    await run.until(5008)
    assert removes  # the burst ended the watch that stays
    for i in range(3):
        writer.write(1)
        await run.until(5009 + i)
        await asyncio.sleep(0.15)
    await stop(run, engine, writer)
    assert run.messages() == [f"line {i}" for i in range(5011)]


async def test_the_linger_of_the_files_notices_is_configured_and_reloaded(
    tmp_path: Path,
) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    source = source_for(tmp_path, engine, linger_seconds=0.4)
    run = Run(source).start()
    await asyncio.sleep(0.2)
    assert source._inotify is not None and source._inotify.files.linger == 0.4
    loop = asyncio.get_running_loop()
    writer.write(1)  # read at once (nothing was read for a linger before it)
    await run.until(1)
    t0 = loop.time()
    writer.write(1)  # within the linger that read began: read when it ends
    await run.until(2)
    assert 0.2 <= loop.time() - t0 <= 0.4 + 0.3
    source.set_linger(0.05)
    assert source._inotify.files.linger == 0.05
    await stop(run, engine, writer)


@pytest.mark.parametrize("inotify", [True, False])
async def test_rotation_loses_and_repeats_nothing(tmp_path: Path, inotify: bool) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path, max_files=3)
    writer.write(30)
    source = source_for(tmp_path, engine, use_inotify=inotify, poll_seconds=0.01)
    run = Run(source).start()
    for _ in range(20):
        writer.rotate()
        writer.write(30)
        await asyncio.sleep(0.02)
    await stop(run, engine, writer)
    assert run.messages() == [f"line {i}" for i in range(30 * 21)]
    assert source.lost == 0


async def test_rotated_files_held_open_are_finished_after_deletion(tmp_path: Path) -> None:
    """The reader is busy (its first emit) while the engine rotates three times with
    max-file=3: the oldest file is deleted, but it was open, so nothing is lost."""
    engine = FakeEngine()
    writer = Writer(tmp_path, max_files=3)
    writer.write(10)
    source = source_for(tmp_path, engine, chunk_bytes=256)

    def busy() -> None:
        for _ in range(3):
            writer.rotate()
            writer.write(10)

    run = Run(source, on_emit=busy).start()
    await run.until(40)
    await stop(run, engine, writer)
    assert run.messages() == [f"line {i}" for i in range(40)]
    assert source.lost == 0


async def test_rotation_faster_than_reading_is_counted_and_logged(tmp_path: Path) -> None:
    """Four rotations with max-file=3 while the watcher thread is held back (as on a starved
    CPU) and the reader holds only the first file: the second file is created and deleted
    unseen. inotify counted the creations, so the loss is known."""
    if not inotify_available():
        pytest.skip("no inotify instance left (fs.inotify.max_user_instances)")
    engine = FakeEngine(max_size="1k")
    writer = Writer(tmp_path, max_files=3)
    writer.write(10)  # file A: lines 0-9, open
    source = source_for(tmp_path, engine)

    def rotate_unseen() -> None:
        assert source._inotify is not None
        with source._inotify.lock:  # the watcher thread cannot dispatch events meanwhile
            for _ in range(4):  # B (10-19) is rotated away unseen; C, D, E remain
                writer.rotate()
                writer.write(10)

    run = Run(source, on_emit=rotate_unseen)
    with capture_logs() as logs:
        run.start()
        await run.until(40)
        await stop(run, engine, writer)
    expected = [f"line {i}" for i in range(50) if not 10 <= i < 20]
    assert run.messages() == expected
    lost = [e for e in logs if e["event"] == "log_lines_lost"]
    assert len(lost) == 1 and lost[0]["files"] == 1 and lost[0]["lines"] > 0
    assert source.lost == lost[0]["lines"] == run.reader.lost == run.reader.followers.lines_lost


async def test_rotation_loss_without_inotify_is_logged_as_unknown(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path, max_files=3)
    writer.write(10)
    source = source_for(tmp_path, engine, use_inotify=False, poll_seconds=0.01)

    def rotate_unseen() -> None:
        for _ in range(4):
            writer.rotate()
            writer.write(10)

    run = Run(source, on_emit=rotate_unseen)
    with capture_logs() as logs:
        run.start()
        await run.until(40)
        await stop(run, engine, writer)
    lost = [e for e in logs if e["event"] == "log_lines_lost"]
    assert len(lost) == 1 and lost[0]["files"] == "unknown"


@pytest.mark.parametrize("inotify", [True, False])
async def test_truncated_file_is_read_again_from_the_start(tmp_path: Path, inotify: bool) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(10)
    source = source_for(tmp_path, engine, use_inotify=inotify, poll_seconds=0.01)
    run = Run(source).start()
    await run.until(10)
    os.truncate(writer.path, 0)
    writer.write(12)  # the engine appends: the file grows past the old offset again
    await run.until(22)
    with capture_logs() as logs:
        await stop(run, engine, writer)
    assert run.messages() == [f"line {i}" for i in range(22)]
    assert source.lost == 0 and not [e for e in logs if e["event"] == "log_lines_lost"]


async def test_truncation_before_the_end_was_read_is_counted(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(100)
    source = source_for(tmp_path, engine, chunk_bytes=500)

    def truncate() -> None:
        os.truncate(writer.path, 0)
        writer.write(3)

    run = Run(source, on_emit=truncate)
    with capture_logs() as logs:
        run.start()
        await run.until(4)
        await asyncio.sleep(0.1)
        await stop(run, engine, writer)
    first = len(run.records) - 3
    assert run.messages()[first:] == ["line 100", "line 101", "line 102"]
    assert run.messages()[:first] == [f"line {i}" for i in range(first)]
    assert source.lost > 0
    assert [e["event"] for e in logs if e["event"] == "log_lines_lost"] == ["log_lines_lost"]


async def test_removed_container_is_read_to_the_end_of_its_open_file(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(1000)
    writer.close()
    source = source_for(tmp_path, engine, chunk_bytes=4096)

    def remove() -> None:
        shutil.rmtree(writer.dir)
        engine.removed = True

    run = Run(source, on_emit=remove).start()
    assert await asyncio.wait_for(run.task, 10) is StreamEnd.STOPPED  # type: ignore[arg-type]
    assert run.messages() == [f"line {i}" for i in range(1000)]


async def test_resumes_after_a_restart_from_where_it_stopped(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(10)
    source = source_for(tmp_path, engine)
    run = Run(source).start()
    await run.until(10)
    await stop(run, engine, writer)
    # The container starts again: the engine appends to the same file.
    writer.reopen()
    writer.write(5)
    engine.running = True
    again = Run(source)
    again.reader.followers = run.reader.followers
    again.start()
    await again.until(5)
    await stop(again, engine, writer)
    assert again.messages() == [f"line {i}" for i in range(10, 15)]
    assert again.reader.decoder.skipped == 0  # started at the mark: nothing read twice


def checkpointed(run: Run) -> FileMark:
    """The reader's mark as a checkpoint file holds it (no tail bytes)."""
    m = run.reader.followers.marks[CID]
    return FileMark(m.inode, m.offset, m.timestamp, dict(m.streams))


async def restarted(
    root: Path, engine: FakeEngine, writer: Writer, positions: dict[str, Position], mark: FileMark
) -> Run:
    """A new agent process (no in-memory state) reading from a checkpoint, until 5 lines
    came and the container stopped again."""
    engine.running = True
    run = Run(source_for(root, engine))
    run.reader.followers.positions[CID] = dict(positions)
    run.reader.followers.marks[CID] = mark
    run.start()
    await run.until(5)
    await stop(run, engine, writer)
    return run


async def test_resumes_from_a_checkpointed_file_position(tmp_path: Path) -> None:
    """After an agent restart the checkpoint's (inode, offset) is where reading starts:
    no search and nothing read twice, even when lines on both sides of the mark share one
    stamp (the per-stream count then only covers the lines after the mark)."""
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.step_ns = 0  # every line stamped alike: a count alone cannot place the mark
    writer.write(6)
    run = Run(source_for(tmp_path, engine)).start()
    await run.until(6)
    await stop(run, engine, writer)
    mark = checkpointed(run)
    assert mark.inode == os.stat(writer.path).st_ino
    assert mark.offset == os.path.getsize(writer.path)
    assert mark.streams["stdout"].count == 6
    writer.reopen()
    writer.write(4)  # delivered after the mark, in a batch that ended mid-line
    delivered = {"stdout": Position(mark.timestamp, 10)}
    writer.write(5)  # never delivered
    again = await restarted(tmp_path, engine, writer, delivered, mark)
    assert again.messages() == [f"line {i}" for i in range(10, 15)]
    assert again.reader.decoder.skipped == 4  # only the 4 after the mark were read again


@pytest.mark.parametrize("stale", ["inode", "stamp", "offset"])
async def test_an_untrustworthy_mark_falls_back_to_the_timestamps(
    tmp_path: Path, stale: str
) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.write(10)
    run = Run(source_for(tmp_path, engine)).start()
    await run.until(10)
    await stop(run, engine, writer)
    mark = checkpointed(run)
    if stale == "inode":  # the file was rotated away and deleted meanwhile
        mark.inode += 1
    elif stale == "stamp":  # the inode was reused by another file
        mark.timestamp = "2001-01-01T00:00:00.000000000Z"
    else:  # not at a line end (or past the end of a truncated file)
        mark.offset -= 3
    writer.reopen()
    writer.write(5)
    again = await restarted(tmp_path, engine, writer, run.reader.followers.positions[CID], mark)
    assert again.messages() == [f"line {i}" for i in range(10, 15)]
    assert again.reader.decoder.skipped > 0  # found by the stamps instead


async def test_start_at_now_skips_the_history_without_reading_it_all(tmp_path: Path) -> None:
    engine = FakeEngine()
    writer = Writer(tmp_path)
    writer.step_ns = 1_000_000  # 50 s of history
    writer.write(50_000)
    now = format_timestamp_ns(1_800_000_000 * 10**9 + 49_990 * 1_000_000)
    run = Run(source_for(tmp_path, engine))
    run.reader.followers.positions[CID] = {s: Position(now, 1 << 62) for s in ("stdout", "stderr")}
    run.start()
    await run.until(9)
    await stop(run, engine, writer)
    assert run.messages() == [f"line {i}" for i in range(49_991, 50_000)]
    # Bisected to 2 s (the margin) before "now", not scanned from the start.
    assert run.reader.decoder.skipped <= 2_001


async def test_no_file_is_not_found(tmp_path: Path) -> None:
    (tmp_path / CID).mkdir()
    run = Run(source_for(tmp_path, FakeEngine())).start()
    with pytest.raises(NotFound):
        await asyncio.wait_for(run.task, 5)  # type: ignore[arg-type]


# -- choosing the source --------------------------------------------------------------------


async def test_chooser(tmp_path: Path) -> None:
    api = SimpleNamespace(name="api")
    files = source_for(tmp_path, FakeEngine())
    Writer(tmp_path).close()
    (tmp_path / ("e" * 64)).mkdir()  # a container of another log driver: no -json.log
    auto = SourceChooser("auto", api, files)  # type: ignore[arg-type]
    assert await auto(meta()) is files
    other = ContainerMeta("e" * 64, "/other", "busybox", {}, "host1")
    assert await auto(other) is api
    with capture_logs() as logs:
        forced = SourceChooser("files", api, files)  # type: ignore[arg-type]
        assert await forced(other) is api
    assert [e["event"] for e in logs] == ["log_source_fallback"]
    assert await SourceChooser("api", api, files)(meta()) is api  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["auto", "files"])
async def test_unreadable_directory_falls_back_with_one_line(tmp_path: Path, mode: str) -> None:
    """Running as root, "unreadable" is simulated with a path that is a file."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    api = SimpleNamespace(name="api")
    files = source_for(not_a_dir, FakeEngine())
    with capture_logs() as logs:
        chooser = SourceChooser(mode, api, files)  # type: ignore[arg-type]
        for _ in range(3):
            assert await chooser(meta()) is api
    assert [e["event"] for e in logs] == ["log_files_unreadable"]


async def test_long_sleepers_are_woken_by_the_thread_and_file_events_read_together(
    tmp_path: Path,
) -> None:
    from agent.sources.jsonfile.inotify import TICK_SECONDS, Inotify

    inotify = Inotify()
    loop = asyncio.get_running_loop()
    try:
        due, cancelled = asyncio.Event(), asyncio.Event()
        t0 = loop.time()
        inotify.sleep_until(due, time.monotonic() + 0.2)
        inotify.sleep_until(cancelled, time.monotonic() + 0.2)
        inotify.unsleep(cancelled)
        await asyncio.wait_for(due.wait(), TICK_SECONDS + 2)
        assert 0.19 <= loop.time() - t0 <= 0.2 + TICK_SECONDS + 0.5
        await asyncio.sleep(0.3)
        assert not cancelled.is_set() and not inotify.sleepers
        # Files written within the linger: their events are read on the loop together.
        from agent.sources.jsonfile.inotify import IN_MODIFY, IN_ONESHOT

        woken: list[tuple[str, int]] = []
        reads = [0]
        drain = inotify.files.drain

        def counted() -> int:
            reads[0] += 1
            return drain()

        inotify.files.drain = counted  # type: ignore[method-assign]
        paths = [tmp_path / f"f{i}" for i in range(3)]
        for i, path in enumerate(paths):
            path.write_bytes(b"")
            inotify.files.add(
                str(path),
                IN_MODIFY | IN_ONESHOT,
                lambda _m, _n, i=i: woken.append((f"f{i}", reads[0])),
            )
        await asyncio.sleep(0.01)
        for path in paths:
            path.write_bytes(b"x\n")
        for _ in range(100):
            if len({name for name, _ in woken}) == 3:
                break
            await asyncio.sleep(0.01)
        assert {name for name, _ in woken} == {"f0", "f1", "f2"}  # (and IN_IGNORED after)
        assert len({at for _, at in woken}) == 1  # in one read of the descriptor
        assert not inotify.files.handlers  # one-shot watches: gone once fired
    finally:
        inotify.close()
