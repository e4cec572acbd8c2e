"""Helpers for the processing stages' unit tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.record import ContainerMeta, Record, format_timestamp_ns

DATA = Path(__file__).parent / "data"
CID = "c" * 64


def meta(labels: dict[str, str] | None = None, name: str = "/app") -> ContainerMeta:
    return ContainerMeta(CID, name, "img:1", labels or {}, "host1")


def stamp(i: int) -> str:
    return format_timestamp_ns(1_800_000_000_000_000_000 + i * 1000)


def records(
    messages: list[str], stream: str = "stdout", m: ContainerMeta | None = None, start: int = 0
) -> list[Record]:
    m = m or meta()
    return [Record.log(stamp(start + i), m, stream, msg, False) for i, msg in enumerate(messages)]


def traces() -> dict[str, Any]:
    return json.loads((DATA / "traces.json").read_text())


@pytest.fixture(scope="session")
def built() -> Any:
    """agent._speedups, loaded even in a pure-Python run: its functions are tested against
    the Python paths they stand in for."""
    from agent import speedups

    module = speedups.speedups or speedups._load_extension()
    assert module is not None, "agent._speedups is not built"
    return module
