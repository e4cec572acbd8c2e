"""One exporter's owner: its queue, its optional disk buffer, its workers, its counters
and what it has acknowledged (the checkpoint is built from these).

Each worker retries a failed batch with the retry policy's back-off: batches are never
dropped silently, and every drop is counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import operator
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from agent.delivery.queue import RecordQueue
from agent.positions import FileMark, Position, advance
from agent.record import Record
from agent.retry import Backoff, Retry
from exporters.base import Exporter, ExporterConfig

if TYPE_CHECKING:
    from agent.delivery.buffer import DiskBuffer  # imported only with a disk buffer

log = structlog.get_logger("agent.delivery")

_meta_of = operator.attrgetter("meta")
_stream_of = operator.attrgetter("stream")

# A worker joins queued batches up to this size per send: large enough that a write or a
# request per send is cheap per line, small enough that the batch being encoded (and its
# output) stays around a megabyte.
COALESCE_RECORDS = 2048


def _count(exporter: Exporter, attr: str) -> int:
    """A counter the exporter may keep itself (0 when it keeps none)."""
    value = getattr(exporter, attr, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


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
        self._current: list[Record] | None = None  # that batch
        self._free = asyncio.Event()  # set while no batch is being sent
        self._free.set()
        self._hurry = asyncio.Event()  # ends a linger: a full batch is queued, or a drain
        self._draining = 0  # drains under way: no linger meanwhile
        self.received = 0
        self.exported = 0  # records delivered: accepted by the exporter, not dead-lettered
        self.acknowledged = 0  # records accepted (sent, or appended to the disk buffer)
        self.dead_lettered = 0  # records of accepted batches the exporter dead-lettered
        self.dropped: collections.Counter[str] = collections.Counter()
        self.failures = 0
        self.worker_error = ""  # a worker died of this and waits to start again
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

    def takes(self, batch: list[Record]) -> list[Record]:
        """The records of ``batch`` this exporter would send: its containers, its route."""
        return self._routed(self.wants(batch))

    def has_room(self) -> bool:
        """Whether ``put_now`` may be used: the queue has room, or drops when full."""
        return self.queue.has_room() or self.config.when_full == "drop_newest"

    def put_now(self, batch: list[Record]) -> None:
        """``put`` without waiting: only when ``has_room()`` (nothing awaited since)."""
        self.received += len(batch)
        if not self.queue.has_room():  # (drop_newest)
            self.dropped["queue_full"] += len(batch)
            return
        self._idle.clear()
        self.queue.put_nowait(batch)
        if self.queue.size >= COALESCE_RECORDS:
            self._hurry.set()

    async def put(self, batch: list[Record]) -> None:
        if self.has_room():
            self.put_now(batch)
            return
        self.received += len(batch)
        self._idle.clear()
        await self.queue.put(batch)
        if self.queue.size >= COALESCE_RECORDS:
            self._hurry.set()

    def start(self) -> None:
        if self.buffer is None:
            works = [("exporter", self._work)]
        else:
            works = [("exporter-spool", self._spool), ("exporter", self._unspool)]
        self._tasks = [
            asyncio.create_task(self._keep(work), name=f"{kind}:{self.name}")
            for kind, work in works
        ]

    async def _keep(self, work: Callable[[], Awaitable[None]]) -> None:
        """Runs a worker and starts it again, after the back-off, if it raises: a batch it
        had taken goes back to the front of the queue (nothing lost); the exporter reports
        itself unhealthy meanwhile (``worker_error``)."""
        retry = Retry(self._backoff)
        while True:
            try:
                await work()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self.worker_error = self.last_error = f"{type(exc).__name__}: {exc}"
                current, self._current = self._current, None
                if current is not None:
                    self.queue.put_front(current)
                self._in_flight = 0
                self._free.set()
                delay = retry.next_delay()
                log.error(
                    "exporter_worker_failed",
                    exporter=self.name,
                    error=self.worker_error,
                    restart_in=round(delay, 3),
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
                self.worker_error = ""

    def _ack(self, batch: list[Record]) -> None:
        self.acknowledged += len(batch)
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
        """Sends until the exporter accepts the batch, backing off between failures.

        An exporter that returns from ``send`` for records its backend refused for good
        (http) counts them itself: ``dead_lettered_records`` (written to its dead-letter
        file) and ``dead_letter_dropped_records`` (that file was at its cap). Those of this
        batch are counted as dead-lettered or dropped (``dead_letter_full``), not exported.
        """
        retry = Retry(self._backoff)
        dead_before = _count(self.exporter, "dead_lettered_records")
        lost_before = _count(self.exporter, "dead_letter_dropped_records")
        while True:
            try:
                await self.exporter.send(batch)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an exporter's failure must not end its worker
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = retry.next_delay()
                log.warning(
                    "exporter_send_failed",
                    exporter=self.name,
                    error=self.last_error,
                    records=len(batch),
                    attempt=retry.attempt,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
        attempts = retry.reset()
        if attempts:
            log.info("exporter_recovered", exporter=self.name, attempts=attempts)
        dead = max(0, _count(self.exporter, "dead_lettered_records") - dead_before)
        lost = max(0, _count(self.exporter, "dead_letter_dropped_records") - lost_before)
        dead = min(dead, len(batch))
        lost = min(lost, len(batch) - dead)
        self.dead_lettered += dead
        if lost:
            self.dropped["dead_letter_full"] += lost
        self.exported += len(batch) - dead - lost

    async def _work(self) -> None:
        while True:
            batch = await self.queue.get(COALESCE_RECORDS)
            began = time.monotonic()
            self._take(batch)
            routed = self._routed(batch)
            if routed:
                await self._send(routed)
            self._ack(batch)  # the records the route leaves out are done with too
            self._done_with(batch)
            if len(batch) < COALESCE_RECORDS:
                await self._linger(began)

    async def _linger(self, began: float) -> None:
        """Waits until ``began`` + the exporter's ``linger_seconds`` unless a full batch is
        queued or a drain (shutdown, reload) hurries it: while records come slowly, one
        send per linger carries everything queued meanwhile."""
        left = began + self.exporter.linger_seconds - time.monotonic()
        if left <= 0 or self._draining or self.queue.size >= COALESCE_RECORDS:
            return
        hurry = self._hurry
        hurry.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):
                await hurry.wait()

    def _routed(self, batch: list[Record]) -> list[Record]:
        """The records of ``batch`` the exporter's route takes (by kind, stream, level)."""
        route = self.config.route
        if route.everything:
            return batch
        return [r for r in batch if route.accepts(r)]

    async def _spool(self) -> None:
        """Memory queue → disk buffer; a batch on disk counts as accepted. An append that
        fails (a full disk) left the buffer as it was: it is retried with back-off."""
        assert self.buffer is not None
        while True:
            batch = await self.queue.get(COALESCE_RECORDS)
            self._take(batch)
            routed = self._routed(batch)
            if routed:
                await self._retrying("buffer_append_failed", self.buffer.append, routed)
            self._ack(batch)
            self._done_with(batch)

    async def _unspool(self) -> None:
        """Disk buffer → exporter, in order; the cursor moves once a batch is accepted."""
        assert self.buffer is not None
        buffer = self.buffer
        while True:
            records, cursor = await self._retrying(
                "buffer_read_failed", buffer.read, COALESCE_RECORDS
            )
            if records:
                await self._send(records)
            await self._retrying("buffer_commit_failed", buffer.commit, cursor)

    async def _retrying(self, event: str, call: Any, *args: Any) -> Any:
        """``await call(*args)``, retried with back-off while it raises OSError."""
        retry = Retry(self._backoff)
        while True:
            try:
                return await call(*args)
            except OSError as exc:
                self.failures += 1
                self.last_error = f"{event}: {exc.strerror or exc}"
                delay = retry.next_delay()
                if retry.attempt & (retry.attempt - 1) == 0:  # 1, 2, 4, …
                    log.error(
                        event,
                        exporter=self.name,
                        error=str(exc),
                        failures=retry.attempt,
                        retry_in=round(delay, 3),
                    )
                await asyncio.sleep(delay)

    def _take(self, batch: list[Record]) -> None:
        self._current = batch
        self._in_flight = len(batch)
        self._free.clear()

    def _done_with(self, batch: list[Record]) -> None:
        self._current = None
        self._in_flight = 0
        self._free.set()
        if not self.queue.size:
            self._idle.set()

    @property
    def buffered(self) -> int:
        return self.buffer.records if self.buffer is not None else 0

    async def drain(self, deadline: float) -> None:
        """Waits until the queue (and buffer) are empty and flushed, or the deadline passes.

        With a disk buffer, what is still on disk at the deadline stays there for the next
        start: it is neither lost nor counted as dropped.
        """
        timeout = max(0.0, deadline - time.monotonic())
        self._draining += 1
        self._hurry.set()
        try:
            async with asyncio.timeout(timeout):
                while self.queue.size or not self._idle.is_set():
                    await self._idle.wait()
                if self.buffer is not None:
                    await self.buffer.wait_empty()
                await self.exporter.flush()
        except TimeoutError:
            pass
        finally:
            self._draining -= 1

    async def stop(self, reason: str = "shutdown") -> None:
        """Cancels the workers; what is still queued in memory is counted as dropped
        (``reason``: ``shutdown``, or ``removed`` by a reload)."""
        await self._cancel_workers()
        lost = self.queue.size + self._in_flight
        if lost:
            self.dropped[reason] += lost
            log.error("exporter_drain_incomplete", exporter=self.name, lost=lost, reason=reason)
        if self.buffer is not None:
            if self.buffer.records:
                log.info("buffer_kept", exporter=self.name, records=self.buffer.records)
            await asyncio.to_thread(self.buffer.close)
        await self._close_exporter()

    async def retire(self, deadline: float) -> None:
        """Hands this exporter's queue (and disk buffer) over to a successor (a reload):
        stops the workers once the batch being sent is done, or at ``deadline``, when an
        unsent batch goes back to the front of the queue; then closes the exporter. The
        queue and the buffer stay open for the successor."""
        timeout = max(0.0, deadline - time.monotonic())
        self._draining += 1  # (for good: the workers are cancelled next)
        self._hurry.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._free.wait()
        current = self._current
        await self._cancel_workers()
        if current is not None and self.buffer is None:
            self.queue.put_front(current)
            log.warning(
                "exporter_batch_requeued",
                exporter=self.name,
                records=len(current),
                reason="the exporter was still sending it when a reload replaced it",
            )
        self._current = None
        self._in_flight = 0
        await self._close_exporter()

    async def _cancel_workers(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _close_exporter(self) -> None:
        try:
            await self.exporter.close()
        except Exception as exc:  # closing must not stop the others from closing
            log.warning("exporter_close_failed", exporter=self.name, error=str(exc))
