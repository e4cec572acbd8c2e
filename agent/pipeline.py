"""Fan-out of record batches to exporters, one bounded queue and one worker per exporter.

A reader's ``send`` returns once every exporter that wants the batch has queued it (or
dropped it, under ``drop_newest``). A slow exporter only slows the readers whose records
it holds, and only once its queue is full. Each worker retries a failed batch with capped,
jittered back-off: batches are never dropped silently, and every drop is counted.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import operator
import time
from collections.abc import Sequence
from typing import Any

import structlog

from agent.buffer import DiskBuffer
from agent.logstream import FileMark, Position, advance
from agent.record import Record
from agent.retry import Backoff
from exporters.base import Exporter, ExporterConfig

log = structlog.get_logger("agent.pipeline")

_meta_of = operator.attrgetter("meta")
_stream_of = operator.attrgetter("stream")

# A worker joins queued batches up to this size per send: large enough that a write or a
# request per send is cheap per line, small enough that the batch being encoded (and its
# output) stays around a megabyte.
_COALESCE_RECORDS = 2048


class RecordQueue:
    """A FIFO of batches bounded by the number of records it holds, not of batches.

    One consumer (the exporter's worker), any number of producers (the readers).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.size = 0
        self._batches: collections.deque[list[Record]] = collections.deque()
        self._not_empty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def has_room(self) -> bool:
        # A batch larger than the whole queue is still let in when the queue has room.
        return self.size < self.capacity

    def put_nowait(self, batch: list[Record]) -> None:
        self._batches.append(batch)
        self.size += len(batch)
        self._not_empty.set()
        if not self.has_room():
            self._room.clear()

    async def put(self, batch: list[Record]) -> None:
        """Waits for room, then queues. Cancelled while waiting, it still queues the
        batch (over capacity): a shutdown must not lose lines already read."""
        while not self.has_room():
            try:
                await self._room.wait()
            except asyncio.CancelledError:
                self.put_nowait(batch)
                raise
        self.put_nowait(batch)

    async def get(self, limit: int) -> list[Record]:
        """Takes at least one batch, joining queued ones up to ``limit`` records."""
        while not self._batches:
            await self._not_empty.wait()
        out = self._batches.popleft()
        while self._batches and len(out) + len(self._batches[0]) <= limit:
            out = out + self._batches.popleft()
        self.size -= len(out)
        if not self._batches:
            self._not_empty.clear()
        if self.has_room():
            self._room.set()
        return out

    def __len__(self) -> int:
        return len(self._batches)


class ExporterRunner:
    """Owns one exporter: its queue, its optional disk buffer, its workers, its counters.

    ``acked`` holds, per container and stream, the position of the last log line this
    exporter accepted (sent, or appended to its disk buffer), and ``marks`` where those
    lines end in a file-read container's log; the checkpoint is the lowest of these over
    the exporters that must not lose records (``durable``).
    """

    def __init__(
        self,
        exporter: Exporter,
        config: ExporterConfig,
        backoff: Backoff,
        buffer: DiskBuffer | None = None,
    ) -> None:
        self.exporter = exporter
        self.config = config
        self.name = exporter.name
        self.queue = RecordQueue(config.queue_records)
        self.buffer = buffer
        self._backoff = backoff
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0  # records taken from the memory queue and not yet accepted
        self.received = 0
        self.exported = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.failures = 0
        self.last_error = ""
        self.acked: dict[str, dict[str, Position]] = {}
        self.marks: dict[str, FileMark] = {}
        self.durable = config.when_full == "block" and (
            buffer is None or buffer.when_full == "block"
        )

    def wants(self, batch: list[Record]) -> list[Record]:
        flt = self.config.containers
        if flt.everything:
            return batch
        return [r for r in batch if flt.accepts(r.meta)]

    async def put(self, batch: list[Record]) -> None:
        self.received += len(batch)
        if self.config.when_full == "drop_newest" and not self.queue.has_room():
            self.dropped["queue_full"] += len(batch)
            return
        self._idle.clear()
        await self.queue.put(batch)

    def start(self) -> None:
        if self.buffer is None:
            self._tasks = [asyncio.create_task(self._work(), name=f"exporter:{self.name}")]
        else:
            self._tasks = [
                asyncio.create_task(self._spool(), name=f"exporter-spool:{self.name}"),
                asyncio.create_task(self._unspool(), name=f"exporter:{self.name}"),
            ]

    def _ack(self, batch: list[Record]) -> None:
        # A batch joins the readers' batches whole: runs of one container's records, each
        # ending where one of its reader's batches ended. Grouped at C speed.
        for meta, group in itertools.groupby(batch, _meta_of):
            records = list(group)
            last = records[-1]
            if last.kind != "log" and not any(map(_stream_of, records)):
                continue  # events or stats only
            cid = meta.id
            positions = self.acked.get(cid)
            if positions is None:
                positions = self.acked[cid] = {}
            advance(positions, records)
            if last.mark is not None:
                self.marks[cid] = FileMark.after(last, positions)

    async def _send(self, batch: list[Record]) -> None:
        """Sends until the exporter accepts the batch, backing off between failures."""
        attempt = 0
        while True:
            try:
                await self.exporter.send(batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an exporter's failure must not end its worker
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.delay(attempt)
                attempt += 1
                log.warning(
                    "exporter_send_failed",
                    exporter=self.name,
                    error=self.last_error,
                    records=len(batch),
                    attempt=attempt,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
        if attempt:
            log.info("exporter_recovered", exporter=self.name, attempts=attempt)
        self.exported += len(batch)

    async def _work(self) -> None:
        while True:
            batch = await self.queue.get(_COALESCE_RECORDS)
            self._in_flight = len(batch)
            await self._send(batch)
            self._ack(batch)
            self._in_flight = 0
            if not self.queue.size:
                self._idle.set()

    async def _spool(self) -> None:
        """Memory queue → disk buffer; a batch on disk counts as accepted."""
        assert self.buffer is not None
        while True:
            batch = await self.queue.get(_COALESCE_RECORDS)
            self._in_flight = len(batch)
            await self.buffer.append(batch)
            self._ack(batch)
            self._in_flight = 0
            if not self.queue.size:
                self._idle.set()

    async def _unspool(self) -> None:
        """Disk buffer → exporter, in order; the cursor moves once a batch is accepted."""
        assert self.buffer is not None
        while True:
            records, cursor = await self.buffer.read(_COALESCE_RECORDS)
            if records:
                await self._send(records)
            await self.buffer.commit(cursor)

    @property
    def buffered(self) -> int:
        return self.buffer.records if self.buffer is not None else 0

    async def drain(self, deadline: float) -> None:
        """Waits until the queue (and buffer) are empty and flushed, or the deadline passes.

        With a disk buffer, what is still on disk at the deadline stays there for the next
        start: it is neither lost nor counted as dropped.
        """
        timeout = max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                while self.queue.size or not self._idle.is_set():
                    await self._idle.wait()
                if self.buffer is not None:
                    await self.buffer.wait_empty()
                await self.exporter.flush()
        except TimeoutError:
            pass

    async def stop(self) -> None:
        """Cancels the workers; what is still queued in memory is counted as dropped."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        lost = self.queue.size + self._in_flight
        if lost:
            self.dropped["shutdown"] += lost
            log.error("exporter_drain_incomplete", exporter=self.name, lost=lost)
        if self.buffer is not None:
            if self.buffer.records:
                log.info("buffer_kept", exporter=self.name, records=self.buffer.records)
            await asyncio.to_thread(self.buffer.close)
        try:
            await self.exporter.close()
        except Exception as exc:  # closing must not stop the others from closing
            log.warning("exporter_close_failed", exporter=self.name, error=str(exc))


class Pipeline:
    """Readers call ``send``; the pipeline hands each batch to every interested exporter."""

    def __init__(self, runners: Sequence[ExporterRunner]) -> None:
        self.runners = list(runners)
        self._takers = [r for r in self.runners if r.exporter.accepts_records]
        self.accepting = True

    async def start(self) -> None:
        for runner in self.runners:
            if runner.buffer is not None:
                await asyncio.to_thread(runner.buffer.open)
            await runner.exporter.start()
        for runner in self.runners:
            runner.start()

    async def send(self, batch: list[Record]) -> None:
        if not batch:
            return
        waits = []
        for runner in self._takers:
            part = runner.wants(batch)
            if not part:
                continue
            if runner.queue.has_room() or runner.config.when_full == "drop_newest":
                await runner.put(part)  # returns at once
            else:
                waits.append(runner.put(part))
        if waits:
            # Queue where there is room first; then wait for every full queue together.
            await asyncio.gather(*waits)

    def delivered(
        self, metas: dict[str, Any]
    ) -> tuple[dict[str, dict[str, Position]], dict[str, FileMark]] | None:
        """Per container and stream, the lowest position every durable exporter that takes
        the container has accepted, and the earliest of their file marks; None when no
        exporter is durable (then what was read and queued is the checkpoint). A stream
        (or mark) some durable exporter has not accepted anything of yet is left out (its
        previous checkpoint stands)."""
        durable = [r for r in self._takers if r.durable]
        if not durable:
            return None
        out: dict[str, dict[str, Position]] = {}
        marks: dict[str, FileMark] = {}
        for cid in set().union(*(r.acked for r in durable)):
            meta = metas.get(cid)
            holders = [
                r
                for r in durable
                if meta is None
                or r.config.containers.everything
                or r.config.containers.accepts(meta)
            ]
            per: dict[str, Position] = {}
            for stream in ("stdout", "stderr"):
                best: Position | None = None
                for r in holders:
                    pos = r.acked.get(cid, {}).get(stream)
                    if pos is None:
                        best = None
                        break
                    if best is None or (pos.timestamp, pos.count) < (best.timestamp, best.count):
                        best = pos
                if best is not None:
                    per[stream] = best
            if per:
                out[cid] = per
            held = [r.marks.get(cid) for r in holders]
            if held and all(m is not None for m in held):
                marks[cid] = min(held, key=FileMark.key)  # type: ignore[arg-type]
        return out, marks

    def forget(self, keep: set[str]) -> None:
        """Drops acknowledgement state of containers no longer known."""
        for r in self.runners:
            for cid in [c for c in r.acked if c not in keep]:
                del r.acked[cid]
            for cid in [c for c in r.marks if c not in keep]:
                del r.marks[cid]

    async def close(self, drain_seconds: float) -> None:
        """Drains every exporter within ``drain_seconds`` overall, then closes them."""
        self.accepting = False
        deadline = time.monotonic() + drain_seconds
        await asyncio.gather(*(r.drain(deadline) for r in self.runners))
        for runner in self.runners:
            await runner.stop()
