"""Checkpoint file cases mutation testing found unguarded (mutmut over checkpoint.py)."""

from __future__ import annotations

from pathlib import Path

import orjson

from agent.delivery.checkpoint import CheckpointStore
from agent.positions import FileMark, Position

T1 = "2026-01-01T00:00:01.000000000Z"


def test_a_file_mark_holding_both_streams_loads(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path), 1.0)
    both = {"stdout": Position(T1, 2), "stderr": Position(T1, 1)}
    store.write({"c1": dict(both)}, {"c1": FileMark(5, 500, T1, dict(both))})
    positions, marks = CheckpointStore(str(tmp_path), 1.0).load()
    assert positions == {"c1": both} and marks["c1"].streams == both


def test_a_written_at_that_is_not_a_number_is_ignored_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "checkpoints.json").write_bytes(
        orjson.dumps({"version": 1, "written_at": "yesterday", "containers": {}})
    )
    store = CheckpointStore(str(tmp_path), 1.0)
    assert store.load() == ({}, {}) and store.written_at == 0.0


def test_the_first_write_makes_the_state_directory_and_its_parents(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "a" / "b" / "state"), 1.0)
    assert store.write({"c1": {"stdout": Position(T1, 1)}}) is True
    assert (tmp_path / "a" / "b" / "state" / "checkpoints.json").exists()
