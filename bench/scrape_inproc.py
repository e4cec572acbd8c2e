"""``/metrics`` of 1,000 containers in one process, without an engine (``python -m
bench.scrape --in-process``): what ``bench.scale`` measures from its client, here with the
agent's state faked so that a change can be tried in seconds.

A real prometheus exporter serves an inventory of N containers shaped like bench.scale's
(64-character ids, a cgroup stats sample each with the counters of ``lo``: their network
is ``none``), on a loop kept busy as the agent's is at 1,000 x 1 line/s: every millisecond
one container's log counters move and ~0.2 ms of Python runs; every ``stats_every`` s a
stats round replaces every sample. A client in a child process (aiohttp, a new session
per scrape, as bench.scale's) scrapes it with ``Accept-Encoding: gzip, deflate``
(aiohttp's default, and Prometheus asks for gzip) and with ``identity``, in turn: time to
the response's head and to the whole body (``--in-process-gzip``: the exporter's
``compression: gzip``). Also, on an idle loop: the copy (``snapshot``) and the build
(``render``) called directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.common import table

# -- the faked agent ---------------------------------------------------------------------------


def _inventory(n: int, networks: bool) -> Any:
    from agent.metrics.inventory import Inventory
    from agent.record import ContainerMeta

    inv = Inventory()
    now = time.time()
    for i in range(n):
        cid = hashlib.sha256(f"c{i}".encode()).hexdigest()
        meta = ContainerMeta(cid, f"/ca-bench-1796196421-c39d84-s{i}", "ca-busybox:latest", {}, "h")
        info = inv.seen_in_listing(meta, "running")
        info.started_at = now - 100 - random.random()
        info.log_source = "files"
        info.memory_limit = 0
    _stats_round(inv, networks)
    return inv


def _stats_round(inv: Any, networks: bool) -> None:
    """Every running container's sample replaced, as the stats collector does."""
    from agent.metrics.sample import NetCounters, StatsSample

    now = time.time()
    r = random.randint
    for info in inv.containers.values():
        old = info.stats
        cpu = (old.cpu_total_ns if old else r(10**7, 10**9)) + r(0, 10**6)
        nets = {"lo": NetCounters(*[r(0, 10**6) for _ in range(8)])} if networks else {}
        info.stats = StatsSample(
            now,
            cpu,
            cpu // 3,
            cpu // 2,
            None,
            2,
            r(10**5, 10**6),
            r(10**5, 10**6),
            r(10**4, 10**5),
            r(10**4, 10**5),
            0,
            2,
            nets,
        )
        info.last_seen = now


class _State:
    """What the exporter's collectors read of ``AgentState``."""

    def __init__(self, inventory: Any) -> None:
        from agent.tap import TapHub

        class Stats:
            cgroup = None
            errors = 0
            last_round_seconds = 0.2

        class Discovery:
            reconnects = 0
            events_seen = 0
            connected = asyncio.Event()

        class Followers:
            followed = len(inventory.containers)
            unavailable = 0
            lines_lost = 0
            processing = None

        class Pipeline:
            runners: list[Any] = []

        self.inventory = inventory
        self.stats = Stats()
        self.discovery = Discovery()
        self.followers = Followers()
        self.pipeline = Pipeline()
        self.reloader = None
        self.tap = TapHub()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        return True, {}


async def _load(inv: Any, stop: asyncio.Event, networks: bool, stats_every: float) -> None:
    """The agent's loop at 1,000 x 1 line/s, roughly: a line a millisecond, some Python."""
    infos = list(inv.containers.values())
    i, next_round = 0, time.monotonic() + stats_every
    while not stop.is_set():
        await asyncio.sleep(0.001)
        info = infos[i % len(infos)]
        i += 1
        info.log_lines["stdout"] += 1
        info.log_bytes["stdout"] += 12
        ns = time.time_ns()
        info.last_log_timestamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9)) + f".{ns % 10**9:09d}Z"
        )
        end = time.perf_counter() + 0.0002
        while time.perf_counter() < end:
            pass
        if time.monotonic() > next_round:
            _stats_round(inv, networks)
            next_round += stats_every


# -- the client (a child process) ------------------------------------------------------------


async def _client(port: int, scrapes: int, gap: float) -> list[dict[str, Any]]:
    import aiohttp

    out = []
    for i in range(scrapes):
        gzip = i % 2 == 0
        headers = {} if gzip else {"Accept-Encoding": "identity"}
        async with aiohttp.ClientSession() as session:
            t0 = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
                t1 = time.perf_counter()
                body = await resp.read()
                wire = int(resp.headers.get("Content-Length") or 0)
                encoding = resp.headers.get("Content-Encoding", "")
            t2 = time.perf_counter()
        out.append(
            {
                "asked": "gzip" if gzip else "identity",
                "encoding": encoding,
                "head_s": t1 - t0,
                "total_s": t2 - t0,
                "bytes": len(body),
                "wire": wire,
            }
        )
        await asyncio.sleep(gap)
    return out


def client_main(argv: list[str]) -> None:
    out = asyncio.run(_client(int(argv[0]), int(argv[1]), float(argv[2])))
    sys.stdout.write(json.dumps(out))


# -- the bench ---------------------------------------------------------------------------------


def _direct(exporter: Any, repeat: int) -> dict[str, float]:
    """The copy and the build called directly, the loop idle: medians, seconds."""
    from exporters.prometheus.exposition import render

    snaps, builds = [], []
    for i in range(repeat):
        t0 = time.perf_counter()
        snap = exporter._snapshot(t0)
        t1 = time.perf_counter()
        build = getattr(exporter, "_render", None)  # the tree's build, else the older one
        if build is not None:
            build(snap, i % 2 == 1)
        else:
            render(snap, i % 2 == 1, exporter._process)
        builds.append(time.perf_counter() - t1)
        snaps.append(t1 - t0)
    return {"snapshot_s": statistics.median(snaps), "render_s": statistics.median(builds)}


async def in_process(
    n: int = 1000,
    scrapes: int = 20,
    gap: float = 0.5,
    networks: bool = False,
    stats_every: float = 10.0,
    load: bool = True,
    gzip: bool = False,
) -> dict[str, Any]:
    from bench.scrape import free_port
    from exporters.prometheus.config import PrometheusConfig
    from exporters.prometheus.exporter import PrometheusExporter

    random.seed(11)
    inv = _inventory(n, networks)
    port = free_port()
    config: dict[str, Any] = {"type": "prometheus", "listen": f"127.0.0.1:{port}"}
    if gzip:
        config["compression"] = "gzip"
    exporter = PrometheusExporter("metrics", PrometheusConfig(**config))
    exporter.bind(_State(inv))  # type: ignore[arg-type]
    await exporter.start()
    stop = asyncio.Event()
    loader = asyncio.create_task(_load(inv, stop, networks, stats_every)) if load else None
    result: dict[str, Any] = {
        "params": {"containers": n, "scrapes": scrapes, "load": load, "gzip": gzip}
    }
    try:
        await asyncio.sleep(0.5)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.scrape",
            "--in-process-client",
            str(port),
            str(scrapes),
            str(gap),
            stdout=subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result["scrapes"] = json.loads(out)
    finally:
        stop.set()
        if loader is not None:
            await loader
    result["direct"] = _direct(exporter, 10)
    await exporter.close()
    return result


def in_process_report(result: dict[str, Any]) -> str:
    rows = []
    for asked in ("gzip", "identity"):
        got = [s for s in result["scrapes"] if s["asked"] == asked]
        if not got:
            continue
        rows.append(
            [
                asked,
                got[0]["encoding"] or "identity",
                len(got),
                1000 * statistics.median(s["head_s"] for s in got),
                1000 * statistics.median(s["total_s"] for s in got),
                1000 * max(s["total_s"] for s in got),
                statistics.median(s["wire"] for s in got) / 1e6,
                statistics.median(s["bytes"] for s in got) / 1e6,
            ]
        )
    d = result["direct"]
    p = result["params"]
    return "\n".join(
        [
            f"/metrics in process: {p['containers']} containers, loop "
            + ("loaded" if p["load"] else "idle")
            + (", compression: gzip" if p.get("gzip") else "")
            + "; from a client in a child process (medians)",
            table(
                ["asked", "got", "scrapes", "head ms", "whole ms", "max ms", "wire MB", "MB"],
                rows,
            ),
            f"direct, idle loop (medians of 10): snapshot {1000 * d['snapshot_s']:.1f} ms, "
            f"render {1000 * d['render_s']:.1f} ms",
        ]
    )
