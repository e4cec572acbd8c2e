"""The per-container rate limit: delay mode asks the reader to wait; drop mode drops,
counts, summarises once per interval, and the positions move past dropped lines."""

from __future__ import annotations

from collections import Counter

import pytest

from agent.positions import Position, advance
from agent.processing.config import RateLimitConfig
from agent.processing.limit import RateLimit
from agent.record import Record
from tests.unit.processing.conftest import meta, records, stamp


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kw: object) -> tuple[RateLimit, Counter[str]]:
    c: Counter[str] = Counter()
    return RateLimit(RateLimitConfig.model_validate(kw), meta(), c, clock), c


def test_delay_mode_lets_everything_through_and_says_how_long_to_wait() -> None:
    clock = Clock()
    lim, _ = limiter(clock, lines_per_second=100)
    batch = records([f"l{i}" for i in range(300)])
    assert lim.process(batch) is batch
    assert lim.delay() == pytest.approx(2.0)  # 300 - 100 burst = 200 over, at 100/s
    clock.now = 1.0
    assert lim.delay() == pytest.approx(1.0)
    clock.now = 5.0
    assert lim.delay() == 0.0


def test_delay_mode_by_bytes() -> None:
    clock = Clock()
    lim, _ = limiter(clock, bytes_per_second=1000, burst_bytes=1000)
    lim.process(records(["x" * 500] * 4))
    assert lim.delay() == pytest.approx(1.0)


def test_drop_mode_drops_counts_and_summarises_once_per_interval() -> None:
    clock = Clock()
    lim, c = limiter(
        clock, lines_per_second=10, burst_lines=10, mode="drop", summary_interval_seconds=5
    )
    out = lim.process(records([f"a{i}" for i in range(25)]))
    assert [r.message for r in out] == [f"a{i}" for i in range(10)]
    assert c == Counter({"rate_limited_lines": 15, "rate_limited_bytes": 45})
    assert lim.deadline() == 5.0 and not lim.settled
    clock.now = 1.0  # 10 more tokens
    out = lim.process(records([f"b{i}" for i in range(12)], start=100))
    assert [r.message for r in out] == [f"b{i}" for i in range(10)]
    clock.now = 6.0
    out = lim.process(records(["c0"], start=200))
    summary, line = out
    assert summary.message == "17 lines dropped by rate limit"
    assert summary.level == "warning"
    assert summary.fields == {
        "dropped_lines": 17,
        "dropped_bytes": 45 + 6,
        "reason": "rate_limit",
    }
    assert line.message == "c0" and lim.deadline() is None and lim.settled


def test_positions_move_past_dropped_lines() -> None:
    clock = Clock()
    lim, _ = limiter(clock, lines_per_second=2, burst_lines=2, mode="drop")
    recs = records([f"l{i}" for i in range(6)])
    out = lim.process(recs)
    positions: dict[str, Position] = {}
    advance(positions, out)
    assert positions["stdout"] == Position(recs[1].timestamp, 1)
    flushed = lim.flush(100.0, force=True)  # the summary takes the dropped lines
    assert len(flushed) == 1 and flushed[0].timestamp == recs[-1].timestamp
    advance(positions, flushed)
    assert positions["stdout"] == Position(recs[-1].timestamp, 1)


def test_summary_with_nothing_left_to_carry_counts_no_line() -> None:
    """Dropped lines already carried by a kept line: the summary accounts for none."""
    clock = Clock()
    lim, _ = limiter(clock, lines_per_second=1, burst_lines=1, mode="drop")
    m = meta()
    ts = stamp(3)
    a = [Record.log(ts, m, "stderr", "x", False), Record.log(ts, m, "stderr", "y", False)]
    out = lim.process(a)  # x kept, y dropped (carried)
    clock.now = 1.0
    out += lim.process([Record.log(ts, m, "stderr", "z", False)])  # kept: takes y
    summary = lim.flush(100.0, force=True)
    positions: dict[str, Position] = {}
    advance(positions, out + summary)
    assert positions["stderr"] == Position(ts, 3)
    assert summary[0].extra.end == (ts, 0, True)
