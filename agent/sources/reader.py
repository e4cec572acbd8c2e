"""One container's reader task: picks the container's source, reads it to the end of
the container's output, re-reads after a reconnect or restart, and books each batch.

A reader never gives up on a container that still exists: a failed read (the engine
answering 5xx, a cut stream, no descriptor left) is retried with the retry policy's
capped, jittered back-off for as long as inspect does not say the container is gone, and
resumes from the delivered position (nothing lost, nothing twice). A read that made
progress before it failed starts the back-off again from its first step. Discovery wakes
a reader that waits in back-off when the engine comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
from typing import TYPE_CHECKING, Any

import structlog

from agent.engine.client import EngineError, NotFound
from agent.positions import advance
from agent.processing.chain import ChainDriver
from agent.record import ContainerMeta, Record
from agent.retry import Retry
from agent.sources.base import Emit, LogSource, StreamEnd
from agent.sources.lines import LineAssembler

if TYPE_CHECKING:
    from agent.sources.followers import LogFollowers

_stream_of = operator.attrgetter("stream")
_message_of = operator.attrgetter("message")

log = structlog.get_logger("agent.sources")


class ContainerReader:
    """Reads one container's logs until its output ends, re-reading when asked."""

    def __init__(
        self,
        meta: ContainerMeta,
        source: LogSource,
        followers: LogFollowers,
    ) -> None:
        self.meta = meta
        self.source = source
        self.followers = followers
        self.decoder: LineAssembler | None = None
        self.rerun = False  # a start event arrived while this reader was finishing
        self.lines = 0
        self.lost = 0  # lines the source knows it could not read (json-file rotation)
        self.bytes = 0
        self.last_timestamp: str | None = None
        self.failures = 0  # reads that failed (and were retried)
        self.last_error = ""  # of the last failed read, until a read works again
        self.wake = asyncio.Event()  # set to end a back-off early (the engine is back)
        self.chain: ChainDriver | None = None  # the container's processing, if it has any

    def set_meta(self, meta: ContainerMeta) -> None:
        self.meta = meta
        if self.decoder is not None:
            self.decoder.meta = meta

    async def _emit(self, batch: list[Record]) -> None:
        await self.followers.pipeline_send(batch)
        self._booked(batch)

    def inspected(self, answer: dict[str, Any]) -> None:
        """An inspect answer the source asked for (the files source, at each read): the
        inventory takes its facts (pid, start, limits), so that the stats collector need
        not ask the engine for them again."""
        self.followers.inventory.apply_inspect(self.meta.id, answer)

    def emit_ready(self) -> bool:
        """Whether ``emit_now`` may take a batch: the batches go straight to the pipeline
        (no processing chain), and it has room for them."""
        now = self.followers.queue_now
        return self.chain is None and now is not None and now.has_room()

    def emit_now(self, batch: list[Record]) -> None:
        """``_emit`` without an await, for a source that reads where it cannot wait (the
        files source reads a quiet container's new line in the inotify handler): only
        right after ``emit_ready`` said yes, nothing awaited since."""
        now = self.followers.queue_now
        assert now is not None
        now.put_now(batch)
        self._booked(batch)

    def _booked(self, batch: list[Record]) -> None:
        # Past this point the batch is queued: advance the resume position (unless the
        # chain's driver sets it itself right after, with no await between, to every line
        # the chain took in: then this advance would be overwritten).
        chain = self.chain
        if chain is None or not chain.sets_positions:
            advance(self.followers.positions.setdefault(self.meta.id, {}), batch)
        self.lines += len(batch)
        self.last_timestamp = batch[-1].timestamp
        info = self.followers.inventory.containers.get(self.meta.id)
        if info is None:
            return
        if len(batch) == 1:  # a quiet container's batch: no scans
            record = batch[0]
            stream = "stderr" if record.stream == "stderr" else "stdout"
            info.log_lines[stream] += 1
            info.log_bytes[stream] += len(record.message or "")
            info.last_log_timestamp = self.last_timestamp
            return
        # Counted per batch at C speed; only a batch with stderr lines needs a loop.
        err = list(map(_stream_of, batch)).count("stderr")
        chars = sum(map(len, map(_message_of, batch)))
        err_chars = sum(len(r.message or "") for r in batch if r.stream == "stderr") if err else 0
        info.log_lines["stdout"] += len(batch) - err
        info.log_lines["stderr"] += err
        info.log_bytes["stdout"] += chars - err_chars
        info.log_bytes["stderr"] += err_chars
        info.last_log_timestamp = self.last_timestamp

    async def run(self) -> None:
        processing = self.followers.processing
        if processing is not None:
            if not processing.enabled(self.meta):
                log.info("container_logs_disabled", container=self.meta.name, id=self.meta.id[:12])
                return
            positions = self.followers.positions.setdefault(self.meta.id, {})
            self.chain = processing.driver(self.meta, self._emit, positions)
        if self.chain is None:
            await self._run(self._emit)  # no processing: batches go straight on
            return
        try:
            await self._run(self.chain.emit)
        finally:
            await self.chain.close()  # what it holds goes (the drain bounds the wait)

    async def _run(self, emit: Emit) -> None:
        if self.followers.choose_source is not None:
            self.source = await self.followers.choose_source(self.meta)
            self.followers.inventory.get(self.meta).log_source = self.source.name
        log.info(
            "container_followed",
            container=self.meta.name,
            id=self.meta.id[:12],
            source=self.source.name,
        )
        positions = self.followers.positions.setdefault(self.meta.id, {})
        retry = Retry(self.followers.backoff)
        while True:
            self.rerun = False
            before = self.lines
            try:
                end = await self.source.read(self, positions, emit)
            except NotFound as exc:
                self._gone(str(exc))
                return
            except EngineError as exc:
                if self.lines > before:
                    retry.reset()  # it made progress: a new cut, not the same failure
                if not await self._retry(retry, exc):
                    return
                continue
            self.last_error = ""
            if retry.attempt:
                log.info(
                    "log_stream_recovered",
                    container=self.meta.name,
                    id=self.meta.id[:12],
                    failures=retry.reset(),
                )
            if end is StreamEnd.STOPPED and self.chain is not None:
                await self.chain.finish()  # the output ended: held lines go now
            if end is StreamEnd.STOPPED and not self.rerun:
                log.debug("log_stream_ended", container=self.meta.name, lines=self.lines)
                return

    def _gone(self, error: str) -> None:
        """The container is gone. An auto-removed container that exits before its logs
        are asked for is refused by the engine (409): say so, since its lines are lost."""
        if self.lines:
            log.info("container_gone", container=self.meta.name, id=self.meta.id[:12])
            return
        self.followers.unavailable += 1
        log.warning(
            "container_logs_unavailable",
            container=self.meta.name,
            id=self.meta.id[:12],
            error=error,
            reason="the container was removed before its logs could be read",
        )

    async def _retry(self, retry: Retry, exc: EngineError) -> bool:
        """After a failed read: waits the back-off and returns True to read again, unless
        the container is gone or its logs cannot be read at all (False)."""
        self.failures += 1
        self.last_error = str(exc)
        info = self.followers.inventory.containers.get(self.meta.id)
        if info is not None:
            info.log_read_failures += 1
        if exc.status == 501:  # "configured logging driver does not support reading"
            log.warning(
                "container_logs_unreadable",
                container=self.meta.name,
                id=self.meta.id[:12],
                error=str(exc),
            )
            return False
        self.wake.clear()  # before the inspect: a follow() made meanwhile still wakes it
        exists = await self._exists()
        if exists is False:
            self._gone(str(exc))
            return False
        delay = retry.next_delay()
        n = retry.attempt
        if n & (n - 1) == 0:  # failures 1, 2, 4, 8, …: the log stays readable
            log.warning(
                "log_stream_failed",
                container=self.meta.name,
                id=self.meta.id[:12],
                error=str(exc),
                failures=n,
                retry_in=round(delay, 3),
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.wake.wait()
        return True

    async def _exists(self) -> bool | None:
        """Whether the engine still has the container (None: it cannot say now)."""
        try:
            await self.followers.engine.inspect(self.meta.id)
        except NotFound:
            return False
        except EngineError:
            return None
        return True
