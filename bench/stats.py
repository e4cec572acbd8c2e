"""Stats collection at scale: the agent's and the engine's cost with N idle containers.

For each stats source (cgroup files, the stats API) the agent follows N idle containers
with the prometheus exporter on and the default 10 s interval; over a window it measures
the agent's CPU % and RSS and the engine's CPU % above an idle baseline, then the
``/metrics`` response time and size. It also compares, without the agent, what the engine
spends on N streaming stats requests held open versus one one-shot request per container
every interval (the agent's API mode).

    python -m bench.stats [--stats-containers 100] [--stats-window 30] [--stats-interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    RUN_LABEL,
    BenchEngine,
    CpuMeter,
    agent_command,
    dockerd_pid,
    fmt,
    log,
    machine_info,
    median,
    new_run_id,
    rss_mb,
    socket_path,
    standalone,
    table,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def metrics_text(port: int) -> tuple[float, bytes]:
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
            body = await resp.read()
        return time.perf_counter() - t0, body


async def measure_agent(
    host: str, run_id: str, n: int, source: str, args: argparse.Namespace, baseline: float
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-stats-{source}-"))
    port = free_port()
    config = {
        "engine": {"host": host},
        "agent": {"log_level": "warning", "log_format": "json"},
        "containers": {"include": {"label": [f"{RUN_LABEL}=^{run_id}$"]}},
        "stats": {"source": source, "interval_seconds": args.stats_interval},
        "exporters": {
            "records": {"type": "file", "path": str(workdir / "records.ndjson")},
            "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{port}"},
        },
    }
    (workdir / "agent.yaml").write_text(json.dumps(config))
    err = open(workdir / "agent.stderr", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(  # noqa: ASYNC220 - the agent under test
        [*agent_command(), "run", "--config", str(workdir / "agent.yaml")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError((workdir / "agent.stderr").read_text()[-2000:])
            try:
                _, body = await metrics_text(port)
                if body.count(b"container_cpu_usage_seconds_total{") >= n:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"stats/{source}: /metrics never showed {n} containers")
            await asyncio.sleep(0.5)
        log(f"stats/{source}: all {n} containers sampled; measuring {args.stats_window:g} s")
        meter = CpuMeter(agent=proc.pid, dockerd=dockerd_pid()).start()
        await asyncio.sleep(args.stats_window)
        used = meter.stop()
        times, size = [], 0
        for _ in range(args.scrapes):
            seconds, body = await metrics_text(port)
            times.append(seconds)
            size = len(body)
        return {
            "source": source,
            "agent_cpu_pct": 100 * used["agent"] / args.stats_window,
            "agent_rss_mb": rss_mb(proc.pid),
            "engine_extra_cpu_pct": (
                100 * (used["dockerd"] - baseline) / args.stats_window
                if "dockerd" in used
                else None
            ),
            "scrape_ms_median": 1000 * (median(times) or 0),
            "scrape_bytes": size,
        }
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def engine_cost_streaming(host: str, ids: list[str], window: float) -> float:
    """dockerd CPU % while N streaming stats requests are held open and read."""
    conn = aiohttp.UnixConnector(path=socket_path(host), limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(cid: str) -> None:
            async with session.get(
                f"http://docker/containers/{cid}/stats",
                params={"stream": "1"},
                timeout=aiohttp.ClientTimeout(total=None),
            ) as resp:
                async for _ in resp.content.iter_any():
                    pass

        tasks = [asyncio.create_task(one(c)) for c in ids]
        await asyncio.sleep(3)  # let every stream open
        meter = CpuMeter(dockerd=dockerd_pid()).start()
        await asyncio.sleep(window)
        used = meter.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 100 * used.get("dockerd", 0.0) / window


async def engine_cost_one_shot(host: str, ids: list[str], window: float, interval: float) -> float:
    """dockerd CPU % with one one-shot stats request per container every interval."""
    conn = aiohttp.UnixConnector(path=socket_path(host), limit=8)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(cid: str) -> None:
            async with session.get(
                f"http://docker/containers/{cid}/stats",
                params={"stream": "0", "one-shot": "1"},
            ) as resp:
                await resp.read()

        meter = CpuMeter(dockerd=dockerd_pid()).start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < window:
            start = time.monotonic()
            await asyncio.gather(*(one(c) for c in ids))
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - start)))
        used = meter.stop()
        return 100 * used.get("dockerd", 0.0) / (time.monotonic() - t0)


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    host = engine.host
    n = args.stats_containers
    run_id = new_run_id()
    info = await machine_info(engine)
    ids: list[str] = []
    try:
        log(f"stats: starting {n} idle containers")
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-stats-{i}" for i in range(n)],
            [["sleep", "3600"]] * n,
            run_id,
        )
        await engine.start_many(ids)
        await asyncio.sleep(3)
        log(f"stats: engine baseline for {args.stats_window:g} s")
        meter = CpuMeter(dockerd=dockerd_pid()).start()
        await asyncio.sleep(args.stats_window)
        baseline = meter.stop().get("dockerd", 0.0)
        rows = []
        for source in ("cgroup", "api"):
            rows.append(await measure_agent(host, run_id, n, source, args, baseline))
        log("stats: engine cost of streaming vs one-shot stats requests")
        streaming = await engine_cost_streaming(host, ids, args.stats_window)
        one_shot = await engine_cost_one_shot(host, ids, args.stats_window, args.stats_interval)
        base_pct = 100 * baseline / args.stats_window
    finally:
        await engine.remove(ids)
    return {
        "machine": info,
        "params": {
            "containers": n,
            "window_s": args.stats_window,
            "interval_s": args.stats_interval,
        },
        "agent": rows,
        "engine_baseline_cpu_pct": base_pct,
        "engine_streaming_cpu_pct": streaming - base_pct,
        "engine_one_shot_cpu_pct": one_shot - base_pct,
    }


def report(result: dict[str, Any]) -> str:
    rows = result["agent"]
    n = result["params"]["containers"]
    lines = [
        table(
            [
                "source",
                "agent CPU %",
                "agent RSS MB",
                "engine extra CPU %",
                "scrape ms",
                "scrape KB",
            ],
            [
                [
                    r["source"],
                    fmt(r["agent_cpu_pct"]),
                    fmt(r["agent_rss_mb"], 1),
                    fmt(r["engine_extra_cpu_pct"]),
                    fmt(r["scrape_ms_median"], 1),
                    fmt(r["scrape_bytes"] / 1024, 1),
                ]
                for r in rows
            ],
        ),
        f"engine CPU % above idle for {n} containers: {n} streaming stats requests held "
        f"open {fmt(result['engine_streaming_cpu_pct'])} %, one one-shot request each per "
        f"{result['params']['interval_s']:g} s {fmt(result['engine_one_shot_cpu_pct'])} %",
    ]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stats-containers", type=int, default=100)
    p.add_argument("--stats-window", type=float, default=30.0)
    p.add_argument("--stats-interval", type=float, default=10.0)
    p.add_argument("--scrapes", type=int, default=20)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
