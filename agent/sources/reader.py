"""One container's reader task: picks the container's source, reads it to the end of
the container's output, re-reads after a reconnect or restart, and books each batch."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import structlog

from agent.engine.client import EngineError, NotFound
from agent.positions import advance
from agent.record import ContainerMeta, Record
from agent.retry import Retry
from agent.sources.base import LogSource, StreamEnd
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
                sum(len(r.message or "") for r in batch if r.stream == "stderr")
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
        retry = Retry(self.followers.backoff)
        while True:
            self.rerun = False
            try:
                end = await self.source.read(self, positions, self._emit)
                retry.reset()
            except NotFound as exc:
                # An auto-removed container that exits before its logs are asked for is
                # refused by the engine (409): say so, since its lines are lost.
                event = "container_gone" if self.lines else "container_logs_unavailable"
                log.info(event, container=self.meta.name, id=self.meta.id[:12], error=str(exc))
                return
            except EngineError as exc:
                # Discovery notices the lost engine and follows the container again once
                # it reconnects; a reader on its own only retries a few times.
                if retry.attempt >= 3:
                    log.warning("log_stream_failed", container=self.meta.name, error=str(exc))
                    return
                await retry.wait()
                continue
            if end is StreamEnd.STOPPED and not self.rerun:
                log.debug("log_stream_ended", container=self.meta.name, lines=self.lines)
                return
