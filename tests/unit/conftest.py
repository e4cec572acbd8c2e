"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from agent import speedups
from agent.engine import httpstream
from agent.sources.api import decoder as logstream


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test with the C extension's loops and again with the Python ones: both must
    give the same results. The extension must be built here (``make`` builds it; the
    machines have a compiler), so a broken build fails rather than skips."""
    module: ModuleType | None = None
    if request.param == "c":
        module = speedups.speedups or speedups._load_extension()
        assert module is not None, "agent._speedups is not built"
    monkeypatch.setattr(logstream, "speedups", module)
    monkeypatch.setattr(httpstream, "speedups", module)
    yield request.param
