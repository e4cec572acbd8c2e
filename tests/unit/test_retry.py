"""The retry policy: capped exponential back-off with full jitter, and ``Retry-After``
hints that can only lengthen a wait."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from agent.retry import Backoff, Retry, parse_retry_after, retry_after_seconds


class _Top(random.Random):
    """Full jitter pinned to the top of its range: the back-off's ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Bottom(random.Random):
    """Full jitter pinned to the bottom of its range: 0."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_backoff_doubles_up_to_its_cap() -> None:
    retry = Retry(Backoff(0.5, 3.0, _Top()))
    assert [retry.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry.reset() == 5
    assert retry.next_delay() == 0.5


def test_retry_after_only_lengthens_the_wait() -> None:
    retry = Retry(Backoff(1.0, 8.0, _Top()), max_hint=5.0)
    assert retry.next_delay(0.0) == 1.0  # "retry now": the back-off still applies
    assert retry.next_delay(0.5) == 2.0  # shorter than the back-off: the back-off
    assert retry.next_delay(4.5) == 4.5  # longer: the hint
    assert retry.next_delay(60.0) == 8.0  # capped at max_hint, but never below the back-off
    retry = Retry(Backoff(1.0, 8.0, _Top()), max_hint=5.0)
    assert retry.next_delay(60.0) == 5.0
    # The floor is the back-off's wait as drawn (full jitter), whatever the hint.
    retry = Retry(Backoff(1.0, 8.0, _Bottom()), max_hint=5.0)
    assert retry.next_delay(0.0) == 0.0
    assert retry.next_delay(2.0) == 2.0


@pytest.mark.parametrize("hint", [-1.0, float("nan"), float("inf"), float("-inf")])
def test_invalid_hints_are_ignored(hint: float) -> None:
    retry = Retry(Backoff(1.0, 8.0, _Top()), max_hint=300.0)
    assert [retry.next_delay(hint) for _ in range(3)] == [1.0, 2.0, 4.0]


def test_retry_after_values() -> None:
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("9" * 400) == 1e9  # as good as forever (then capped)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31  # type: ignore[operator]
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    minus_zero = email.utils.formatdate(now + 30).replace("+0000", "-0000")
    assert 28 <= parse_retry_after(minus_zero, now=now) <= 31  # type: ignore[operator]


@pytest.mark.parametrize(
    "value", ["-1", "-0.5", "nan", "NaN", "inf", "-inf", "Infinity", "1e3", "0x10", "soon", "1,5"]
)
def test_invalid_retry_after_values(value: str) -> None:
    with pytest.raises(ValueError, match="Retry-After"):
        parse_retry_after(value)
    assert retry_after_seconds(value) is None  # the lenient form: no hint
