"""``LogFollowers``: one reader task per container, the positions it keeps for them, and
shutdown; with a source whose reads block until the test lets them end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.filters import ContainerFilter
from agent.positions import FileMark, Position
from agent.record import ContainerMeta, Record
from agent.retry import Backoff
from agent.sources.base import Emit, LogSource, StreamEnd
from agent.sources.followers import LogFollowers
from agent.sources.reader import ContainerReader

A, B, C = "a" * 64, "b" * 64, "c" * 64


def ts(i: int) -> str:
    return f"2026-01-01T00:00:{i:02d}.000000000Z"


def meta(cid: str = A, name: str | None = None, image: str = "busybox") -> ContainerMeta:
    return ContainerMeta(cid, name or f"/{cid[0]}-app", image, {}, "host1")


class Decoder:
    def __init__(self, m: ContainerMeta) -> None:
        self.meta = m


class GatedSource(LogSource):
    """Each read emits one line, says it started (``started``), then waits until the test
    releases it (``release``) and returns STOPPED; ``crash`` makes a container's next read
    raise instead."""

    name = "gated"

    def __init__(self) -> None:
        self.started: asyncio.Queue[str] = asyncio.Queue()
        self.reads: list[str] = []
        self.crash: dict[str, BaseException] = {}
        self._gates: dict[str, asyncio.Queue[None]] = {}

    def _gate(self, cid: str) -> asyncio.Queue[None]:
        return self._gates.setdefault(cid, asyncio.Queue())

    def release(self, cid: str) -> None:
        self._gate(cid).put_nowait(None)

    async def next_start(self) -> str:
        return await asyncio.wait_for(self.started.get(), 1)

    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        cid = reader.meta.id
        self.reads.append(cid)
        if cid in self.crash:
            raise self.crash.pop(cid)
        reader.decoder = Decoder(reader.meta)  # type: ignore[assignment]
        n = self.reads.count(cid)
        await emit([Record.log(ts(n), reader.meta, "stdout", f"line {n}", False)])
        self.started.put_nowait(cid)
        await self._gate(cid).get()
        return StreamEnd.STOPPED


class FakeEngine:
    """Only readers that retry ask it anything: every container exists."""

    host = "unix:///fake.sock"

    async def inspect(self, cid: str) -> dict[str, Any]:
        return {"Id": cid, "State": {"Running": True}}


def make(
    containers: ContainerFilter | None = None,
) -> tuple[LogFollowers, GatedSource, list[list[Record]]]:
    sent: list[list[Record]] = []

    async def send(batch: list[Record]) -> None:
        sent.append(batch)

    source = GatedSource()
    followers = LogFollowers(
        FakeEngine(),  # type: ignore[arg-type]
        source,
        send,
        containers or ContainerFilter(),
        "host1",
        Backoff(0.001, 0.001),
    )
    return followers, source, sent


def reader_tasks() -> dict[str, asyncio.Task[Any]]:
    return {t.get_name(): t for t in asyncio.all_tasks() if t.get_name().startswith("logs:")}


async def finished(task: asyncio.Task[Any]) -> None:
    """Waits for a reader task; the followers' done callback was added first, so it has
    run by the time this returns."""
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 1)


async def test_follow_starts_one_reader_task_per_container() -> None:
    followers, source, sent = make()
    followers.follow(meta(A))
    followers.follow(meta(B))
    assert {await source.next_start(), await source.next_start()} == {A, B}
    assert followers.followed == 2 and set(followers.readers) == {A, B}
    tasks = reader_tasks()
    assert set(tasks) == {"logs:a-app", "logs:b-app"}
    assert followers.inventory.containers[A].log_source == "gated"
    assert {b[0].meta.id for b in sent} == {A, B}
    for cid in (A, B):
        source.release(cid)
    for task in tasks.values():
        await finished(task)
    assert followers.followed == 0 and followers.readers == {}
    assert followers.positions == {
        A: {"stdout": Position(ts(1), 1)},
        B: {"stdout": Position(ts(1), 1)},
    }


async def test_a_second_follow_while_reading_starts_no_task_but_reads_again() -> None:
    followers, source, _ = make()
    followers.follow(meta(A))
    await source.next_start()
    task = reader_tasks()["logs:a-app"]
    reader = followers.readers[A]
    followers.follow(meta(A))  # a start event while the reader is busy
    assert reader.rerun is True
    assert followers.followed == 1 and reader_tasks() == {"logs:a-app": task}
    assert followers.readers[A] is reader
    source.release(A)  # the read ends STOPPED, but the container started again: read on
    assert await source.next_start() == A
    assert source.reads == [A, A] and not task.done()
    source.release(A)
    await finished(task)
    assert source.reads == [A, A]
    assert followers.positions[A] == {"stdout": Position(ts(2), 1)}


async def test_follow_after_the_reader_ended_starts_a_new_one() -> None:
    followers, source, _ = make()
    followers.follow(meta(A))
    await source.next_start()
    first = reader_tasks()["logs:a-app"]
    source.release(A)
    await finished(first)
    followers.follow(meta(A))  # restarted: read on from the position kept
    await source.next_start()
    second = reader_tasks()["logs:a-app"]
    assert second is not first and followers.followed == 1
    source.release(A)
    await finished(second)
    assert followers.positions[A] == {"stdout": Position(ts(2), 1)}


async def test_the_container_filter_excludes() -> None:
    excluded = ContainerFilter.model_validate({"exclude": {"image": ["^internal/"]}})
    followers, source, sent = make(excluded)
    followers.follow(meta(A, image="internal/agent"))
    followers.follow(meta(B))
    assert await source.next_start() == B
    assert set(followers.readers) == {B} and followers.followed == 1
    assert A not in followers.inventory.containers and A not in followers.positions
    assert set(reader_tasks()) == {"logs:b-app"}
    source.release(B)
    await finished(reader_tasks()["logs:b-app"])
    assert source.reads == [B] and all(b[0].meta.id == B for b in sent)


async def test_forget_while_reading_drops_the_position_once_the_reader_is_done() -> None:
    followers, source, _ = make()
    followers.follow(meta(A))
    await source.next_start()
    task = reader_tasks()["logs:a-app"]
    followers.marks[A] = FileMark(1, 10, ts(1), {"stdout": Position(ts(1), 1)})
    followers.forget(A)  # destroy event while the reader still reads
    assert followers.positions[A] == {"stdout": Position(ts(1), 1)}
    assert A in followers.marks and A in followers.metas
    source.release(A)
    await finished(task)
    assert A not in followers.positions and A not in followers.marks
    assert A not in followers.metas


async def test_forget_without_a_reader_drops_at_once() -> None:
    followers, _, _ = make()
    followers.positions[A] = {"stdout": Position(ts(1), 1)}
    followers.positions[B] = {"stdout": Position(ts(2), 1)}
    followers.marks[A] = FileMark(1, 10, ts(1), {})
    followers.metas[A] = meta(A)
    followers.forget(A)
    assert A not in followers.positions and A not in followers.marks
    assert A not in followers.metas
    assert followers.positions == {B: {"stdout": Position(ts(2), 1)}}
    followers.forget(C)  # unknown: nothing to do


async def test_prune_drops_what_is_gone_unless_being_read() -> None:
    followers, source, _ = make()
    followers.follow(meta(C))  # being read, and missing from the listing below
    await source.next_start()
    for cid in (A, B):
        followers.positions[cid] = {"stdout": Position(ts(1), 1)}
        followers.marks[cid] = FileMark(1, 10, ts(1), {})
        followers.metas[cid] = meta(cid)
    followers.prune({A})
    assert set(followers.positions) == {A, C}
    assert set(followers.marks) == {A} and set(followers.metas) == {A, C}
    source.release(C)
    await finished(reader_tasks()["logs:c-app"])
    followers.prune({A})  # its reader is done now
    assert set(followers.positions) == {A} and set(followers.metas) == {A}


async def test_prune_drops_the_metadata_of_a_container_only_ever_excluded() -> None:
    """An excluded container's metadata is kept from its first sighting; if its destroy
    event is missed (an outage), the next listing without it drops it."""
    followers, _source, _ = make()
    followers.containers = ContainerFilter.model_validate({"exclude": {"name": ["noisy"]}})
    followers.follow(meta(B, name="/noisy"))
    assert B in followers.metas and B not in followers.readers
    followers.prune({A})
    assert B not in followers.metas


async def test_rename_updates_the_readers_meta() -> None:
    followers, source, _ = make()
    followers.follow(meta(A))
    await source.next_start()
    reader = followers.readers[A]
    renamed = meta(A, name="/renamed")
    followers.rename(A, renamed)
    assert followers.metas[A] is renamed
    assert reader.meta is renamed and reader.decoder.meta is renamed  # type: ignore[union-attr]
    followers.follow(meta(A))  # a later start event's own meta does not undo the rename
    assert followers.metas[A] is renamed
    source.release(A)
    assert await source.next_start() == A
    source.release(A)
    await finished(reader_tasks()["logs:a-app"])
    followers.rename(B, meta(B, name="/other"))  # not read: only the meta is kept
    assert followers.metas[B].name == "other" and B not in followers.readers


async def test_close_cancels_and_awaits_every_reader() -> None:
    followers, source, _ = make()
    for cid in (A, B, C):
        followers.follow(meta(cid))
    for _ in range(3):
        await source.next_start()
    tasks = reader_tasks()
    assert len(tasks) == 3
    with capture_logs() as logs:
        async with asyncio.timeout(1):  # no task of its own: close() itself must await them
            await followers.close()
    assert all(t.done() and t.cancelled() for t in tasks.values())
    assert reader_tasks() == {}
    assert followers.followed == 0 and followers.readers == {}
    assert "log_reader_crashed" not in [e["event"] for e in logs]
    followers.follow(meta(A))  # after close: ignored
    assert reader_tasks() == {} and followers.followed == 0
    # What was read before the close stays, for the last checkpoint.
    assert set(followers.positions) == {A, B, C}


async def test_close_with_nothing_followed() -> None:
    followers, _, _ = make()
    async with asyncio.timeout(1):
        await followers.close()
    assert followers.closed and reader_tasks() == {}


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("stream")])
async def test_a_crashing_reader_is_logged_and_removed(error: Exception) -> None:
    followers, source, _ = make()
    source.crash[A] = error
    with capture_logs() as logs:
        followers.follow(meta(A))
        await finished(reader_tasks()["logs:a-app"])
    crashed = [e for e in logs if e["event"] == "log_reader_crashed"]
    assert crashed == [
        {"event": "log_reader_crashed", "log_level": "error", "id": A[:12], "error": repr(error)}
    ]
    assert followers.followed == 0 and A not in followers.readers
    followers.follow(meta(A))  # the next start event reads it again
    assert await source.next_start() == A
    source.release(A)
    await finished(reader_tasks()["logs:a-app"])


async def test_a_crashed_reader_of_a_destroyed_container_drops_its_position() -> None:
    followers, source, _ = make()
    followers.follow(meta(A))
    await source.next_start()
    task = reader_tasks()["logs:a-app"]
    followers.forget(A)
    source.crash[A] = RuntimeError("boom")
    followers.follow(meta(A))  # rerun: the next read crashes
    source.release(A)
    with capture_logs() as logs:
        await finished(task)
    assert "log_reader_crashed" in [e["event"] for e in logs]
    assert A not in followers.positions and A not in followers.metas
