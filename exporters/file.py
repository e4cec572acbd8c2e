"""The file exporter: appends records as NDJSON, one write (and optionally one fsync) a batch."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

from pydantic import Field

from agent.record import Record, encode_ndjson
from exporters.base import Exporter, ExporterConfig, Health, register


class FileConfig(ExporterConfig):
    type: Literal["file"] = Field(description="Append NDJSON records to a file.")
    path: str = Field(description="File to append to; its directory is created if missing.")
    fsync: bool = Field(False, description="fsync after every batch (durable, slower).")


@register
class FileExporter(Exporter):
    type_name = "file"
    config_class = FileConfig
    config: FileConfig

    def __init__(self, name: str, config: FileConfig) -> None:
        super().__init__(name, config)
        self._file: BinaryIO | None = None
        self._error: str = ""

    async def start(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 - lives as long as the exporter

    async def send(self, batch: Sequence[Record]) -> None:
        data = encode_ndjson(batch)
        if data:
            # Encoding stays on the loop (it is CPU, no GIL release); the write goes to a thread.
            await asyncio.to_thread(self._write, data)

    def _write(self, data: bytes) -> None:
        try:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            if self.config.fsync:
                os.fsync(self._file.fileno())
            self._error = ""
        except OSError as exc:
            self._error = f"{self.config.path}: {exc.strerror or exc}"
            # Reopen on the next try: the file may have been removed or the disk freed.
            self._close()
            raise

    async def flush(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.flush)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def target(self) -> str:
        return f"file:{os.path.abspath(self.config.path)}"

    def health(self) -> Health:
        return Health(not self._error, self._error)
