"""The file exporter's options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.section import Section
from exporters.base import ExporterConfig


class RotateConfig(Section):
    max_bytes: int | None = Field(
        None, ge=1024, description="Rotate before a file would grow past this size (bytes)."
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Rotate a file this long after the agent opened it (or it was last "
        "written, for a file found at start), at its next write.",
    )
    max_files: int | None = Field(
        10, ge=1, description="Rotated files kept per path, newest first (null: all)."
    )
    compress: bool = Field(False, description="gzip rotated files (`.gz`), in the background.")


class FileConfig(ExporterConfig):
    type: Literal["file"] = Field(description="Append NDJSON records to a file.")
    path: str = Field(
        description="File to append to; its directory is created if missing. May contain "
        "`{container_name}`, `{container_id}` and strftime fields (`%Y-%m-%d`) taken from "
        "each record's timestamp (UTC)."
    )
    fsync: bool = Field(False, description="fsync after every batch (durable, slower).")
    linger_seconds: float = Field(
        0.25,
        ge=0,
        le=10,
        description="While records come slowly, at most one write per this long: after a "
        "write the next waits this long (from the previous one's start) for more records, "
        "unless 2,048 are queued or the agent stops. 0: a write per batch read (more CPU on "
        "a host of many quiet containers, a little less delay).",
    )
    rotate: RotateConfig = Field(
        default_factory=RotateConfig, description="Rotation (off unless a limit is set)."
    )
    max_open_files: int = Field(
        64, ge=1, description="Files of a path template kept open at once (least recent closed)."
    )
