"""The file exporter is exactly-once across a SIGKILL: the agent is killed mid-stream and
started again on the same output file; the lines of the last checkpoint interval are read
again, and the exporter does not write them twice (see exporters/file.py)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.delivery.test_checkpoints import agent_config, start, wait_checkpoint

N = 10000  # lines per container


def strict_logs(path: Path) -> list[dict[str, Any]]:
    """Every line must parse (a cut record, from the kill, must have been repaired)."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), "a cut record at the end"
    return [r for r in map(orjson.loads, data.splitlines()) if r["kind"] == "log"]


def complete_logs(path: Path) -> list[dict[str, Any]]:
    """The whole records of a file being written (a last half line is not one yet)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [r for r in map(orjson.loads, data.splitlines()) if r["kind"] == "log"]


@pytest.mark.parametrize("source", ["api", "files"])
async def test_sigkill_mid_stream_writes_every_line_once(
    engine_host: str, containers: Any, tmp_path: Path, source: str
) -> None:
    logs_cfg: dict[str, Any] = {"source": "api"}
    if source == "files":
        info = await containers.docker.system.info()
        logs_cfg = {"source": "files", "containers_dir": f"{info['DockerRootDir']}/containers"}
    cfg = agent_config(tmp_path, engine_host, containers.run_id, "out", logs_cfg)
    out = tmp_path / "out.ndjson"
    script = (
        f'i=0; while [ $i -lt {N} ]; do echo "seq $i"; i=$((i+1)); '
        "[ $((i % 100)) -eq 0 ] && usleep 20000; done"
    )
    first = start(cfg, tmp_path)
    try:
        await asyncio.sleep(1.0)
        ids = [await containers.run(script) for _ in range(3)]
        for _ in range(600):
            if len(complete_logs(out)) >= 6000:
                break
            await asyncio.sleep(0.1)
        await wait_checkpoint(tmp_path / "state" / "checkpoints.json", ids)
        first.send_signal(signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, 30) == -9
    finally:
        if first.poll() is None:
            first.kill()
    written_first = len(complete_logs(out))
    (tmp_path / "out.stderr").rename(tmp_path / "first.stderr")
    second = start(cfg, tmp_path)  # the same config: the same output file
    try:
        for cid in ids:
            await containers.wait(cid, timeout=120)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            got = complete_logs(out)
            per = {cid: {r["message"] for r in got if r["container_id"] == cid} for cid in ids}
            if all(len(v) == N for v in per.values()):
                break
            assert asyncio.get_running_loop().time() < deadline, {
                c[:12]: N - len(v) for c, v in per.items()
            }
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # anything written twice would arrive by now
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 30) == 0
    finally:
        if second.poll() is None:
            second.kill()
    assert 0 < written_first < 3 * N  # killed mid-stream
    records = strict_logs(out)
    for cid in ids:
        seq = [int(r["message"].split()[1]) for r in records if r["container_id"] == cid]
        assert seq == list(range(N)), "a line lost or written twice"
    err = (tmp_path / "out.stderr").read_text()
    assert "Traceback" not in err
    skipped = [orjson.loads(x) for x in err.splitlines() if "file_duplicates_skipped" in x]
    # The overlap the checkpoint window left (usually some lines) was recognised.
    print("skipped after the restart:", [e["records"] for e in skipped])
