"""What every test may use: the seed of the randomised tests.

A test that draws random data takes the ``seed`` fixture and builds its generator from
it (``random.Random(seed + case)`` for its cases), never from the global ``random``. The
seed is 0, so that every run draws the same data, unless ``CA_TEST_SEED`` gives another
(``CA_TEST_SEED=random`` draws one). It is shown in the run's header and printed by each
test that takes it (pytest shows that output when the test fails), so that a failure
replays with ``CA_TEST_SEED=<n> make unit`` (or ``.venv/bin/pytest <test id>``).
"""

from __future__ import annotations

import functools
import os
import random
from typing import Any

import pytest

SEED_ENV = "CA_TEST_SEED"


@functools.cache
def session_seed() -> int:
    """``CA_TEST_SEED``: an integer, ``random`` (one drawn for this run), or unset (0)."""
    value = os.environ.get(SEED_ENV, "").strip()
    if not value:
        return 0
    if value == "random":
        return random.SystemRandom().randrange(1 << 32)
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV}={value!r}: an integer, or 'random'") from None


def pytest_configure(config: pytest.Config) -> None:
    session_seed()  # a bad CA_TEST_SEED stops the run before any test


def pytest_report_header(config: pytest.Config) -> str:
    seed = session_seed()
    return f"randomised tests: {SEED_ENV}={seed} (replay: {SEED_ENV}={seed} make unit)"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if terminalreporter.stats.get("failed") or terminalreporter.stats.get("error"):
        seed = session_seed()
        terminalreporter.write_line(f"randomised tests ran with {SEED_ENV}={seed}")


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The run's seed; printed, with how to replay this test."""
    value = session_seed()
    print(f"seed={value} (replay: {SEED_ENV}={value} .venv/bin/pytest '{request.node.nodeid}')")
    return value
