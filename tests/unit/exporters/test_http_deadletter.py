"""The dead-letter file: under state_dir by default, whole records only on a full disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from agent.record import Record
from agent.retry import Backoff
from exporters.http.config import HttpConfig
from exporters.http.deadletter import DeadLetters
from exporters.http.exporter import HttpExporter
from tests.unit.delivery.test_fulldisk_buffer import META, small_tmpfs


def test_the_default_dead_letter_file_is_under_state_dir_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = HttpExporter("es", HttpConfig(type="http", url="http://127.0.0.1:1"))
    monkeypatch.chdir(tmp_path)
    exp.place(Path("relative-state"))
    assert exp.dead_letter_path == tmp_path / "relative-state" / "dead-letter" / "es.ndjson"
    config = HttpConfig(type="http", url="http://x", dead_letter_path="dl.ndjson")
    named = HttpExporter("es", config)
    named.place(Path("/elsewhere"))
    assert named.dead_letter_path == tmp_path / "dl.ndjson"


async def test_a_full_disk_leaves_whole_dead_letters_and_the_write_is_retried(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"x" * (200 * 1024))
        failures: list[str] = []
        failed = asyncio.Event()

        def on_failure(reason: str) -> None:
            failures.append(reason)
            failed.set()

        letters = DeadLetters("es", disk / "dl.ndjson", Backoff(0.01, 0.02), on_failure)
        records = [
            Record.log(f"2026-01-01T00:00:00.{i:09d}Z", META, "stdout", "y" * 900, False)
            for i in range(100)
        ]  # ~100 KB: more than is left

        async def free_space_soon() -> None:
            await failed.wait()
            filler.unlink()

        freeing = asyncio.create_task(free_space_soon())
        await asyncio.wait_for(
            letters.write([(r, 400, "bad") for r in records], "ndjson:http://x", True), 10
        )
        await freeing
        lines = (disk / "dl.ndjson").read_bytes().splitlines()
        assert failures and "No space left" in failures[0]
        assert len(lines) == 100 and letters.records == 100
        assert [orjson.loads(line)["timestamp"] for line in lines] == [r.timestamp for r in records]
