"""The agent's file exporter on a disk that fills mid-run (a 4 MB tmpfs and a filler
file), then gets space back: the output is valid NDJSON holding exactly the lines the
engine holds, each once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from tests.integration.helpers import numbered, until
from tests.unit.delivery.test_fulldisk_buffer import fill, small_tmpfs


def strict_ndjson(path: Path) -> list[dict[str, Any]]:
    """Every line as JSON: a cut record or two glued together fail here."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a cut record at the end"
    return [orjson.loads(line) for line in data.splitlines()]


async def test_a_disk_that_fills_mid_run(start_agent: Any, containers: Any, tmp_path: Path) -> None:
    n = 8000  # ~2.9 MB of records, paced over ~2 s
    with small_tmpfs(tmp_path / "disk", "4m") as disk:
        path = disk / "records.ndjson"
        agent = await start_agent(exporters={"records": {"type": "file", "path": str(path)}})
        runner = agent.runtime.pipeline.runners[0]
        try:
            filler = fill(disk, leave=1024 * 1024)  # the disk fills after ~1 MB of records
            cid = await containers.run(numbered("full", n, every=200, pause_us=50_000))
            await until(lambda: runner.failures > 0, 20, "the disk to fill")
            assert not runner.exporter.health().ok
            await asyncio.sleep(0.5)  # a few retries against the full disk
            filler.unlink()  # space comes back
            await containers.wait(cid)

            def lines() -> int:
                data = path.read_bytes()
                return data.count(b"\n")

            await until(lambda: lines() >= n, 20, "every line after space came back")
            await asyncio.sleep(0.3)  # nothing more (no duplicate) arrives
            assert await agent.stop() == 0
        finally:
            if agent.task is not None and not agent.task.done():
                agent.runtime.stopping.set()
                await asyncio.wait_for(agent.task, 30)
        records = strict_ndjson(path)
    engine = await containers.docker.containers.container(cid).log(stdout=True, stderr=True)
    held = [line.rstrip("\n") for line in engine]
    assert len(held) == n
    got = [r["message"] for r in records if r["kind"] == "log" and r["container_id"] == cid]
    assert got == held == [f"full {i}" for i in range(n)]  # each once, in order, none lost
    assert runner.failures > 0 and runner.exporter.health().ok
