"""What a log source is: it reads one container's output into record batches.

Two sources implement it: the engine's logs API (``agent.sources.api``) and the json-file
driver's files on disk (``agent.sources.jsonfile``); ``agent.sources.choice`` picks one per
container, and a ``ContainerReader`` (``agent.sources.reader``) runs it.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from agent.positions import Position
from agent.record import Record

if TYPE_CHECKING:
    from agent.sources.reader import ContainerReader

Emit = Callable[[list[Record]], Awaitable[None]]


class QueueNow(Protocol):
    """Where batches go when they can go without waiting (the pipeline)."""

    def has_room(self) -> bool: ...

    def put_now(self, batch: list[Record]) -> None: ...


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
