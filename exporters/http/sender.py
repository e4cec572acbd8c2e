"""One request's records delivered, whatever the backend answers.

``Sender.deliver`` returns once every record it was given is accepted: answered with a 2xx,
or written to the dead-letter file after an answer the backend will never change its mind
on. Until then it retries (5xx, 429, 408, timeouts, connection errors) with the retry
policy's back-off (``agent.retry``), longer when a ``Retry-After`` on a 429 or 503 asks for
longer (never shorter: ``Retry-After: 0`` gets the back-off; an invalid value is logged
once, ``http_retry_after_invalid``, and ignored). A 413
splits the request in two until it fits; ``_bulk`` answers are read item by item, and only
the items answered 429/5xx are sent again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from yarl import URL

from agent.retry import Backoff, Retry, parse_retry_after
from agent.secrets import Scrubber
from exporters.http.deadletter import DeadLetters, Rejected
from exporters.http.formats import Encoded
from exporters.http.formats.elasticsearch import bulk_outcome

log = structlog.get_logger("exporters.http")

EXCERPT = 512  # characters of a response body kept in logs and dead letters
_RETRY_STATUS = frozenset({408, 429})


@dataclass
class Answer:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""
    location: str | None = None


class Sender:
    """POSTs bodies to one url and sees each through to acceptance; keeps the counters
    and the exporter's failing state."""

    def __init__(
        self,
        name: str,
        url: URL,
        target: str,
        bulk: bool,
        backoff: Backoff,
        max_retry_after: float,
        scrub: Scrubber,
        body: Callable[[Encoded, Sequence[int]], Awaitable[bytes]],
        dead_letters: DeadLetters,
    ) -> None:
        self.name = name
        self.url = url
        self.target = target  # the url without credentials or query, for logs
        self.bulk = bulk  # elasticsearch ``_bulk``: answers are read item by item
        self._backoff = backoff
        self._max_retry_after = max_retry_after
        self.scrub = scrub
        self._body = body
        self.dead_letters = dead_letters
        self.session: aiohttp.ClientSession | None = None
        self.failing = ""
        self._failing_since = 0.0
        self._told_retry_after = False  # an invalid Retry-After was logged (once)
        # Counters (read by tests, benchmarks, and whoever wants to export them).
        self.requests = 0
        self.retries = 0
        self.records_sent = 0
        self.bytes_sent = 0
        self.last_status: int | None = None

    async def post(self, payload: bytes) -> Answer:
        assert self.session is not None, "the exporter was not started"
        self.requests += 1
        try:
            async with self.session.post(self.url, data=payload, allow_redirects=False) as resp:
                body = await resp.read()
                self.last_status = resp.status
                return Answer(
                    resp.status,
                    body,
                    resp.headers.get("Retry-After"),
                    location=resp.headers.get("Location"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            return Answer(None, error=self.scrub(f"{type(exc).__name__}: {text}"))

    async def deliver(self, encoded: Encoded, indices: Sequence[int], payload: bytes) -> None:
        """Delivers the records at ``indices``: returns once each is accepted or
        dead-lettered; retries everything else forever."""
        todo: collections.deque[tuple[Sequence[int], bytes | None]] = collections.deque()
        todo.append((indices, payload))
        while todo:
            current, body = todo.popleft()
            if body is None:
                body = await self._body(encoded, current)
            retry = Retry(self._backoff, self._max_retry_after)
            while True:
                answer = await self.post(body)
                status = answer.status
                if status is not None and 200 <= status < 300:
                    again = await self._accepted(encoded, current, answer, len(body))
                    if not again:
                        self._recovered(retry.reset())
                        break
                    # Elasticsearch items answered 429/5xx: only those go again.
                    current = again
                    body = await self._body(encoded, current)
                    reason = f"{len(again)} bulk item(s) answered 429/5xx"
                    await self._wait(retry, reason, len(current), None)
                    continue
                if status is None or status in _RETRY_STATUS or status >= 500:
                    reason = answer.error or f"HTTP {status}: {self.excerpt(answer.body)}"
                    hint = answer.retry_after if status in (429, 503) else None
                    await self._wait(retry, reason, len(current), hint)
                    continue
                if status == 413 and len(current) > 1:
                    half = len(current) // 2
                    todo.appendleft((current[half:], None))
                    todo.appendleft((current[:half], None))
                    log.info(
                        "http_request_too_large",
                        exporter=self.name,
                        records=len(current),
                        bytes=len(body),
                        action="split in two",
                    )
                    break
                # Any other answer (4xx, or a redirect, not followed): never taken. Park it.
                excerpt = self.excerpt(answer.body)
                if answer.location:
                    excerpt = self.scrub(f"redirected to {answer.location}")
                self.set_failing(f"HTTP {status} from {self.target}: {excerpt}")
                await self.dead_letters.write(
                    [(encoded.records[i], status, excerpt) for i in current],
                    self.target,
                    batch=True,
                )
                break

    async def _accepted(
        self, encoded: Encoded, indices: Sequence[int], answer: Answer, size: int
    ) -> list[int]:
        """Books a 2xx; for ``_bulk`` reads the items: returns the indices to send again
        and dead-letters the rejected ones."""
        self.bytes_sent += size
        if not self.bulk:
            self.records_sent += len(indices)
            return []
        outcome = bulk_outcome(answer.body, indices)
        if outcome is None:
            log.warning(
                "http_bulk_answer_unreadable",
                exporter=self.name,
                status=answer.status,
                response=self.excerpt(answer.body),
                records=len(indices),
            )
            self.records_sent += len(indices)
            return []
        again, dead = outcome
        self.records_sent += len(indices) - len(again) - len(dead)
        if dead:
            items: list[Rejected] = [
                (encoded.records[i], st, self.scrub(err)[:EXCERPT]) for i, st, err in dead
            ]
            await self.dead_letters.write(items, self.target, batch=False)
        return again

    async def _wait(self, retry: Retry, reason: str, records: int, retry_after: str | None) -> None:
        """Sleeps before the next try; logs on tries 1, 2, 4, 8, …"""
        self.retries += 1
        hinted = self._retry_after(retry_after)
        delay = retry.next_delay(hinted)
        self.set_failing(f"{reason} (from {self.target}, retrying)")
        n = retry.attempt
        if n & (n - 1) == 0:
            log.warning(
                "http_send_failed",
                exporter=self.name,
                url=self.target,
                error=reason,
                records=records,
                attempt=n,
                retry_in=round(delay, 3),
                retry_after=retry_after if hinted is not None else None,
            )
        await asyncio.sleep(delay)

    def _retry_after(self, value: str | None) -> float | None:
        """A ``Retry-After`` header as seconds; an invalid one is ignored, and logged the
        first time only (a backend sends the same one on every answer)."""
        try:
            return parse_retry_after(value)
        except ValueError:
            if not self._told_retry_after:
                self._told_retry_after = True
                log.warning(
                    "http_retry_after_invalid",
                    exporter=self.name,
                    url=self.target,
                    retry_after=self.scrub(value or "")[:100],
                    action="ignored: the back-off applies",
                )
            return None

    def set_failing(self, reason: str) -> None:
        if not self.failing:
            self._failing_since = time.monotonic()
        self.failing = reason

    def _recovered(self, attempts: int) -> None:
        if self.failing and attempts:
            log.info(
                "http_recovered",
                exporter=self.name,
                attempts=attempts,
                failing_seconds=round(time.monotonic() - self._failing_since, 3),
            )
        self.failing = ""

    def excerpt(self, body: bytes) -> str:
        text = body[: EXCERPT * 4].decode("utf-8", "replace")
        return self.scrub(text)[:EXCERPT]
