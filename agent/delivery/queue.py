"""One exporter's bounded memory queue of record batches."""

from __future__ import annotations

import asyncio
import collections

from agent.record import Record


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

    def put_front(self, batch: list[Record]) -> None:
        """Puts a batch taken out back at the head of the queue (its order kept)."""
        self._batches.appendleft(batch)
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
