"""Every followed container's reader task and delivered position, in one owner.

``LogFollowers`` starts one ``ContainerReader`` task per followed container, keeps each
container's delivered position (so that a reader restarted after an engine reconnect or a
container restart resumes where it left off), and cancels and awaits every task at
shutdown.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog

from agent.engine.client import Engine
from agent.filters import ContainerFilter
from agent.metrics.inventory import Inventory
from agent.positions import FileMark, Position
from agent.record import ContainerMeta
from agent.retry import Backoff
from agent.sources.base import Emit, LogSource, QueueNow
from agent.sources.reader import ContainerReader

if TYPE_CHECKING:
    from agent.processing.build import Processing

log = structlog.get_logger("agent.sources")


class LogFollowers:
    """Owns every container reader task and every container's delivered position."""

    def __init__(
        self,
        engine: Engine,
        source: LogSource,
        pipeline_send: Emit,
        containers: ContainerFilter,
        host: str,
        backoff: Backoff,
        choose_source: Callable[[ContainerMeta], Awaitable[LogSource]] | None = None,
    ) -> None:
        self.engine = engine
        self.source = source  # the default; ``choose_source`` picks one per container
        self.choose_source = choose_source
        self.pipeline_send = pipeline_send
        # The pipeline's ``has_room``/``put_now`` (set by the runtime): a reader hands a
        # batch on without an await when it can (``ContainerReader.emit_now``).
        self.queue_now: QueueNow | None = None
        self.containers = containers
        self.host = host
        self.backoff = backoff  # between failed reads of one container
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
        self.unavailable = 0  # containers removed before any of their logs could be read
        self.lines_lost = 0  # lines a source knows it could not read (estimated: rotation)
        self.processing: Processing | None = None  # per-container chains (the runtime's)

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
            reader.wake.set()  # a reader waiting in back-off tries again now
            return
        if not self.containers.accepts(meta):
            log.debug("container_excluded", container=meta.name)
            return
        reader = ContainerReader(self.metas[cid], self.source, self)
        self.readers[cid] = reader
        self.inventory.get(self.metas[cid]).log_source = self.source.name
        task = asyncio.create_task(reader.run(), name=f"logs:{meta.name}")
        self._tasks[cid] = task
        task.add_done_callback(functools.partial(self._done, cid))

    def _done(self, container_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(container_id, None)
        self.readers.pop(container_id, None)
        if container_id in self._destroyed:
            self._destroyed.discard(container_id)
            self.forget(container_id)
        if not task.cancelled() and task.exception() is not None:
            log.error("log_reader_crashed", id=container_id[:12], error=repr(task.exception()))

    def refilter(self, containers: ContainerFilter) -> None:
        """A new container filter (a reload): readers of containers it no longer takes
        stop; their positions stay, so a container taken again resumes where it was."""
        self.containers = containers
        for cid, reader in list(self.readers.items()):
            if not containers.accepts(reader.meta):
                task = self._tasks.get(cid)
                if task is not None:
                    task.cancel()
                log.info("container_unfollowed", container=reader.meta.name, id=cid[:12])

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
        """Forgets containers the engine no longer has (a listing after a reconnect):
        also those only ever seen, never read (an excluded container's metadata)."""
        for cid in set(self.positions) | set(self.metas):
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
