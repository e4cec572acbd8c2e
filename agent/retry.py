"""The one retry policy of the agent: every loop that retries uses it.

Capped exponential back-off with full jitter: the n-th wait in a row is uniform in
``[0, min(cap, base * 2**n)]``, so that many readers retrying at once do not hit the engine
or a backend in lockstep. A ``Retry`` is one loop's state (how many failures in a row); the
loop calls ``wait()`` after a failure and ``reset()`` after progress.

Who retries, and with which settings:

* discovery's reconnects, the log readers and the pipeline's exporter workers:
  ``engine.reconnect_min_seconds`` / ``engine.reconnect_max_seconds``;
* the http exporter's requests and dead-letter writes: ``exporters.NAME.retry.*``, and a
  server's ``Retry-After`` hint (``retry_after_seconds``) up to
  ``retry.max_retry_after_seconds``.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time

DEFAULT_INITIAL_SECONDS = 0.5  # the first wait's ceiling
DEFAULT_MAX_SECONDS = 30.0  # the cap of every wait


class Backoff:
    """``delay(n)`` is uniform in [0, min(cap, base * 2**n)]: full jitter."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * (2 ** min(attempt, 62)))

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, self.ceiling(attempt))


class Retry:
    """One retrying loop: failures in a row, and how long to wait after the next one.

    ``hint`` (seconds, from a server's ``Retry-After``) replaces the back-off's wait,
    capped at ``max_hint``.
    """

    def __init__(self, backoff: Backoff, max_hint: float = float("inf")) -> None:
        self.backoff = backoff
        self.max_hint = max_hint
        self.attempt = 0  # failures since the last success

    def next_delay(self, hint: float | None = None) -> float:
        """The wait after one more failure (and counts it)."""
        delay = self.backoff.delay(self.attempt)
        if hint is not None:
            delay = min(hint, self.max_hint)
        self.attempt += 1
        return delay

    async def wait(self, hint: float | None = None) -> float:
        """Counts a failure and sleeps the policy's wait; returns how long it slept."""
        delay = self.next_delay(hint)
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> int:
        """Progress was made: the next failure starts from the first wait again. Returns
        how many failures in a row there had been."""
        failures, self.attempt = self.attempt, 0
        return failures


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
