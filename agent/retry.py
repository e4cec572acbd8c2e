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

``Retry-After`` can only lengthen a wait, never shorten it: the back-off's wait is the
floor, a valid hint longer than that replaces it, capped at ``max_hint``. So a server that
answers ``Retry-After: 0`` (or a date in the past) gets the same back-off as one that says
nothing, not a flood. A hint is valid as delay-seconds (digits, optionally with a
fraction: ``120``, ``1.5``) or an HTTP date; anything else (``-1``, ``nan``, ``inf``,
``1e3``, garbage) is invalid: ``parse_retry_after`` raises ``ValueError`` and the lenient
``retry_after_seconds`` returns None (no hint), and the caller logs it (once).
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import re
import time
from datetime import UTC

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

    ``hint`` (seconds, from a server's ``Retry-After``) can only lengthen the back-off's
    wait: the wait is ``max(back-off, min(hint, max_hint))``. A hint that is not a finite
    number of seconds >= 0 is ignored.
    """

    def __init__(self, backoff: Backoff, max_hint: float = float("inf")) -> None:
        self.backoff = backoff
        self.max_hint = max_hint
        self.attempt = 0  # failures since the last success

    def next_delay(self, hint: float | None = None) -> float:
        """The wait after one more failure (and counts it)."""
        delay = self.backoff.delay(self.attempt)
        if hint is not None and math.isfinite(hint) and hint > delay:
            delay = max(delay, min(hint, self.max_hint))
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


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_FAR = 1e9  # seconds (30 years): longer than any max_hint


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now (>= 0): delay-seconds or an HTTP date
    (a date in the past is 0). None when there is no header (or an empty one);
    ``ValueError`` when there is one but it is neither (negative, ``nan``, ``inf``,
    exponents, garbage)."""
    text = (value or "").strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        return min(float(text), _FAR)  # 400 digits: inf, and as good as forever
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise ValueError(f"Retry-After is neither seconds nor an HTTP date: {value!r}") from None
    if when.tzinfo is None:  # "-0000": UTC, says RFC 5322
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``parse_retry_after``, with an invalid header taken as no header (None)."""
    try:
        return parse_retry_after(value, now)
    except ValueError:
        return None
