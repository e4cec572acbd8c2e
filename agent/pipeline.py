"""Fan-out of record batches to exporters, one bounded queue and one worker per exporter.

A reader's ``send`` returns once every exporter that wants the batch has queued it (or
dropped it, under ``drop_newest``). A slow exporter only slows the readers whose records
it holds, and only once its queue is full. Each worker retries a failed batch with capped,
jittered back-off: batches are never dropped silently, and every drop is counted.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence

import structlog

from agent.record import Record
from agent.retry import Backoff
from exporters.base import Exporter, ExporterConfig

log = structlog.get_logger("agent.pipeline")

_COALESCE_RECORDS = 8192  # a worker joins queued batches up to this size per send


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
    """Owns one exporter: its queue, its worker task, its counters."""

    def __init__(self, exporter: Exporter, config: ExporterConfig, backoff: Backoff) -> None:
        self.exporter = exporter
        self.config = config
        self.name = exporter.name
        self.queue = RecordQueue(config.queue_records)
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0  # records handed to the exporter and not yet confirmed
        self.received = 0
        self.exported = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.failures = 0
        self.last_error = ""

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
        self._task = asyncio.create_task(self._work(), name=f"exporter:{self.name}")

    async def _work(self) -> None:
        while True:
            batch = await self.queue.get(_COALESCE_RECORDS)
            self._in_flight = len(batch)
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
            self.exported += len(batch)
            self._in_flight = 0
            if attempt:
                log.info("exporter_recovered", exporter=self.name, attempts=attempt)
            if not self.queue.size:
                self._idle.set()

    async def drain(self, deadline: float) -> None:
        """Waits until the queue is empty and flushed, or the deadline passes."""
        timeout = max(0.0, deadline - time.monotonic())
        try:
            async with asyncio.timeout(timeout):
                while self.queue.size or not self._idle.is_set():
                    await self._idle.wait()
                await self.exporter.flush()
        except TimeoutError:
            pass

    async def stop(self) -> None:
        """Cancels the worker; what is still queued is counted as dropped and logged."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        lost = self.queue.size + self._in_flight
        if lost:
            self.dropped["shutdown"] += lost
            log.error("exporter_drain_incomplete", exporter=self.name, lost=lost)
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

    async def close(self, drain_seconds: float) -> None:
        """Drains every exporter within ``drain_seconds`` overall, then closes them."""
        self.accepting = False
        deadline = time.monotonic() + drain_seconds
        await asyncio.gather(*(r.drain(deadline) for r in self.runners))
        for runner in self.runners:
            await runner.stop()
