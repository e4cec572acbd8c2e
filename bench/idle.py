"""The agent's footprint while following many idle containers.

Starts the agent, then N containers running ``sleep 3600``; once the agent has written a
start event for each of them (it follows a container before recording its start) and a few
seconds more have passed for the log streams to open, measures the agent's CPU and RSS over
a fixed window.

    python -m bench.idle [--idle-containers 50] [--idle-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    CLK_TCK,
    AgentProcess,
    BenchEngine,
    CpuMeter,
    OthersMeter,
    add_quiet_argument,
    add_retries_argument,
    dockerd_pid,
    log,
    new_run_id,
    peak_rss_mb,
    rss_mb,
    skewed,
    standalone,
    table,
    wait_quiet,
)


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith("socket:"):
                count += 1
    return count


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    n = args.idle_containers
    run_id = new_run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-{run_id}-"))
    agent = AgentProcess(engine.host, run_id, workdir)
    ids: list[str] = []
    result: dict[str, Any] = {"params": {"containers": n, "seconds": args.idle_seconds}}
    try:
        await wait_quiet(engine, args.quiet_wait)
        agent.start()
        await agent.wait_ready(engine)
        log(f"idle: starting {n} containers (sleep 3600)")
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-idle-{i}" for i in range(n)], [["sleep", "3600"]] * n, run_id
        )
        t0 = time.perf_counter()
        await engine.start_many(ids)
        deadline = t0 + 120
        while not set(ids) <= agent.tail.event_ids("start"):
            agent.check_alive()
            if time.perf_counter() > deadline:
                seen = len(set(ids) & agent.tail.event_ids("start"))
                raise TimeoutError(f"idle: the agent recorded the start of {seen}/{n} containers")
            await asyncio.sleep(0.1)
            agent.tail.poll()
        result["all_followed_s"] = time.perf_counter() - t0
        await asyncio.sleep(args.idle_settle)
        result["open_sockets"] = open_sockets(agent.pid)
        for attempt in range(args.retries + 1):
            log(f"idle: measuring the agent for {args.idle_seconds:g} s")
            foreign = await engine.foreign_running()
            others = OthersMeter().start()
            meter = CpuMeter(agent=agent.pid, dockerd=dockerd_pid()).start()
            t1 = time.perf_counter()
            await asyncio.sleep(args.idle_seconds)
            used = meter.stop()
            elapsed = time.perf_counter() - t1
            others.stop()
            foreign = max(foreign, await engine.foreign_running())
            result.update(
                {
                    "cpu_s": used["agent"],
                    "cpu_pct": 100 * used["agent"] / elapsed,
                    "dockerd_cpu_pct": (
                        100 * used["dockerd"] / elapsed if "dockerd" in used else None
                    ),
                    "rss_mb": rss_mb(agent.pid),
                    "peak_rss_mb": peak_rss_mb(agent.pid),
                    "measured_s": elapsed,
                    "machine_busy_pct": used.get("machine_busy_pct"),
                    "others_cpu_s": others.cpu_s,
                    "others_top": others.top,
                    "foreign_containers": foreign,
                    "skewed": skewed(others.cpu_s, elapsed, foreign),
                    "discarded_attempts": attempt,
                }
            )
            if not result["skewed"]:
                break
            log(
                f"  idle: others used {others.cpu_s:.1f} CPU s, {foreign} other container(s)"
                + ("; measuring again" if attempt < args.retries else "; kept")
            )
            await wait_quiet(engine, args.quiet_wait)
    finally:
        try:
            result["exit_code"] = await agent.stop()
        finally:
            await engine.remove(ids)
            await engine.cleanup(run_id)
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    warn = []
    if result.get("skewed"):
        warn.append(
            f"WARNING: others used the machine during the window ({result['others_cpu_s']:.1f} "
            f"CPU s, {result['foreign_containers']} other container(s)): figures are skewed"
        )
    return "\n".join(
        [
            *warn,
            f"idle: the agent following {p['containers']} idle containers, "
            f"{result['measured_s']:.1f} s window (CPU resolution "
            f"{100 / CLK_TCK / result['measured_s']:.2f} %)",
            table(
                [
                    "RSS MB",
                    "peak RSS MB",
                    "CPU s",
                    "CPU %",
                    "dockerd CPU %",
                    "sockets",
                    "all followed s",
                    "machine busy %",
                ],
                [
                    [
                        result["rss_mb"],
                        result["peak_rss_mb"],
                        result["cpu_s"],
                        result["cpu_pct"],
                        result["dockerd_cpu_pct"],
                        result["open_sockets"],
                        result["all_followed_s"],
                        result.get("machine_busy_pct"),
                    ]
                ],
            ),
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("idle")
    g.add_argument("--idle-containers", type=int, default=50, help="idle containers (50)")
    g.add_argument("--idle-seconds", type=float, default=20.0, help="measured window (20)")
    g.add_argument("--idle-settle", type=float, default=3.0, help="wait after all are followed (3)")
    add_quiet_argument(parser)
    add_retries_argument(parser)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
