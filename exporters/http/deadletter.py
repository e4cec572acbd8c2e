"""The dead-letter file: records a backend rejected for good, each with why.

Each record is appended as its record JSON plus a ``dead_letter`` field ``{time, exporter,
url, status, response}``, fsynced. A record counts as accepted only once it is on disk: a
failed write is retried (the retry policy's back-off) until it works.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import structlog

from agent.record import Record, format_timestamp_ns
from agent.retry import Backoff, Retry

log = structlog.get_logger("exporters.http")

# A rejected record, the status it was answered with (None: no HTTP answer), the excerpt.
Rejected = tuple[Record, int | None, str]


class DeadLetters:
    """One exporter's dead-letter file and its counters."""

    def __init__(
        self, exporter: str, path: Path, backoff: Backoff, on_failure: Callable[[str], None]
    ) -> None:
        self.exporter = exporter
        self.path = path
        self._backoff = backoff
        self._on_failure = on_failure  # marks the exporter unhealthy, with the reason
        self.records = 0
        self.batches = 0

    async def write(self, items: list[Rejected], url: str, batch: bool) -> None:
        """Appends records with why they were rejected; retries the write until it works.
        ``batch``: the whole request was rejected (else single ``_bulk`` items)."""
        now = format_timestamp_ns(time.time_ns())
        lines = []
        for rec, status, error in items:
            info = {"time": now, "exporter": self.exporter, "url": url, "status": status}
            info["response"] = error
            lines.append(rec.json()[:-1] + b',"dead_letter":' + orjson.dumps(info) + b"}\n")
        data = b"".join(lines)
        retry = Retry(self._backoff)
        while True:
            try:
                await asyncio.to_thread(self._append, data)
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
        self.records += len(items)
        self.batches += 1
        statuses = sorted({s for _, s, _ in items if s is not None})
        log.error(
            "http_dead_lettered",
            exporter=self.exporter,
            url=url,
            status=statuses[0] if len(statuses) == 1 else statuses,
            records=len(items),
            whole_request=batch,
            path=str(self.path),
            response=items[0][2][:200] if items else "",
        )

    def _append(self, data: bytes) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
