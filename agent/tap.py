"""``tap``: copies of the records passing through a running agent, for whoever watches
(``/tap``, ``container-agent tap``), like ``vector tap``.

The pipeline hands every batch to ``TapHub.publish`` (one call per batch, nothing when
nobody watches). Each watcher has a bounded queue: a watcher that reads too slowly loses
its own copies (counted, and said in its stream), never slows the pipeline.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import Callable

from agent.record import Record

QUEUE_RECORDS = 10_000  # copies a watcher may fall behind by before it loses some


class Tap:
    """One watcher: its filters and its queue of record JSON lines."""

    def __init__(
        self,
        container: re.Pattern[str] | None = None,
        grep: re.Pattern[str] | None = None,
        wants: Callable[[list[Record]], list[Record]] | None = None,
        limit: int = QUEUE_RECORDS,
    ) -> None:
        self.container = container
        self.grep = grep
        self.wants = wants  # an exporter's choice (its container filter and route)
        self.limit = limit
        self.lines: collections.deque[bytes] = collections.deque()
        self.dropped = 0
        self.ready = asyncio.Event()

    def offer(self, batch: list[Record]) -> None:
        if self.wants is not None:
            batch = self.wants(batch)
        container, grep = self.container, self.grep
        for rec in batch:
            if container is not None and not container.search(rec.meta.name):
                continue
            if grep is not None and not grep.search(rec.message or rec.action or ""):
                continue
            if len(self.lines) >= self.limit:
                self.dropped += 1
                continue
            self.lines.append(rec.json())
        if self.lines:
            self.ready.set()

    async def take(self) -> tuple[list[bytes], int]:
        """The lines queued so far (waits for one), and how many were dropped since."""
        await self.ready.wait()
        self.ready.clear()
        lines = list(self.lines)
        self.lines.clear()
        dropped, self.dropped = self.dropped, 0
        return lines, dropped


class TapHub:
    def __init__(self) -> None:
        self.taps: set[Tap] = set()
        self.dropped = 0  # copies every watcher lost, all time

    def publish(self, batch: list[Record]) -> None:
        for tap in self.taps:
            before = tap.dropped
            tap.offer(batch)
            self.dropped += tap.dropped - before

    def subscribe(self, tap: Tap) -> Tap:
        self.taps.add(tap)
        return tap

    def unsubscribe(self, tap: Tap) -> None:
        self.taps.discard(tap)
