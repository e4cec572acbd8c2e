"""The logs-API source: ``GET /containers/{id}/logs?follow=1&timestamps=1``, decoded by
``LogDecoder``; reads from a position ask for the log's tail first."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from agent.engine.client import Engine, NotFound
from agent.positions import Position
from agent.record import timestamp_to_unix
from agent.sources.api.decoder import LogDecoder
from agent.sources.base import Emit, LogSource, StreamEnd

if TYPE_CHECKING:
    from agent.sources.reader import ContainerReader

log = structlog.get_logger("agent.sources.api")


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
        the log's last ``FIRST_TAIL`` lines are asked for first, then its last
        ``RESUME_TAIL``, each taken when it reaches back to what was delivered
        (``_covers``); else the stream is closed before anything was decoded and the next
        is asked for, ``since`` last.
        """
        decoder = LogDecoder(reader.meta, self.max_message_bytes, resume=positions)
        reader.decoder = decoder
        if positions:
            for tail in (FIRST_TAIL, RESUME_TAIL):
                if await self._read(reader, decoder, emit, follow, positions=positions, tail=tail):
                    return decoder
        since = min((p.timestamp for p in positions.values()), default=None)
        await self._read(reader, decoder, emit, follow, since=since)
        return decoder

    async def _read(
        self,
        reader: ContainerReader,
        decoder: LogDecoder,
        emit: Emit,
        follow: bool,
        since: str | None = None,
        positions: dict[str, Position] | None = None,
        tail: int | None = None,
    ) -> bool:
        """One request, decoded to its end; with ``positions``, a request of the log's last
        ``tail`` lines that is given up (False, nothing decoded) when its first line does
        not cover them.
        A followed stream's messages that arrive while the reader waits for them are
        decoded and emitted where they are received, when the reader can emit without
        waiting (``_taker``)."""
        cid = reader.meta.id
        async with self.engine.logs(
            cid,
            since=timestamp_to_unix(since) if since else None,
            follow=follow,
            tail=tail,
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
            if follow:
                stream.read_in_place(_taker(reader, decoder))
            while parts:
                batch = decoder.feed_parts(parts)
                if batch:
                    await emit(batch)
                parts = await stream.read_parts()
        return True


def _taker(reader: ContainerReader, decoder: LogDecoder) -> Callable[[list[bytes]], bool]:
    """For ``LogStream.read_in_place``: a quiet container's message, which arrives while
    its reader waits, decoded and handed to the pipeline right where it is received (no
    wake-up of the reader's task, its waits and checks) when the reader can emit without
    waiting (no processing chain, the pipeline with room); else (False) it waits for the
    reader as before."""

    def take(parts: list[bytes]) -> bool:
        if not reader.emit_ready():
            return False
        batch = decoder.feed_parts(parts)
        if batch:
            reader.emit_now(batch)
        return True

    return take


# Lines read back from a log's end when resuming from positions: a few first, enough for a
# quick restart or ``logs.start_at: now``, then more. (1,000 first: among 1,000 long-running
# containers, every start had the engine send, and the agent decode and skip, a million
# lines, and the agent kept ~6.5 MB more resident for every 45 lines each had printed.)
FIRST_TAIL = 20
RESUME_TAIL = 1000
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
