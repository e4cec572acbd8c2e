"""One container's processing chain, and how a reader runs it.

A ``Chain`` is a list of stages (``agent.processing.build`` picks and orders them from
the container's settings), each an object of its own module with ``process(batch) ->
batch``: whole batches, no await per line. A container whose settings ask for nothing
gets no chain at all and its reader hands batches to the pipeline as before, without a
call per batch.

``ChainDriver`` is what a reader emits through when its container has a chain: it runs
the chain on each batch and sends the result on (``send``: the reader's own emit, which
queues the batch and advances the read positions), flushes groups that waited long enough
(a timer), flushes everything when the container's output ends or the reader stops (the
agent's shutdown, within ``drain_seconds``), and waits when a ``delay`` rate limit says
so.

Exactness. What was delivered (the exporters' acknowledgements, hence the checkpoint)
only moves with records that are sent, each accounting for the lines it stands for
(``Record.extra.end``), so lines a stage holds (a multiline group) are never counted as
delivered: a checkpoint never passes the first line of a group not yet delivered, and
after a crash the group is read again whole. The reader's read positions (where a source
resumes after a reconnect, a container restart or a container's exit) go to the last line
the chain took in, held ones too, so that no line reaches the chain twice. A file mark
(the offset in a json-file log a checkpoint resumes at) is only kept on a batch's last
record when the chain holds nothing back after it. With no exporter that must hold
lines back (then what was read and queued is the checkpoint), ``queued`` says how far
what was sent goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from agent.positions import Position, advance
from agent.record import Record

log = structlog.get_logger("agent.processing")

Send = Callable[[list[Record]], Awaitable[None]]


class Stage(Protocol):
    name: str
    holds: bool  # holds or drops lines: the chain must know which lines it has seen

    @property
    def settled(self) -> bool: ...  # nothing held back or left unaccounted for

    def process(self, batch: list[Record]) -> list[Record]: ...

    def flush(self, now: float, force: bool) -> list[Record]: ...

    def deadline(self) -> float | None: ...


class Chain:
    """The stages of one container, run on each batch in order."""

    def __init__(self, stages: list[Stage], counters: Counter[str] | None = None) -> None:
        self.stages = stages
        self.holds = any(s.holds for s in stages)
        # Per stream, the last line taken in (when a stage holds or drops lines).
        self.seen: dict[str, Position] = {}
        self.counters: Counter[str] = counters if counters is not None else Counter()
        # A delay-mode rate limit: seconds the reader waits after a slice of a batch.
        self.delay: Callable[[], float] | None = None
        self.pieces: Callable[[list[Record]], list[list[Record]]] | None = None

    @property
    def settled(self) -> bool:
        return all(s.settled for s in self.stages)

    def deadline(self) -> float | None:
        times = [t for s in self.stages if (t := s.deadline()) is not None]
        return min(times) if times else None

    def process(self, batch: list[Record]) -> list[Record]:
        if self.holds:
            advance(self.seen, batch)  # the source's records: plain lines
        last = batch[-1]
        out = batch
        for stage in self.stages:
            out = stage.process(out)
            if not out:
                break
        return self._finish(out, last)

    def flush(self, now: float, force: bool = False) -> list[Record]:
        """What stages release now: groups that waited long enough, summaries due, or
        (``force``: the output ended, the agent stops) everything they hold."""
        out: list[Record] = []
        for stage in self.stages:
            if out:
                out = stage.process(out)
            out += stage.flush(now, force)
        return self._finish(out, None)

    def _finish(self, out: list[Record], last: Record | None) -> list[Record]:
        if not out:
            return out
        for r in out:
            if r.mark is not None and r is not last:
                r.mark = None  # a line held back from an earlier batch: its mark is stale
        mark = last.mark if last is not None else None
        if mark is not None:
            tail = out[-1]
            if self.settled:
                # Everything up to the batch's last line is accounted for by what is out.
                tail.mark = mark
            elif tail is last:
                # Not past lines held back: a copy without the mark (the source still
                # needs the mark on its own record).
                out[-1] = _copy(tail)
        return out


def _copy(r: Record) -> Record:
    out = Record(r.kind, r.timestamp, r.meta, r.stream, r.message, r.truncated)
    out.extra = r.extra
    out._json = r._json
    return out


class ChainDriver:
    """Runs one container's chain for its reader (see the module docstring)."""

    def __init__(
        self,
        chain: Chain,
        send: Send,
        positions: dict[str, Position],
        container_id: str,
        drain_seconds: float = 10.0,
    ) -> None:
        self.chain = chain
        self.send = send
        self.positions = positions  # the reader's read positions (LogFollowers.positions)
        self.emitted: dict[str, Position] = {}  # how far what was sent goes, per stream
        self.cid = container_id
        self.drain_seconds = drain_seconds
        self.waited = 0.0  # seconds the reader was held back by a delay-mode rate limit
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._closed = False

    async def emit(self, batch: list[Record]) -> None:
        """The source's emit: the chain, then the reader's own emit."""
        chain = self.chain
        if chain.delay is None or chain.pieces is None:
            async with self._lock:
                await self._send(chain.process(batch))
            self._arm()
            return
        for piece in chain.pieces(batch):  # a delay-mode rate limit: paced in slices
            async with self._lock:
                await self._send(chain.process(piece))
            self._arm()
            wait = chain.delay()
            if wait > 0:
                self.waited += wait
                chain.counters["rate_limit_delay_ms"] += round(wait * 1000)
                await asyncio.sleep(wait)

    @property
    def sets_positions(self) -> bool:
        """Whether the read positions are set here after every send (the chain holds or
        drops lines): then ``send`` need not advance them, as what it would write is
        overwritten before any other task runs (every stream of what is sent is one of
        those the chain took in)."""
        return self.chain.holds

    async def _send(self, out: list[Record]) -> None:
        if out:
            await self.send(out)  # queues (and advances the read positions to its end
            # unless ``sets_positions``)
            advance(self.emitted, out)
        seen = self.chain.seen
        if seen:
            # A source reading again resumes after every line the chain took in, those it
            # holds too: none comes twice. What was delivered (the acknowledgements, the
            # checkpoint) only moves with records sent.
            self.positions.update({s: Position(p.timestamp, p.count) for s, p in seen.items()})

    def _arm(self) -> None:
        if self._timer is None and not self._closed and self.chain.deadline() is not None:
            self._timer = asyncio.create_task(self._flusher(), name=f"flush:{self.cid[:12]}")

    async def _flusher(self) -> None:
        try:
            while (deadline := self.chain.deadline()) is not None:
                wait = deadline - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                async with self._lock:
                    await self._send(self.chain.flush(time.monotonic()))
        finally:
            self._timer = None

    async def finish(self) -> None:
        """The container's output ended: everything held back goes now."""
        async with self._lock:
            await self._send(self.chain.flush(time.monotonic(), force=True))

    async def close(self) -> None:
        """The reader ends (its container is done, or the agent stops): what is held back
        goes, waiting at most ``drain_seconds`` for room in the queues; what cannot go is
        read again after a restart (the checkpoint did not move past it)."""
        self._closed = True
        timer = self._timer
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.drain_seconds):
                await self.finish()

    def queued(self) -> dict[str, Position] | None:
        """How far what was sent goes, per stream, when it is behind what was read (lines
        held back); None when it is not."""
        return None if self.chain.settled else dict(self.emitted)
