"""Fan-out of record batches to exporters, one bounded queue and one worker per exporter.

A reader's ``send`` returns once every exporter that wants the batch has queued it (or
dropped it, under ``drop_newest``). A slow exporter only slows the readers whose records
it holds, and only once its queue is full. The checkpoint is what every durable exporter
has accepted (``delivered``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from agent.delivery.runner import ExporterRunner
from agent.positions import FileMark, Position
from agent.record import Record
from agent.tap import TapHub

_STREAMS = ("stdout", "stderr")


class ExporterStartError(Exception):
    """An exporter (or its disk buffer) could not start: the agent must not read."""

    def __init__(self, exporter: str, reason: str) -> None:
        super().__init__(f"exporters.{exporter}: {reason}")
        self.exporter = exporter
        self.reason = reason


def _reason(exc: BaseException) -> str:
    """An OSError as "what: why, path" (its filename), anything else as its message."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _accepted(runner: ExporterRunner) -> tuple[dict[str, dict[str, Position]], dict[str, FileMark]]:
    """``Pipeline.delivered`` when one durable exporter takes every container: what it
    accepted (each second, for every container: no loops over holders and streams)."""
    acked = runner.acked
    out = {
        cid: kept
        for cid, per in acked.items()
        if (kept := {s: p for s, p in per.items() if s in _STREAMS})
    }
    return out, {cid: m for cid, m in runner.marks.items() if cid in acked}


def _lowest_accepted(
    durable: list[ExporterRunner], metas: dict[str, Any]
) -> tuple[dict[str, dict[str, Position]], dict[str, FileMark]]:
    """``Pipeline.delivered`` over several durable exporters, or one that takes only some
    containers."""
    out: dict[str, dict[str, Position]] = {}
    marks: dict[str, FileMark] = {}
    for cid in set().union(*(r.acked for r in durable)):
        meta = metas.get(cid)
        holders = [
            r
            for r in durable
            if meta is None or r.config.containers.everything or r.config.containers.accepts(meta)
        ]
        per: dict[str, Position] = {}
        for stream in _STREAMS:
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
        held = [m for r in holders if (m := r.marks.get(cid)) is not None]
        if held and len(held) == len(holders):
            marks[cid] = min(held, key=FileMark.key)
    return out, marks


async def _start_exporter(runner: ExporterRunner) -> None:
    try:
        await runner.exporter.start()
    except (OSError, ValueError) as exc:
        raise ExporterStartError(runner.name, _reason(exc)) from exc


async def _open(runner: ExporterRunner) -> None:
    """Opens the runner's disk buffer (if any) and its exporter."""
    if runner.buffer is not None:
        try:
            await asyncio.to_thread(runner.buffer.open)
        except OSError as exc:
            raise ExporterStartError(runner.name, f"buffer: {_reason(exc)}") from exc
    await _start_exporter(runner)


class Pipeline:
    """Readers call ``send``; the pipeline hands each batch to every interested exporter."""

    def __init__(self, runners: Sequence[ExporterRunner]) -> None:
        self.runners = list(runners)
        self._takers = [r for r in self.runners if r.exporter.accepts_records]
        self.accepting = True
        self.tap: TapHub | None = None  # copies for watchers (``container-agent tap``)
        self._open = asyncio.Event()  # cleared while a reload swaps exporters
        self._open.set()

    async def start(self) -> None:
        """Opens every disk buffer and exporter, then starts the workers. Raises
        ExporterStartError naming the exporter (and the buffer, when it is the buffer)."""
        for runner in self.runners:
            await _open(runner)
        for runner in self.runners:
            runner.start()

    # -- a reload: exporters added, removed or swapped while the agent runs ---------------

    def pause(self) -> None:
        """New batches wait (their readers with them) until ``resume``."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def _set_runners(self, runners: list[ExporterRunner]) -> None:
        self.runners = runners
        self._takers = [r for r in runners if r.exporter.accepts_records]

    async def add(self, runner: ExporterRunner) -> None:
        await _open(runner)
        runner.start()
        self._set_runners([*self.runners, runner])

    async def remove(self, name: str, deadline: float) -> None:
        """Takes the exporter out, delivers what it holds until ``deadline``, closes it."""
        runner = next(r for r in self.runners if r.name == name)
        self._set_runners([r for r in self.runners if r is not runner])
        await runner.drain(deadline)
        await runner.stop(reason="removed")

    async def swap(self, new: ExporterRunner, deadline: float, keep_buffer: bool) -> None:
        """Replaces the exporter of ``new``'s name by ``new``, which takes over the old
        one's queue (its batches, and readers waiting for room in it) and, with
        ``keep_buffer``, its open disk buffer. If ``new`` cannot start, the old one
        goes on as it was and ExporterStartError is raised."""
        old = next(r for r in self.runners if r.name == new.name)
        await old.retire(deadline)
        new.queue = old.queue
        new.queue.capacity = new.config.queue_records
        if keep_buffer:
            new.buffer = old.buffer
        elif old.buffer is not None:
            await asyncio.to_thread(old.buffer.close)
        try:
            if new.buffer is not None and not keep_buffer:
                await asyncio.to_thread(new.buffer.open)
            await _start_exporter(new)
        except ExporterStartError:
            await _start_exporter(old)  # it started once: the old config goes on
            if old.buffer is not None and not keep_buffer:
                await asyncio.to_thread(old.buffer.open)
            old.start()
            raise
        new.start()
        self._set_runners([new if r is old else r for r in self.runners])

    def has_room(self) -> bool:
        """Whether ``put_now`` may hand a batch on: not paused, and every exporter that
        takes records has room in its queue (or drops when full)."""
        return self._open.is_set() and all(r.has_room() for r in self._takers)

    def put_now(self, batch: list[Record]) -> None:
        """Hands ``batch`` to every interested exporter without waiting: only when
        ``has_room()`` (nothing awaited since), e.g. by a reader that reads a quiet
        container's new line where it cannot wait."""
        tap = self.tap
        if tap is not None and tap.taps:
            tap.publish(batch)
        for runner in self._takers:
            part = runner.wants(batch)
            if part:
                runner.put_now(part)

    async def send(self, batch: list[Record]) -> None:
        if not batch:
            return
        if self.has_room():
            self.put_now(batch)
            return
        if not self._open.is_set():
            await self._open.wait()
        tap = self.tap
        if tap is not None and tap.taps:
            tap.publish(batch)
        waits = []
        for runner in self._takers:
            part = runner.wants(batch)
            if not part:
                continue
            if runner.has_room():
                runner.put_now(part)
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
        if len(durable) == 1 and durable[0].config.containers.everything:
            return _accepted(durable[0])  # the usual agent: no minimum to take
        return _lowest_accepted(durable, metas)

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
