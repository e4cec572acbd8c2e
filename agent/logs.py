"""Per-container log readers and the sources they read from.

A ``LogSource`` reads one container's output into record batches until the stream ends.
``ApiLogSource`` uses the engine's logs API; a later source tails the json-file driver's
files from disk and produces identical records. ``LogFollowers`` owns one reader task per
followed container and each container's delivered position, so that a reader that is
restarted (engine reconnect, container restart) resumes where it left off.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import operator
from collections.abc import Awaitable, Callable

import structlog

from agent.docker import Engine, EngineError, NotFound
from agent.filters import ContainerFilter
from agent.inventory import Inventory
from agent.logstream import FileMark, LogDecoder, Position, advance
from agent.record import ContainerMeta, Record, timestamp_to_unix

_stream_of = operator.attrgetter("stream")
_message_of = operator.attrgetter("message")

log = structlog.get_logger("agent.logs")

Emit = Callable[[list[Record]], Awaitable[None]]


class StreamEnd(enum.Enum):
    STOPPED = "stopped"  # the container's output ended for good
    REOPEN = "reopen"  # the stream ended but the container runs: read again from the position


class LogSource(abc.ABC):
    """Reads one container's logs from a position. One call reads one stream to its end."""

    name: str

    @abc.abstractmethod
    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        """Emits batches of records after ``positions`` until the stream ends.

        Raises ``NotFound`` when the container is gone and ``EngineError`` when the engine
        cannot be reached; ``positions`` must be advanced only through ``emit``.
        """


class ApiLogSource(LogSource):
    """``GET /containers/{id}/logs?follow=1&timestamps=1`` decoded by ``LogDecoder``."""

    name = "api"

    def __init__(self, engine: Engine, max_message_bytes: int) -> None:
        self.engine = engine
        self.max_message_bytes = max_message_bytes

    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        await self._stream(reader, positions, emit, follow=True)
        # The engine ends a followed stream when the container stops, or when it restarts.
        try:
            info = await self.engine.inspect(reader.meta.id)
            running = bool((info.get("State") or {}).get("Running"))
        except NotFound:
            running = False
        if running:
            return StreamEnd.REOPEN
        # Engines (seen with 20.10) sometimes end a followed stream at the container's exit
        # before its last lines; the log still holds them. Read once more, without follow,
        # from what was delivered: the decoder skips what is already out.
        decoder = await self._stream(reader, positions, emit, follow=False)
        tail = decoder.finish()
        if tail:
            await emit(tail)
        return StreamEnd.STOPPED

    async def _stream(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit, follow: bool
    ) -> LogDecoder:
        """Reads one response to its end, from the delivered ``positions``.

        The API's ``since`` would do, but json-file answers it by decoding the whole log
        from its start: at every exit re-read, reconnect and agent restart, as much engine
        CPU as the container's whole output (measured: +0.9 s per million lines of a
        container that exits). ``tail`` reads backwards from the end, so with positions
        the log's last ``RESUME_TAIL`` lines are asked for first, and taken when they
        reach back to what was delivered (``_covers``); else the stream is closed
        before anything was decoded and opened again with ``since``.
        """
        decoder = LogDecoder(reader.meta, self.max_message_bytes, resume=positions)
        reader.decoder = decoder
        cid = reader.meta.id
        if positions and await self._read(cid, decoder, emit, follow, positions=positions):
            return decoder
        since = min((p.timestamp for p in positions.values()), default=None)
        await self._read(cid, decoder, emit, follow, since=since)
        return decoder

    async def _read(
        self,
        cid: str,
        decoder: LogDecoder,
        emit: Emit,
        follow: bool,
        since: str | None = None,
        positions: dict[str, Position] | None = None,
    ) -> bool:
        """One request, decoded to its end; with ``positions``, a ``tail`` request that
        is given up (False, nothing decoded) when its first line does not cover them."""
        async with self.engine.logs(
            cid,
            since=timestamp_to_unix(since) if since else None,
            follow=follow,
            tail=RESUME_TAIL if positions is not None else None,
        ) as stream:
            parts = await stream.read_parts()
            if positions is not None:
                head = b"".join(parts)
                while len(head) < _HEAD and (more := await stream.read_parts()):
                    parts += more
                    head = b"".join(parts)
                first = _first_stamp(head)
                if not _covers(first, positions):
                    log.debug("log_tail_short", container=decoder.meta.name, first=first)
                    return False
            while parts:
                batch = decoder.feed_parts(parts)
                if batch:
                    await emit(batch)
                parts = await stream.read_parts()
        return True


RESUME_TAIL = 1000  # lines read back from a log's end when resuming from positions
_HEAD = 8 + 30  # a frame's header and the stamp that begins its message


def _first_stamp(head: bytes) -> str | None:
    """The stamp that begins a logs response (``head`` is its first bytes), framed or
    TTY (told apart as the decoder does: a frame starts [0|1|2, 0, 0, 0])."""
    framed = len(head) >= 4 and head[0] < 3 and head[1:4] == b"\0\0\0"
    stamp = head[8:38] if framed else head[:30]
    if len(stamp) < 30 or not stamp.endswith(b"Z"):
        return None
    return stamp.decode("ascii", "replace")


def _covers(first: str | None, positions: dict[str, Position]) -> bool:
    """Whether a log's last lines, the first stamped ``first``, hold every line after
    ``positions``. Lines were delivered in log order up to the latest stamp, and stamps
    grow along the log, so they do when the first is older than the latest delivered
    one; and it must be stamped unlike every stream's last delivered line, whose run of
    equal stamps the decoder skips by count and which the cut could split."""
    if first is None:
        return False
    stamps = [p.timestamp for p in positions.values()]
    return first < max(stamps) and first not in stamps


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
        self.decoder: LogDecoder | None = None
        self.rerun = False  # a start event arrived while this reader was finishing
        self.lines = 0
        self.lost = 0  # lines the source knows it could not read (json-file rotation)
        self.bytes = 0
        self.last_timestamp: str | None = None

    def set_meta(self, meta: ContainerMeta) -> None:
        self.meta = meta
        if self.decoder is not None:
            self.decoder.meta = meta

    async def _emit(self, batch: list[Record]) -> None:
        await self.followers.pipeline_send(batch)
        # Past this point the batch is queued: advance the resume position.
        advance(self.followers.positions.setdefault(self.meta.id, {}), batch)
        self.lines += len(batch)
        self.last_timestamp = batch[-1].timestamp
        info = self.followers.inventory.containers.get(self.meta.id)
        if info is not None:
            # Counted per batch at C speed; only a batch with stderr lines needs a loop.
            err = list(map(_stream_of, batch)).count("stderr")
            chars = sum(map(len, map(_message_of, batch)))
            err_chars = (
                sum(len(r.message) for r in batch if r.stream == "stderr")  # type: ignore[arg-type]
                if err
                else 0
            )
            info.log_lines["stdout"] += len(batch) - err
            info.log_lines["stderr"] += err
            info.log_bytes["stdout"] += chars - err_chars
            info.log_bytes["stderr"] += err_chars
            info.last_log_timestamp = self.last_timestamp

    async def run(self) -> None:
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
        attempt = 0
        while True:
            self.rerun = False
            try:
                end = await self.source.read(self, positions, self._emit)
                attempt = 0
            except NotFound as exc:
                # An auto-removed container that exits before its logs are asked for is
                # refused by the engine (409): say so, since its lines are lost.
                event = "container_gone" if self.lines else "container_logs_unavailable"
                log.info(event, container=self.meta.name, id=self.meta.id[:12], error=str(exc))
                return
            except EngineError as exc:
                # Discovery notices the lost engine and follows the container again once
                # it reconnects; a reader on its own only retries a few times.
                attempt += 1
                if attempt > 3:
                    log.warning("log_stream_failed", container=self.meta.name, error=str(exc))
                    return
                await asyncio.sleep(self.followers.backoff_delay(attempt))
                continue
            if end is StreamEnd.STOPPED and not self.rerun:
                log.debug("log_stream_ended", container=self.meta.name, lines=self.lines)
                return


class LogFollowers:
    """Owns every container reader task and every container's delivered position."""

    def __init__(
        self,
        engine: Engine,
        source: LogSource,
        pipeline_send: Emit,
        containers: ContainerFilter,
        host: str,
        backoff_delay: Callable[[int], float],
        choose_source: Callable[[ContainerMeta], Awaitable[LogSource]] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source  # the default; ``choose_source`` picks one per container
        self.choose_source = choose_source
        self.pipeline_send = pipeline_send
        self.containers = containers
        self.host = host
        self.backoff_delay = backoff_delay
        self.positions: dict[str, dict[str, Position]] = {}
        # File-read containers: where the lines read so far end in the log file (kept by
        # the files source; seeded from the checkpoint).
        self.marks: dict[str, FileMark] = {}
        self.inventory = Inventory()  # the runtime shares its own
        self.metas: dict[str, ContainerMeta] = {}
        self.readers: dict[str, ContainerReader] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._destroyed: set[str] = set()
        self.closed = False

    @property
    def followed(self) -> int:
        return len(self._tasks)

    def follow(self, meta: ContainerMeta) -> None:
        """Starts reading a container unless it is being read already; never blocks.

        No inspect first: the metadata comes from the listing or the start event, and the
        stream's framing tells TTY apart, so that a short-lived container's logs are asked
        for as early as possible (an auto-removed container's logs vanish soon after exit).
        """
        if self.closed:
            return
        cid = meta.id
        self.metas.setdefault(cid, meta)
        reader = self.readers.get(cid)
        if reader is not None:
            reader.rerun = True
            return
        if not self.containers.accepts(meta):
            log.debug("container_excluded", container=meta.name)
            return
        reader = ContainerReader(self.metas[cid], self.source, self)
        self.readers[cid] = reader
        self.inventory.get(self.metas[cid]).log_source = self.source.name
        task = asyncio.create_task(reader.run(), name=f"logs:{meta.name}")
        self._tasks[cid] = task
        task.add_done_callback(lambda t, cid=cid: self._done(cid, t))

    def _done(self, container_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(container_id, None)
        self.readers.pop(container_id, None)
        if container_id in self._destroyed:
            self._destroyed.discard(container_id)
            self.forget(container_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("log_reader_crashed", id=container_id[:12], error=repr(task.exception()))

    def rename(self, container_id: str, meta: ContainerMeta) -> None:
        self.metas[container_id] = meta
        reader = self.readers.get(container_id)
        if reader is not None:
            reader.set_meta(meta)

    def forget(self, container_id: str) -> None:
        """The container was destroyed: drop its position once its reader is done."""
        if container_id in self._tasks:
            self._destroyed.add(container_id)
            return
        self.positions.pop(container_id, None)
        self.marks.pop(container_id, None)
        self.metas.pop(container_id, None)

    def prune(self, existing: set[str]) -> None:
        for cid in list(self.positions):
            if cid not in existing and cid not in self._tasks:
                self.positions.pop(cid, None)
                self.marks.pop(cid, None)
                self.metas.pop(cid, None)

    async def close(self) -> None:
        """Stops every reader; batches they had read are still queued (see RecordQueue)."""
        self.closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
