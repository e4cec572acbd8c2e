"""A container's rate limit: lines per second and message bytes per second, each a token
bucket with a burst (default: one second's worth).

``delay`` mode lets every line through and says how long the container's reader should
wait after each slice of a batch (``pieces``, ``delay``; slices of 50 ms worth): it reads
no faster than the limit, and the engine keeps the rest in the container's log meanwhile;
nothing is lost, and the reader catches up when the container calms down. ``drop`` mode
drops lines over the limit, counts them (per container) and, once per
``summary_interval_seconds`` with drops, emits one record ``N lines dropped by rate
limit`` (level ``warning``, ``fields``: ``dropped_lines``, ``dropped_bytes``,
``reason``). Dropped lines are dropped on purpose: the next record of their stream (a
kept line or the summary) accounts for them, so the checkpoint moves past them.

Sizes are message lengths in characters (bytes for ASCII text), as the agent's log byte
counters count them.
"""

from __future__ import annotations

import operator
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.processing.config import RateLimitConfig
from agent.processing.span import Carry, extra_of
from agent.record import ContainerMeta, Record

_message_of = operator.attrgetter("message")
SLICES_PER_SECOND = 20  # delay mode: the reader is paced in slices of 50 ms
_stream_of = operator.attrgetter("stream")


class _Bucket:
    __slots__ = ("burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int | None) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, round(rate)))
        self.tokens = self.burst

    def refill(self, elapsed: float) -> None:
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)


class RateLimit:
    """The rate-limit stage of one container."""

    name = "rate_limit"

    def __init__(
        self,
        config: RateLimitConfig,
        meta: ContainerMeta,
        counters: Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.meta = meta
        self.clock = clock
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.lines = (
            _Bucket(config.lines_per_second, config.burst_lines)
            if config.lines_per_second
            else None
        )
        self.bytes = (
            _Bucket(config.bytes_per_second, config.burst_bytes)
            if config.bytes_per_second
            else None
        )
        self.drop = config.mode == "drop"
        self.holds = self.drop
        self.carry = Carry()
        self.interval = config.summary_interval_seconds
        self._last = clock()
        self._window: float | None = None  # when the first drop of this interval came
        self._dropped = 0
        self._dropped_bytes = 0

    @property
    def settled(self) -> bool:
        return not self.carry

    def _refill(self) -> float:
        now = self.clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0:
            if self.lines is not None:
                self.lines.refill(elapsed)
            if self.bytes is not None:
                self.bytes.refill(elapsed)
        return now

    def delay(self) -> float:
        """``delay`` mode: seconds until the buckets are out of debt."""
        self._refill()
        wait = 0.0
        if self.lines is not None and self.lines.tokens < 0:
            wait = -self.lines.tokens / self.lines.rate
        if self.bytes is not None and self.bytes.tokens < 0:
            wait = max(wait, -self.bytes.tokens / self.bytes.rate)
        return wait

    def deadline(self) -> float | None:
        return self._window + self.interval if self._window is not None else None

    def pieces(self, batch: list[Record]) -> list[list[Record]]:
        """``delay`` mode: the batch in slices of about 50 ms worth of the limit, so that
        the reader is paced smoothly rather than a whole socket's worth at a time."""
        n = len(batch)
        per = n
        if self.lines is not None:
            per = min(per, max(1, round(self.lines.rate / SLICES_PER_SECOND)))
        if self.bytes is not None:
            size = sum(map(len, map(_message_of, batch))) or 1
            per = min(per, max(1, round(n * self.bytes.rate / SLICES_PER_SECOND / size)))
        if per >= n:
            return [batch]
        return [batch[i : i + per] for i in range(0, n, per)]

    def process(self, batch: list[Record]) -> list[Record]:
        now = self._refill()
        size = sum(map(len, map(_message_of, batch)))
        lines, nbytes = self.lines, self.bytes
        if not self.drop:
            if lines is not None:
                lines.tokens -= len(batch)
            if nbytes is not None:
                nbytes.tokens -= size
            return batch
        out: list[Record] = []
        if self._window is not None and now >= self._window + self.interval:
            out += self._summary()
        if (lines is None or lines.tokens >= len(batch)) and (
            nbytes is None or nbytes.tokens >= size
        ):
            if lines is not None:
                lines.tokens -= len(batch)
            if nbytes is not None:
                nbytes.tokens -= size
            if self.carry:
                self._attach_first(batch)
            out += batch
        else:
            out += self._some(batch, now)
        self._note_last(batch)
        return out

    def _some(self, batch: list[Record], now: float) -> list[Record]:
        lines, nbytes = self.lines, self.bytes
        carry = self.carry
        ends = carry.ends
        out: list[Record] = []
        dropped = dropped_bytes = 0
        for r in batch:
            n = len(r.message or "")
            if (lines is not None and lines.tokens < 1) or (
                nbytes is not None and nbytes.tokens < n
            ):
                carry.drop(r)
                dropped += 1
                dropped_bytes += n
                continue
            if lines is not None:
                lines.tokens -= 1
            if nbytes is not None:
                nbytes.tokens -= n
            if ends and (r.stream or "stdout") in ends:
                carry.attach(r)
            out.append(r)
        if dropped:
            if self._window is None:
                self._window = now
            self._dropped += dropped
            self._dropped_bytes += dropped_bytes
            self.counters["rate_limited_lines"] += dropped
            self.counters["rate_limited_bytes"] += dropped_bytes
        return out

    def _attach_first(self, batch: list[Record]) -> None:
        streams = list(map(_stream_of, batch))
        for stream in list(self.carry.ends):
            try:
                i = streams.index(stream)
            except ValueError:
                continue
            self.carry.attach(batch[i])

    def _note_last(self, batch: list[Record]) -> None:
        """Each stream's last stamp seen, for a summary made after it (``Carry.take``)."""
        streams = list(map(_stream_of, batch))
        streams.reverse()
        last = len(batch) - 1
        for stream in ("stdout", "stderr"):
            try:
                i = last - streams.index(stream)
            except ValueError:
                continue
            r = batch[i]
            extra = r.extra
            self.carry.last[stream] = (
                r.timestamp if extra is None or extra.end is None else extra.end[0]
            )

    def _summary(self) -> list[Record]:
        """The interval's summary record, accounting for the dropped lines of one stream
        (those of the other, if any, go with its next record)."""
        n, nbytes = self._dropped, self._dropped_bytes
        self._window = None
        self._dropped = self._dropped_bytes = 0
        if not n:
            return []
        streams = list(self.carry.ends) or list(self.carry.last)
        stream = streams[-1] if streams else "stdout"
        end = self.carry.take(stream)
        if end is None:  # pragma: no cover - a drop always notes its stream
            return []
        r = Record.log(end[0], self.meta, stream, f"{n} lines dropped by rate limit", False)
        extra = extra_of(r)
        extra.level = "warning"
        extra.fields = {"dropped_lines": n, "dropped_bytes": nbytes, "reason": "rate_limit"}
        extra.end = end
        self.counters["rate_limit_summaries"] += 1
        return [r]

    def flush(self, now: float, force: bool) -> list[Any]:
        if self._window is not None and (force or now >= self._window + self.interval):
            return self._summary()
        return []
