"""The dead-letter file: records a backend rejected for good, each with why.

Each record is appended as its record JSON plus a ``dead_letter`` field ``{time, exporter,
url, status, response}``, fsynced. A record counts as accepted only once it is on disk: a
failed write is retried (the retry policy's back-off) until it works.

The file is capped (``dead_letter_max_bytes``): records that would take it past the cap
are not written but dropped, counted (``dropped``) and logged once per run of drops
(``http_dead_letter_full``; the run ends when a write fits again, e.g. after the operator
moved the file away). Dropped records count as handled too, so that the pipeline moves on.
The file's size is read before each write, so moving or truncating it makes room at once.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

from agent.fsutil import append_whole
from agent.record import Record, format_timestamp_ns
from agent.retry import Backoff, Retry

log = structlog.get_logger("exporters.http")

# A rejected record, the status it was answered with (None: no HTTP answer), the excerpt.
Rejected = tuple[Record, int | None, str]


class DeadLetters:
    """One exporter's dead-letter file and its counters."""

    def __init__(
        self,
        exporter: str,
        path: Path,
        backoff: Backoff,
        on_failure: Callable[[str], None],
        max_bytes: int = 100 * 1024 * 1024,
    ) -> None:
        self.exporter = exporter
        self.path = path
        self.max_bytes = max_bytes
        self._backoff = backoff
        self._on_failure = on_failure  # marks the exporter unhealthy, with the reason
        self.records = 0  # written
        self.batches = 0  # writes (a rejected request, or a _bulk answer's rejected items)
        self.dropped = 0  # records not written: the file was at its cap
        self._full = False  # in a run of drops (logged once)

    async def write(self, items: list[Rejected], url: str, batch: bool) -> None:
        """Appends records with why they were rejected (those that fit under the cap; the
        rest are dropped and counted); retries the write until it works. ``batch``: the
        whole request was rejected (else single ``_bulk`` items)."""
        now = format_timestamp_ns(time.time_ns())
        lines = []
        for rec, status, error in items:
            info = {"time": now, "exporter": self.exporter, "url": url, "status": status}
            info["response"] = error
            lines.append(rec.json()[:-1] + b',"dead_letter":' + orjson.dumps(info) + b"}\n")
        retry = Retry(self._backoff)
        while True:
            try:
                written = await asyncio.to_thread(self._append, lines)
                break
            except OSError as exc:
                reason = f"dead-letter file {self.path}: {exc.strerror or exc}"
                self._on_failure(reason)
                delay = retry.next_delay()
                log.error(
                    "http_dead_letter_write_failed",
                    exporter=self.exporter,
                    error=reason,
                    records=len(items),
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
        dropped = len(items) - written
        statuses = sorted({s for _, s, _ in items if s is not None})
        shown: int | list[int] = statuses[0] if len(statuses) == 1 else statuses
        if dropped:
            self.dropped += dropped
            if not self._full:
                self._full = True
                log.error(
                    "http_dead_letter_full",
                    exporter=self.exporter,
                    path=str(self.path),
                    max_bytes=self.max_bytes,
                    dropped=dropped,
                    status=shown,
                    action="rejected records are dropped (counted: dead_letter_dropped_records) "
                    "until the file has room again",
                )
        elif written:
            self._full = False
        if not written:
            return
        self.records += written
        self.batches += 1
        log.error(
            "http_dead_lettered",
            exporter=self.exporter,
            url=url,
            status=shown,
            records=written,
            dropped=dropped,
            whole_request=batch,
            path=str(self.path),
            response=items[0][2][:200] if items else "",
        )

    def _append(self, lines: list[bytes]) -> int:
        """Appends the longest prefix of ``lines`` that keeps the file within its cap;
        returns how many lines that is."""
        path = self.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = 0
        room = self.max_bytes - size
        n = 0
        for line in lines:
            room -= len(line)
            if room < 0:
                break
            n += 1
        if n == 0:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            # Whole or nothing: on a full disk the file is cut back to where it ended, so
            # the retried write neither appends to a cut record nor writes one twice.
            append_whole(fd, b"".join(lines[:n]), fsync=True)
        finally:
            os.close(fd)
        return n
