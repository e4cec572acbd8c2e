"""One request's records delivered, whatever the backend answers.

``Sender.deliver`` returns once every record it was given is accepted: answered with a 2xx,
or written to the dead-letter file after an answer the backend will never change its mind
on. Until then it retries (5xx, 429, 408, timeouts, connection errors) with the retry
policy's back-off (``agent.retry``), longer when a ``Retry-After`` on a 429 or 503 asks for
longer (never shorter: ``Retry-After: 0`` gets the back-off; an invalid value is logged
once, ``http_retry_after_invalid``, and ignored). A 413 splits the request in two until it
fits; ``_bulk`` answers are read item by item: only the items answered 429/5xx are sent
again, those answered 409 (their id exists) count as delivered (``already_stored``).

401, 403, 404, 405 and 407 say that the agent is misconfigured (credentials, permissions,
url), not that the records are bad: they are retried with the back-off, forever like a
5xx, never dead-lettered; the exporter is unhealthy meanwhile (``/readyz`` says which
status and why) and ``http_misconfigured`` is logged once per status per run of failures.
The same holds for ``_bulk`` items answered so (a user that may not write to an index, an
index that does not exist and may not be created).

Any other answer (400, 422, a redirect, …) dead-letters the request's records. After
``REJECTIONS_BEFORE_PAUSE`` whole requests rejected in a row, each next request first waits
the back-off (``http_rejections_paced``), so that a backend rejecting everything does not
get the whole backlog at full speed (and the dead-letter file does not fill at disk
speed); the first 2xx ends the run.

``failures`` counts every failed request: an answer other than 2xx, a connection error or
a timeout, whether it is then retried, split or dead-lettered.
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
from exporters.http.formats.elasticsearch import read_bulk

log = structlog.get_logger("exporters.http")

EXCERPT = 512  # characters of a response body kept in logs and dead letters
_RETRY_STATUS = frozenset({408, 429})
# Answers about the agent's configuration, not the records: retried, never dead-lettered.
MISCONFIGURED = {
    401: "the backend refuses the credentials: check auth and headers",
    403: "the credentials may not write here: check their permissions",
    404: "no such endpoint: check url and format",
    405: "the endpoint takes no POST: check url and format",
    407: "the proxy wants credentials",
}
REJECTIONS_BEFORE_PAUSE = 5  # whole requests rejected in a row before the next one waits


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
        self._told_misconfigured: int | None = None  # status logged in this run of failures
        self._rejected_in_row = 0  # whole requests rejected for good since the last 2xx
        self._pace = Retry(backoff)  # the pause before a request after such a run
        # Counters (read by tests, benchmarks, and whoever wants to export them).
        self.requests = 0
        self.failures = 0  # requests not answered 2xx (retried, split or dead-lettered)
        self.retries = 0
        self.records_sent = 0
        self.already_stored = 0  # _bulk items answered 409: sent before, counted as sent
        self.bytes_sent = 0
        self.last_status: int | None = None

    async def post(self, payload: bytes) -> Answer:
        assert self.session is not None, "the exporter was not started"
        self.requests += 1
        try:
            async with self.session.post(self.url, data=payload, allow_redirects=False) as resp:
                body = await resp.read()
                self.last_status = resp.status
                if not 200 <= resp.status < 300:
                    self.failures += 1
                return Answer(
                    resp.status,
                    body,
                    resp.headers.get("Retry-After"),
                    location=resp.headers.get("Location"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.failures += 1
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
            if self._rejected_in_row >= REJECTIONS_BEFORE_PAUSE:
                await self._pause(len(current))
            while True:
                answer = await self.post(body)
                status = answer.status
                if status is not None and 200 <= status < 300:
                    self._rejected_in_row = 0
                    self._pace.reset()
                    again, reason = await self._accepted(encoded, current, answer, len(body))
                    if not again:
                        self._recovered(retry.reset())
                        break
                    # Elasticsearch items answered 429/5xx (or 401/403/404…): only those
                    # go again.
                    current = again
                    body = await self._body(encoded, current)
                    await self._wait(retry, reason, len(current), None)
                    continue
                if status is None or status in _RETRY_STATUS or status >= 500:
                    reason = answer.error or f"HTTP {status}: {self.excerpt(answer.body)}"
                    hint = answer.retry_after if status in (429, 503) else None
                    await self._wait(retry, reason, len(current), hint)
                    continue
                if status in MISCONFIGURED:
                    excerpt = self.excerpt(answer.body)
                    self._misconfigured(status, excerpt)
                    reason = f"HTTP {status} ({MISCONFIGURED[status]}): {excerpt}"
                    await self._wait(retry, reason, len(current), None)
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
                self._rejected_in_row += 1
                await self.dead_letters.write(
                    [(encoded.records[i], status, excerpt) for i in current],
                    self.target,
                    batch=True,
                )
                break

    async def _accepted(
        self, encoded: Encoded, indices: Sequence[int], answer: Answer, size: int
    ) -> tuple[list[int], str]:
        """Books a 2xx; for ``_bulk`` reads the items: returns the indices to send again
        (and why) and dead-letters the rejected ones. Items answered with a status of
        ``MISCONFIGURED`` (a user that may not write to that index, an index that does
        not exist and may not be created) are sent again, like 429/5xx."""
        self.bytes_sent += size
        if not self.bulk:
            self.records_sent += len(indices)
            return [], ""
        outcome = read_bulk(answer.body, indices)
        if outcome is None:
            log.warning(
                "http_bulk_answer_unreadable",
                exporter=self.name,
                status=answer.status,
                response=self.excerpt(answer.body),
                records=len(indices),
            )
            self.records_sent += len(indices)
            return [], ""
        again, dead = outcome.again, outcome.dead
        reason = f"{len(again)} bulk item(s) answered 429/5xx"
        refused = [d for d in dead if d[1] in MISCONFIGURED]
        if refused:
            dead = [d for d in dead if d[1] not in MISCONFIGURED]
            chosen = {*again, *(i for i, _, _ in refused)}
            again = [i for i in indices if i in chosen]
            _, status, error = refused[0]
            excerpt = self.scrub(error)[:EXCERPT]
            self._misconfigured(status, excerpt)
            reason = f"{len(refused)} bulk item(s) answered {status} "
            reason += f"({MISCONFIGURED[status]}): {excerpt}"
        self.records_sent += len(indices) - len(again) - len(dead)
        self.already_stored += len(outcome.present)
        if dead:
            items: list[Rejected] = [
                (encoded.records[i], st, self.scrub(err)[:EXCERPT]) for i, st, err in dead
            ]
            await self.dead_letters.write(items, self.target, batch=False)
        return again, reason

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

    def _misconfigured(self, status: int, excerpt: str) -> None:
        """Logs an answer that says the agent is misconfigured, once per status in a run
        of failures (the warnings of ``_wait`` follow the retries)."""
        if self._told_misconfigured == status:
            return
        self._told_misconfigured = status
        log.error(
            "http_misconfigured",
            exporter=self.name,
            url=self.target,
            status=status,
            error=MISCONFIGURED[status],
            response=excerpt[:200],
            action="retrying with back-off until the backend takes the records",
        )

    async def _pause(self, records: int) -> None:
        """Waits before the next request after a run of whole requests rejected for good
        (a backend that rejects everything gets the back-off, not the whole backlog at
        full speed); logs on pauses 1, 2, 4, 8, …"""
        delay = self._pace.next_delay()
        n = self._pace.attempt
        if n & (n - 1) == 0:
            log.warning(
                "http_rejections_paced",
                exporter=self.name,
                url=self.target,
                rejected_in_row=self._rejected_in_row,
                records=records,
                pause=round(delay, 3),
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
        self._told_misconfigured = None

    def excerpt(self, body: bytes) -> str:
        text = body[: EXCERPT * 4].decode("utf-8", "replace")
        return self.scrub(text)[:EXCERPT]
