"""A real Prometheus server (Debian's package) scrapes the agent: the endpoint is usable."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.helpers import free_port


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.fail("no prometheus binary: `make test` installs Debian's prometheus package")
    return path


async def query(session: aiohttp.ClientSession, port: int, promql: str) -> list:
    async with session.get(
        f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}
    ) as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_scrapes_the_agent(
    start_agent, containers, tmp_path: Path, prometheus_bin: str
) -> None:
    agent_port, prom_port = free_port(), free_port()
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "records-0.ndjson")},
            "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{agent_port}"},
        },
        stats={"interval_seconds": 1},
    )
    name = f"prom-{containers.run_id}"
    cid = await containers.run("while :; do echo tick; usleep 20000; done", name=name)
    await agent.wait_for(lambda: len(agent.logs(cid)) > 5, what="some lines")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: container-agent\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - a server for the duration of the test
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                try:
                    cpu = await query(
                        session, prom_port, f'container_cpu_usage_seconds_total{{name="{name}"}}'
                    )
                    rate = await query(
                        session, prom_port, f'rate(container_log_lines_total{{name="{name}"}}[5s])'
                    )
                    if cpu and any(float(r["value"][1]) > 0 for r in rate):
                        break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "Prometheus never had the agent's series"
                await asyncio.sleep(0.5)
            async with session.get(f"http://127.0.0.1:{prom_port}/api/v1/targets") as resp:
                targets = (await resp.json())["data"]["activeTargets"]
        assert len(targets) == 1
        assert targets[0]["health"] == "up", targets[0]
        assert targets[0]["lastError"] == ""
        assert cpu[0]["metric"]["name"] == name and cpu[0]["metric"]["cpu"] == "total"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
