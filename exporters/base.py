"""The small interface every exporter implements, and the options they all share.

An exporter module defines a config model (subclass of ``ExporterConfig`` with a
``type: Literal["name"]`` field) and an ``Exporter`` subclass, and registers them with
``@register``. The pipeline owns the queue, the policy when it is full, retries and the
exporter's counters; the exporter only turns batches into output.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from agent.filters import ContainerFilter
from agent.record import Record
from agent.section import Section, empty_list


class BufferConfig(Section):
    """An optional disk-backed queue between the exporter's memory queue and the exporter."""

    type: Literal["memory", "disk"] = Field(
        "memory", description="`disk`: spool records to segment files under `state_dir`."
    )
    max_bytes: int = Field(256 * 1024 * 1024, ge=4096, description="Size cap of the disk buffer.")
    when_full: Literal["block", "drop_newest", "drop_oldest"] = Field(
        "block", description="What a full disk buffer does; every drop is counted."
    )
    fsync: bool = Field(
        True,
        description="fsync each appended batch (off: an agent crash loses nothing, a host "
        "crash may).",
    )


LEVELS = ("debug", "info", "warning", "error", "fatal")  # the normalised record levels


class RouteConfig(Section):
    """Which records an exporter takes, besides its container filter (default: all)."""

    kinds: list[Literal["log", "event", "stats"]] = Field(
        default_factory=empty_list, description="Only records of these kinds (default: every kind)."
    )
    streams: list[Literal["stdout", "stderr"]] = Field(
        default_factory=empty_list,
        description="Only log records of these streams (default: both); events and stats "
        "are not filtered by stream.",
    )
    min_level: Literal["debug", "info", "warning", "error", "fatal"] | None = Field(
        None,
        description="Only log records at this level or above (a record without a level, "
        "see `processing`, is not taken); events and stats are not filtered by level.",
    )

    @property
    def everything(self) -> bool:
        return not self.kinds and not self.streams and self.min_level is None

    def accepts(self, rec: Record) -> bool:
        if self.kinds and rec.kind not in self.kinds:
            return False
        if rec.kind != "log":
            return True
        if self.streams and rec.stream not in self.streams:
            return False
        if self.min_level is not None:
            level = rec.level
            return level is not None and LEVELS.index(level) >= LEVELS.index(self.min_level)
        return True


class ExporterConfig(Section):
    """Options the pipeline applies to every exporter, whatever its type."""

    type: str = Field(description="Which exporter this is (file, …).")
    queue_records: int = Field(
        4096,
        ge=1,
        description="Records the exporter's queue holds before `when_full` applies.",
    )
    when_full: Literal["block", "drop_newest"] = Field(
        "block",
        description=(
            "What a full queue does: `block` slows the readers (nothing lost), `drop_newest` "
            "drops the incoming records and counts them."
        ),
    )
    containers: ContainerFilter = Field(
        default_factory=ContainerFilter,
        description="Which containers' records this exporter receives (default: all).",
    )
    buffer: BufferConfig = Field(
        default_factory=BufferConfig,
        description="Where records wait for the exporter: memory only, or also on disk.",
    )
    route: RouteConfig = Field(
        default_factory=RouteConfig,
        description="Which records it takes by kind, stream and level (default: all), e.g. "
        "only `error` and above for an alerting webhook.",
    )


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


class Exporter(abc.ABC):
    """Turns batches of records into output. Called by one pipeline worker at a time."""

    type_name: ClassVar[str]
    config_class: ClassVar[type[ExporterConfig]]
    accepts_records: ClassVar[bool] = True  # False: the pipeline sends it no batches

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config
        # After a send of a small batch, the pipeline's worker waits up to this long (from
        # the send's start) for more records before the next send: many quiet containers'
        # lines go out together instead of one send per line (an exporter with a linger of
        # its own, such as http's, leaves it at 0).
        self.linger_seconds = 0.0

    def place(self, state_dir: Path) -> None:  # noqa: B027 - optional hook
        """Learns the agent's ``state_dir`` (for files of its own: dead letters)."""

    def bind(self, state: Any) -> None:  # noqa: B027 - optional hook
        """Receives the agent's state (``agent.telemetry.AgentState``) before ``start``."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Opens files or connections; raising here stops the agent before it reads."""

    @abc.abstractmethod
    async def send(self, batch: Sequence[Record]) -> None:
        """Writes one batch. Raising means "not written": the pipeline retries the batch."""

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Pushes out anything buffered inside the exporter."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases files and connections; the exporter gets no batch after this."""

    def health(self) -> Health:
        return Health(True)

    def target(self) -> str:
        """Where records go, for the start-up log line (never include secrets)."""
        return self.type_name


REGISTRY: dict[str, type[Exporter]] = {}


def register(cls: type[Exporter]) -> type[Exporter]:
    """Class decorator: makes ``cls`` available under ``cls.type_name`` in configs."""
    if cls.type_name in REGISTRY:
        raise ValueError(f"exporter type {cls.type_name!r} registered twice")
    REGISTRY[cls.type_name] = cls
    return cls
