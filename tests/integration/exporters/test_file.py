"""The file exporter with real containers: per-container files from a path template,
rotated by size and gzipped, hold every line once and in order."""

from __future__ import annotations

import asyncio
import gzip
import time
from pathlib import Path
from typing import Any

import orjson

from exporters.file import rotated_files


def _read_listed(path: Path) -> list[dict[str, Any]]:
    out = []
    for p in [*(q for q, _, tmp in rotated_files(str(path)) if not tmp), str(path)]:
        data = Path(p).read_bytes()
        if p.endswith(".gz"):
            data = gzip.decompress(data)
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


def read_all(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path`` and its rotated files. The agent gzips a rotated file (a
    rename) while this runs: one listed a moment ago may be gone, then it lists again."""
    for _ in range(50):
        try:
            return _read_listed(path)
        except FileNotFoundError:
            time.sleep(0.01)
    return _read_listed(path)


async def test_template_rotation_and_gzip(
    start_agent: Any, containers: Any, tmp_path: Path
) -> None:
    n = 3000
    out = tmp_path / "logs"
    agent = await start_agent(
        exporters={
            "records": {
                "type": "file",
                "path": str(out / "%Y-%m-%d" / "{container_name}.ndjson"),
                "rotate": {"max_bytes": 64 * 1024, "max_files": None, "compress": True},
            }
        }
    )
    names = [f"rot{k}-{containers.run_id}" for k in range(2)]
    ids = [
        await containers.run(
            f'i=0; while [ $i -lt {n} ]; do echo "{name} $i"; i=$((i+1)); done', name=name
        )
        for name in names
    ]
    for cid in ids:
        await containers.wait(cid)
    day = time.strftime("%Y-%m-%d", time.gmtime())
    paths = [out / day / f"{name}.ndjson" for name in names]

    def logs(path: Path) -> list[str]:
        if not path.exists():
            return []
        return [r["message"] for r in read_all(path) if r["kind"] == "log"]

    await agent.wait_for(lambda: all(len(logs(p)) >= n for p in paths), what="every line")
    await agent.stop()
    for name, path in zip(names, paths, strict=True):
        assert logs(path) == [f"{name} {i}" for i in range(n)]
        rotated = rotated_files(str(path))
        assert len(rotated) >= 3  # ~3000 records of ~350 bytes in 64 KiB files
        assert all(gz for _, gz, _ in rotated)  # the agent's stop waited for the gzip
    await asyncio.sleep(0)
