"""``ContainerReader`` with a scripted source: what reaches the pipeline, the positions and
counters it books, when it reads again, and how it ends (container gone, engine errors)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.engine.client import EngineError, NotFound
from agent.filters import ContainerFilter
from agent.positions import Position
from agent.record import ContainerMeta, Record
from agent.retry import Backoff
from agent.sources.base import Emit, LogSource, StreamEnd
from agent.sources.followers import LogFollowers
from agent.sources.reader import ContainerReader

CID = "c" * 64


def ts(i: int) -> str:
    return f"2026-01-01T00:00:{i:02d}.000000000Z"


def meta(name: str = "/web") -> ContainerMeta:
    return ContainerMeta(CID, name, "busybox", {}, "host1")


def line(
    i: int, stream: str = "stdout", message: str = "x", m: ContainerMeta | None = None
) -> Record:
    return Record.log(ts(i), m or meta(), stream, message, False)


class ScriptedSource(LogSource):
    """Each ``read`` plays the next script: a list of steps, each a batch to emit, a
    callable given the reader, or (last) a ``StreamEnd`` to return or an exception to
    raise. Records the positions every read was given (a copy, as they were then)."""

    def __init__(self, *reads: list[Any], name: str = "scripted") -> None:
        self.name = name
        self.reads = list(reads)
        self.given: list[dict[str, Position]] = []

    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        self.given.append(copy.deepcopy(positions))
        assert self.reads, f"read #{len(self.given)} was not scripted"
        for step in self.reads.pop(0):
            if isinstance(step, StreamEnd):
                return step
            if isinstance(step, BaseException):
                raise step
            if callable(step):
                step(reader)
                continue
            await emit(step)
        raise AssertionError("a scripted read ends with a StreamEnd or an exception")


class RecordingBackoff(Backoff):
    """Waits ``wait`` seconds (none by default); remembers which attempt each wait was
    asked for, and says when one was (``asked``)."""

    def __init__(self, wait: float = 0.0) -> None:
        super().__init__(0.001, 0.001)
        self.wait = wait
        self.attempts: list[int] = []
        self.asked = asyncio.Event()

    def delay(self, attempt: int) -> float:
        self.attempts.append(attempt)
        self.asked.set()
        return self.wait


class FakeEngine:
    """Answers the reader's inspect after a failed read: the container exists, unless
    ``inspect_error`` says what to raise; ``on_inspect`` runs first."""

    host = "unix:///fake.sock"

    def __init__(self) -> None:
        self.inspected: list[str] = []
        self.inspect_error: EngineError | None = None
        self.on_inspect: Callable[[], None] | None = None

    async def inspect(self, cid: str) -> dict[str, Any]:
        self.inspected.append(cid)
        if self.on_inspect is not None:
            self.on_inspect()
        if self.inspect_error is not None:
            raise self.inspect_error
        return {"Id": cid, "State": {"Running": True}}


class Harness:
    """A real ``LogFollowers`` whose pipeline collects batches, and what the container's
    positions were when each batch was sent."""

    def __init__(self, source: LogSource, wait: float = 0.0, **kw: Any) -> None:
        self.batches: list[list[Record]] = []
        self.positions_at_send: list[dict[str, Position]] = []
        self.backoff = RecordingBackoff(wait)
        self.engine = FakeEngine()
        self.followers = LogFollowers(
            self.engine,  # type: ignore[arg-type]
            source,
            self.send,
            ContainerFilter(),
            "host1",
            self.backoff,
            **kw,
        )

    async def send(self, batch: list[Record]) -> None:
        self.positions_at_send.append(copy.deepcopy(self.followers.positions.get(CID, {})))
        self.batches.append(batch)

    async def run(self, source: LogSource, m: ContainerMeta | None = None) -> ContainerReader:
        reader = ContainerReader(m or meta(), source, self.followers)
        await asyncio.wait_for(reader.run(), 1)
        return reader


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in logs]


async def test_batches_reach_the_pipeline_in_order_and_advance_positions() -> None:
    b1 = [line(1), line(1, "stderr"), line(2)]
    b2 = [line(2), line(2)]  # continues the run of lines stamped ts(2)
    b3 = [line(3, "stderr")]
    source = ScriptedSource([b1, b2, b3, StreamEnd.STOPPED])
    h = Harness(source)
    reader = await h.run(source)
    assert h.batches == [b1, b2, b3]
    assert all(a is b for a, b in zip(h.batches, [b1, b2, b3], strict=True))
    assert h.followers.positions[CID] == {
        "stdout": Position(ts(2), 3),
        "stderr": Position(ts(3), 1),
    }
    # A batch's lines count as delivered only once the pipeline took it.
    assert h.positions_at_send == [
        {},
        {"stdout": Position(ts(2), 1), "stderr": Position(ts(1), 1)},
        {"stdout": Position(ts(2), 3), "stderr": Position(ts(1), 1)},
    ]
    assert reader.lines == 6 and reader.last_timestamp == ts(3)
    assert source.given == [{}]  # STOPPED, and no rerun asked: read once


async def test_emit_now_books_a_batch_as_emit_does_when_the_pipeline_has_room() -> None:
    """A source that reads where it cannot wait (the files source, in its inotify
    handler) hands a batch on with ``emit_now``, only when ``emit_ready``: then the
    positions and counters move as after ``_emit``."""

    class Room:
        def __init__(self) -> None:
            self.room = True
            self.got: list[list[Record]] = []

        def has_room(self) -> bool:
            return self.room

        def put_now(self, batch: list[Record]) -> None:
            self.got.append(batch)

    h = Harness(ScriptedSource())
    reader = ContainerReader(meta(), h.followers.source, h.followers)
    info = h.followers.inventory.get(meta())
    assert not reader.emit_ready()  # no pipeline to put to without waiting
    room = Room()
    h.followers.queue_now = room
    assert reader.emit_ready()
    b1, b2 = [line(1), line(1, "stderr", "ab")], [line(1, "stdout", "c")]
    reader.emit_now(b1)
    await reader._emit(b2)
    room.room = False
    assert not reader.emit_ready()
    assert room.got == [b1] and h.batches == [b2]
    assert h.followers.positions[CID] == {
        "stdout": Position(ts(1), 2),
        "stderr": Position(ts(1), 1),
    }
    assert info.log_lines == {"stdout": 2, "stderr": 1}
    assert info.log_bytes == {"stdout": 2, "stderr": 2}
    assert reader.lines == 3


def test_an_inspect_answer_a_source_got_goes_to_the_inventory() -> None:
    """The stats collector then need not ask the engine again (it asks for containers
    not inspected yet)."""
    h = Harness(ScriptedSource())
    reader = ContainerReader(meta(), h.followers.source, h.followers)
    info = h.followers.inventory.get(meta())
    assert not info.inspected
    reader.inspected({"State": {"Pid": 4321, "Status": "running"}, "HostConfig": {"Memory": 64}})
    assert info.inspected and info.pid == 4321 and info.memory_limit == 64


async def test_inventory_counts_lines_and_characters_per_stream() -> None:
    source = ScriptedSource(
        [
            [line(1, "stdout", "hello"), line(1, "stderr", "oops!"), line(2, "stdout", "é€")],
            [line(3, "stderr", "x")],
            [line(4, "stdout", "")],
            StreamEnd.STOPPED,
        ]
    )
    h = Harness(source)
    info = h.followers.inventory.get(meta())
    await h.run(source)
    assert info.log_lines == {"stdout": 3, "stderr": 2}
    # Characters, not bytes (README: "characters of those messages (bytes for ASCII)").
    assert info.log_bytes == {"stdout": 5 + 2, "stderr": 5 + 1}
    assert info.last_log_timestamp == ts(4)


async def test_a_container_without_an_inventory_entry_is_read_all_the_same() -> None:
    source = ScriptedSource([[line(1), line(2, "stderr")], StreamEnd.STOPPED])
    h = Harness(source)
    reader = await h.run(source)
    assert reader.lines == 2 and CID not in h.followers.inventory.containers
    assert h.followers.positions[CID]["stderr"] == Position(ts(2), 1)


async def test_reopen_reads_again_from_the_delivered_positions() -> None:
    source = ScriptedSource(
        [[line(1), line(2)], [line(2, "stderr")], StreamEnd.REOPEN],
        [[line(3)], StreamEnd.REOPEN],
        [StreamEnd.STOPPED],
    )
    h = Harness(source)
    await h.run(source)
    assert source.given == [
        {},
        {"stdout": Position(ts(2), 1), "stderr": Position(ts(2), 1)},
        {"stdout": Position(ts(3), 1), "stderr": Position(ts(2), 1)},
    ]
    assert [r.timestamp for b in h.batches for r in b] == [ts(1), ts(2), ts(2), ts(3)]


async def test_first_read_starts_from_the_positions_held_for_the_container() -> None:
    """Positions seeded from the checkpoint (or left by an earlier reader) are where the
    read starts, and are advanced in place."""
    source = ScriptedSource([[line(8)], StreamEnd.STOPPED])
    h = Harness(source)
    seeded = {"stdout": Position(ts(7), 2), "stderr": Position(ts(5), 1)}
    h.followers.positions[CID] = dict(seeded)
    await h.run(source)
    assert source.given == [seeded]
    assert h.followers.positions[CID] == {**seeded, "stdout": Position(ts(8), 1)}


async def test_rerun_set_while_reading_makes_a_stopped_read_go_again() -> None:
    def start_event_arrives(reader: ContainerReader) -> None:
        reader.rerun = True  # what LogFollowers.follow does for a container being read

    source = ScriptedSource(
        [[line(1)], start_event_arrives, StreamEnd.STOPPED],
        [[line(2)], StreamEnd.STOPPED],
    )
    h = Harness(source)
    reader = await h.run(source)
    assert source.given == [{}, {"stdout": Position(ts(1), 1)}]
    assert reader.rerun is False  # taken: the second read's STOPPED ends the reader
    assert reader.lines == 2


async def test_not_found_before_any_line_ends_the_reader_as_container_logs_unavailable() -> None:
    """An auto-removed container that exits before its logs are asked for: the engine
    answers 409 and its lines are lost; said as a warning, and counted."""
    error = NotFound("GET /containers/cc/logs: 409 dead or marked for removal", 409)
    source = ScriptedSource([error])
    h = Harness(source)
    with capture_logs() as logs:
        await h.run(source)
    ends = [e for e in logs if e["event"] in ("container_gone", "container_logs_unavailable")]
    assert len(ends) == 1 and ends[0]["event"] == "container_logs_unavailable"
    assert ends[0]["log_level"] == "warning" and ends[0]["error"] == str(error)
    assert (ends[0]["container"], ends[0]["id"]) == ("web", CID[:12])
    assert h.followers.unavailable == 1
    assert len(source.given) == 1 and h.backoff.attempts == [] and h.engine.inspected == []


async def test_not_found_after_lines_ends_the_reader_as_container_gone() -> None:
    source = ScriptedSource([[line(1)], NotFound("no such container", 404)])
    h = Harness(source)
    with capture_logs() as logs:
        await h.run(source)
    ends = [e for e in logs if e["event"] in ("container_gone", "container_logs_unavailable")]
    assert ends == [
        {"event": "container_gone", "log_level": "info", "container": "web", "id": CID[:12]}
    ]
    assert h.followers.unavailable == 0
    assert len(source.given) == 1 and h.backoff.attempts == []
    assert h.followers.positions[CID] == {"stdout": Position(ts(1), 1)}  # kept: forget's job


async def test_not_found_after_a_reopen_still_counts_the_earlier_lines() -> None:
    source = ScriptedSource([[line(1)], StreamEnd.REOPEN], [NotFound("gone", 404)])
    h = Harness(source)
    with capture_logs() as logs:
        await h.run(source)
    assert "container_gone" in events(logs)
    assert "container_logs_unavailable" not in events(logs)
    assert h.followers.unavailable == 0


async def test_engine_errors_are_retried_with_back_off_and_a_read_resets_it() -> None:
    err = EngineError("GET /containers/cc/logs: 500 internal error", 500)
    source = ScriptedSource(
        [err],
        [err],
        [[line(1)], StreamEnd.REOPEN],  # a read that ends normally: the count restarts
        [err],
        [err],
        [err],
        [[line(2)], StreamEnd.STOPPED],
    )
    h = Harness(source)
    info = h.followers.inventory.get(meta())
    with capture_logs() as logs:
        reader = await h.run(source)
    assert h.backoff.attempts == [0, 1, 0, 1, 2]
    assert len(source.given) == 7 and not source.reads
    # Each retry starts from what was delivered.
    assert source.given[3:] == [{"stdout": Position(ts(1), 1)}] * 4
    assert reader.lines == 2 and reader.failures == 5 and info.log_read_failures == 5
    assert h.engine.inspected == [CID] * 5  # each failure asks whether the container exists
    # Logged at failures 1, 2, 4, 8, … of a run: not at the third.
    failed = [e for e in logs if e["event"] == "log_stream_failed"]
    assert [e["failures"] for e in failed] == [1, 2, 1, 2]
    assert all(e["log_level"] == "warning" and e["error"] == str(err) for e in failed)
    recovered = [e for e in logs if e["event"] == "log_stream_recovered"]
    assert [e["failures"] for e in recovered] == [2, 3]


async def test_never_gives_up_while_the_container_exists() -> None:
    """(The reader used to give up after three retries; it now retries as long as inspect
    does not say the container is gone.)"""
    source = ScriptedSource(
        *[[EngineError(f"failure {i}")] for i in range(1, 21)],
        [[line(1)], StreamEnd.STOPPED],
    )
    h = Harness(source)
    with capture_logs() as logs:
        reader = await h.run(source)
    assert h.backoff.attempts == list(range(20))
    assert len(source.given) == 21 and reader.lines == 1
    failed = [e for e in logs if e["event"] == "log_stream_failed"]
    assert [(e["failures"], e["error"]) for e in failed] == [
        (n, f"failure {n}") for n in (1, 2, 4, 8, 16)
    ]
    assert [e["failures"] for e in logs if e["event"] == "log_stream_recovered"] == [20]


async def test_while_the_engine_cannot_say_whether_the_container_exists_it_retries() -> None:
    source = ScriptedSource([EngineError("cut")], [EngineError("cut")], [StreamEnd.STOPPED])
    h = Harness(source)
    h.engine.inspect_error = EngineError("GET /containers/cc/json: connection refused")
    await h.run(source)
    assert h.backoff.attempts == [0, 1] and len(source.given) == 3


async def test_a_read_that_delivered_lines_before_failing_counts_as_progress() -> None:
    """A stream cut after progress is a new failure: the back-off starts from its first
    step again, however often it happens."""
    source = ScriptedSource(
        *[[[line(i)], EngineError(f"dropped after line {i}")] for i in range(1, 6)],
        [StreamEnd.STOPPED],
    )
    h = Harness(source)
    with capture_logs() as logs:
        reader = await h.run(source)
    assert len(source.given) == 6 and reader.lines == 5
    assert h.backoff.attempts == [0, 0, 0, 0, 0]
    assert [e["failures"] for e in logs if e["event"] == "log_stream_failed"] == [1] * 5


@pytest.mark.parametrize("lines", [0, 1])
async def test_a_failed_read_of_a_removed_container_ends_the_reader(lines: int) -> None:
    """The read fails and inspect says the container is gone: no back-off, no retry."""
    first: list[Any] = [[line(1)]] if lines else []
    source = ScriptedSource([*first, EngineError("GET /containers/cc/logs: cut")])
    h = Harness(source)
    h.engine.inspect_error = NotFound("GET /containers/cc/json: 404 no such container", 404)
    with capture_logs() as logs:
        reader = await h.run(source)
    assert h.backoff.attempts == [] and len(source.given) == 1 and reader.failures == 1
    expected = "container_gone" if lines else "container_logs_unavailable"
    assert [e["event"] for e in logs if e["event"].startswith("container_")] == [
        "container_followed",
        expected,
    ]
    assert h.followers.unavailable == (0 if lines else 1)
    assert "log_stream_failed" not in events(logs)


async def test_a_log_driver_that_cannot_be_read_ends_the_reader() -> None:
    error = EngineError(
        "GET /containers/cc/logs: 501 configured logging driver does not support reading", 501
    )
    source = ScriptedSource([error])
    h = Harness(source)
    with capture_logs() as logs:
        await h.run(source)
    [unreadable] = [e for e in logs if e["event"] == "container_logs_unreadable"]
    assert unreadable["log_level"] == "warning" and unreadable["error"] == str(error)
    assert h.backoff.attempts == [] and h.engine.inspected == [] and len(source.given) == 1


async def test_follow_wakes_a_reader_waiting_in_back_off() -> None:
    """Discovery follows the container again once the engine is back: the reader reads at
    once instead of sleeping out its back-off (a minute here)."""
    source = ScriptedSource([EngineError("engine gone")], [[line(1)], StreamEnd.STOPPED])
    h = Harness(source, wait=60.0)
    h.followers.follow(meta())
    await asyncio.wait_for(h.backoff.asked.wait(), 1)  # the reader now waits its back-off
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "logs:web")
    assert len(source.given) == 1
    h.followers.follow(meta())
    await asyncio.wait_for(task, 1)
    assert len(source.given) == 2 and h.followers.positions[CID] == {"stdout": Position(ts(1), 1)}


async def test_a_follow_during_the_inspect_after_a_failed_read_wakes_the_reader() -> None:
    source = ScriptedSource([EngineError("engine gone")], [[line(1)], StreamEnd.STOPPED])
    h = Harness(source, wait=60.0)
    # The engine comes back while the reader asks whether its container still exists:
    # discovery reconnects and follows the container again; the inspect itself failed.
    h.engine.on_inspect = lambda: h.followers.follow(meta())
    h.engine.inspect_error = EngineError("GET /containers/cc/json: connection reset")
    h.followers.follow(meta())
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "logs:web")
    try:
        await asyncio.wait_for(asyncio.shield(task), 0.3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(source.given) == 2


async def test_choose_source_picks_the_source_and_the_inventory_records_its_name() -> None:
    default = ScriptedSource(name="api")  # never read: a read would fail the test
    files = ScriptedSource([[line(1)], StreamEnd.STOPPED], name="files")
    asked: list[ContainerMeta] = []

    async def choose(m: ContainerMeta) -> LogSource:
        asked.append(m)
        return files

    h = Harness(default, choose_source=choose)
    m = meta()
    h.followers.inventory.get(m).log_source = "api"  # what follow() books first
    with capture_logs() as logs:
        reader = await h.run(default, m)
    assert asked == [m]
    assert reader.source is files
    assert default.given == [] and len(files.given) == 1
    assert h.followers.inventory.containers[CID].log_source == "files"
    followed = [e for e in logs if e["event"] == "container_followed"]
    assert followed and followed[0]["source"] == "files" and followed[0]["container"] == "web"


async def test_without_choose_source_the_readers_own_source_reads() -> None:
    source = ScriptedSource([StreamEnd.STOPPED], name="api")
    h = Harness(source)
    with capture_logs() as logs:
        reader = await h.run(source)
    assert reader.source is source and len(source.given) == 1
    assert [e["source"] for e in logs if e["event"] == "container_followed"] == ["api"]


def test_set_meta_updates_the_reader_and_its_decoder() -> None:
    h = Harness(ScriptedSource())
    reader = ContainerReader(meta(), h.followers.source, h.followers)
    renamed = meta("/renamed")
    reader.set_meta(renamed)  # no decoder yet: nothing else to update
    assert reader.meta is renamed

    class Decoder:
        meta: ContainerMeta = renamed

    reader.decoder = Decoder()  # type: ignore[assignment]
    again = meta("/again")
    reader.set_meta(again)
    assert reader.meta is again and reader.decoder.meta is again
