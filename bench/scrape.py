"""What scraping ``/metrics`` costs log shipping: delivery lag with and without scrapers.

N containers (300) each print one line a second; the agent (a subprocess with a file and a
prometheus exporter, stats on) ships them. The bench reads the agent's output file as it
grows (every 5 ms) and takes each log line's lag: when it appeared in the file minus its
engine timestamp. In phases of ``--scrape-window`` seconds, in turn and ``--scrape-rounds``
times: no scraper; one scraper hitting /metrics every second; 50 scrapers every second,
all at the same instant (aligned); 50 scrapers every second at random offsets (spread).
Scrapers run in a child process, so that reading their answers does not delay the bench's
own reading of the output file. Per phase: p50 and p99 lag (the median over the rounds),
the agent's CPU, and per scrape the time to the whole answer and its size, plus the
agent's own figures for the copy on the loop and the whole build.

    python -m bench.scrape [--scrape-containers 300] [--scrape-window 30] [--scrape-rounds 2]
        [--agent-src DIR]   # run the agent from another source tree (e.g. an older commit)
    python -m bench.scrape --in-process [--in-process-containers 1000]  # no engine needed:
        # /metrics of a faked agent on a busy loop (bench.scrape_inproc)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from agent.record import timestamp_to_unix
from bench.common import (
    REPO,
    RUN_LABEL,
    AgentProcess,
    BenchEngine,
    CpuMeter,
    add_quiet_argument,
    fmt,
    log,
    median,
    new_run_id,
    standalone,
    table,
    wait_quiet,
)

PHASES = {
    "none": (0, False),
    "1/s": (1, False),
    "50/s aligned": (50, False),
    "50/s spread": (50, True),
}
GAP_S = 3.0  # between phases: scrapers stopped, lines not counted
SKIP_S = 1.0  # the start of each phase is not counted either
TICKER = 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 1; done'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class ScrapedAgent(AgentProcess):
    """The agent with a prometheus exporter too, optionally from another source tree."""

    def __init__(self, host: str, run_id: str, workdir: Path, src: str | None) -> None:
        super().__init__(host, run_id, workdir)
        self.port = free_port()
        self.src = src

    def start(self) -> None:
        config = {
            "engine": {"host": self.host},
            "agent": {"log_level": "warning", "log_format": "json"},
            "state_dir": str(self.workdir / "state"),
            "containers": {"include": {"label": [f"{RUN_LABEL}=^{self.run_id}$"]}},
            "exporters": {
                "records": {"type": "file", "path": str(self.records_path)},
                "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{self.port}"},
            },
        }
        source = Path(self.src) if self.src else REPO
        prom = source / "exporters" / "prometheus"
        prom = prom / "config.py" if prom.is_dir() else prom.with_suffix(".py")
        if "max_connections" in prom.read_text():
            # 50 scrapers at once, all served (the default cap, 32, would refuse 18)
            config["exporters"]["metrics"]["max_connections"] = 64  # type: ignore[index]
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        env = dict(os.environ)
        if self.src:
            env["PYTHONPATH"] = self.src
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
                env=env,
            )


class LagTail:
    """Reads the output file as it grows; keeps (engine time, lag) of every log line."""

    LOG = b'{"kind":"log"'

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, float]] = []
        self._rest = b""
        self._file: Any = None

    def poll(self) -> None:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                return
        data = self._file.read()
        if not data:
            return
        now = time.time()
        buf = self._rest + data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        for line in buf[:cut].splitlines():
            if line.startswith(self.LOG):
                stamp = float(timestamp_to_unix(orjson.loads(line)["timestamp"]))
                self.samples.append((stamp, now - stamp))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.poll()
            await asyncio.sleep(0.005)

    def lags(self, start: float, end: float) -> list[float]:
        return [lag for stamp, lag in self.samples if start <= stamp < end]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# -- the scraper child ------------------------------------------------------------------------


async def _scrape_loop(port: int, n: int, spread: bool, seconds: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/metrics"
    times: list[float] = []
    sizes: list[int] = []
    errors = 0
    server: dict[str, list[float]] = {"snapshot": [], "build": []}
    end = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def one(offset: float) -> None:
            nonlocal errors
            tick = time.monotonic() + offset
            while tick < end:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok, body = False, b""
                if ok:
                    times.append(time.perf_counter() - t0)
                    sizes.append(len(body))
                    for key, name in (("snapshot", b"snapshot"), ("build", b"build")):
                        m = re.search(
                            rb"^container_agent_metrics_" + name + rb"_seconds\{[^}]*\} (\S+)",
                            body,
                            re.M,
                        )
                        if m:
                            server[key].append(float(m.group(1)))
                else:
                    errors += 1
                tick += 1.0  # every second, as Prometheus does; a tick missed is skipped
                while tick < time.monotonic():
                    tick += 1.0

        rng = random.Random(7)
        await asyncio.gather(*(one(rng.random() if spread else 0.0) for _ in range(n)))
    return {"times": times, "sizes": sizes, "errors": errors, "server": server}


def scraper_main(argv: list[str]) -> None:
    port, n, spread, seconds = int(argv[0]), int(argv[1]), argv[2] == "spread", float(argv[3])
    out = asyncio.run(_scrape_loop(port, n, spread, seconds))
    sys.stdout.write(json.dumps(out))


async def _scrapers(port: int, n: int, spread: bool, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.scrape",
        "--scraper-child",
        str(port),
        str(n),
        "spread" if spread else "aligned",
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return dict(json.loads(out))


# -- the bench ---------------------------------------------------------------------------------


async def _all_sampled(port: int, n: int, timeout: float) -> None:
    """Until /metrics has a stats series of every container (full-size scrapes)."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                    body = await resp.read()
                if body.count(b"container_cpu_usage_seconds_total{") >= n:
                    return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"scrape: /metrics never showed {n} containers' stats")
            await asyncio.sleep(1)


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    if args.in_process:
        from bench import scrape_inproc

        return {
            "in_process": await scrape_inproc.in_process(
                args.in_process_containers,
                args.in_process_scrapes,
                networks=not args.in_process_no_network,
                load=not args.in_process_idle,
                gzip=args.in_process_gzip,
            )
        }
    n = args.scrape_containers
    run_id = new_run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-scrape-{run_id}-"))
    agent = ScrapedAgent(engine.host, run_id, workdir, args.agent_src)
    ids: list[str] = []
    result: dict[str, Any] = {
        "params": {
            "containers": n,
            "window_s": args.scrape_window,
            "rounds": args.scrape_rounds,
            "agent_src": args.agent_src or "working tree",
        },
        "rounds": [],
    }
    stop = asyncio.Event()
    tail = LagTail(agent.records_path)
    reader = None
    try:
        await wait_quiet(engine, args.quiet_wait)
        agent.start()
        await agent.wait_ready(engine)
        log(f"scrape: starting {n} containers printing a line a second")
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-tick-{i}" for i in range(n)], [["sh", "-c", TICKER]] * n, run_id
        )
        await engine.start_many(ids)
        await _all_sampled(agent.port, n, 180)
        reader = asyncio.create_task(tail.run(stop))
        await asyncio.sleep(5)
        for r in range(args.scrape_rounds):
            for name, (scrapers, spread) in PHASES.items():
                agent.check_alive()
                log(f"scrape: round {r + 1}, {name}: {args.scrape_window:g} s")
                meter = CpuMeter(agent=agent.pid).start()
                start = time.time()
                if scrapers:
                    got = await _scrapers(agent.port, scrapers, spread, args.scrape_window)
                else:
                    await asyncio.sleep(args.scrape_window)
                    got = {"times": [], "sizes": [], "errors": 0, "server": {}}
                end = time.time()
                cpu = meter.stop().get("agent", 0.0)
                await asyncio.sleep(GAP_S)
                lags = tail.lags(start + SKIP_S, end)
                result["rounds"].append(
                    {
                        "round": r,
                        "phase": name,
                        "lines": len(lags),
                        "lag_p50_ms": 1000 * (pct(lags, 0.50) or 0),
                        "lag_p99_ms": 1000 * (pct(lags, 0.99) or 0),
                        "lag_max_ms": 1000 * max(lags, default=0),
                        "agent_cpu_pct": 100 * cpu / (end - start),
                        "scrapes": len(got["times"]),
                        "scrape_errors": got["errors"],
                        "scrape_ms_p50": 1000 * (pct(got["times"], 0.5) or 0),
                        "scrape_ms_p99": 1000 * (pct(got["times"], 0.99) or 0),
                        "scrape_bytes": int(statistics.median(got["sizes"]))
                        if got["sizes"]
                        else None,
                        "snapshot_ms_p50": 1000 * (median(got["server"].get("snapshot", [])) or 0),
                        "build_ms_p50": 1000 * (median(got["server"].get("build", [])) or 0),
                    }
                )
        result["phases"] = {
            name: {
                key: median(r[key] for r in result["rounds"] if r["phase"] == name)
                for key in result["rounds"][0]
                if key not in ("round", "phase")
            }
            for name in PHASES
        }
    finally:
        stop.set()
        if reader is not None:
            await reader
        tail.close()
        try:
            result["exit_code"] = await agent.stop()
        finally:
            await engine.remove(ids)
            await engine.cleanup(run_id)
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def report(result: dict[str, Any]) -> str:
    if "in_process" in result:
        from bench import scrape_inproc

        return scrape_inproc.in_process_report(result["in_process"])
    p = result["params"]
    rows = []
    for name, m in result["phases"].items():
        rows.append(
            [
                name,
                m["lines"],
                m["lag_p50_ms"],
                m["lag_p99_ms"],
                m["lag_max_ms"],
                m["agent_cpu_pct"],
                m["scrapes"],
                m["scrape_errors"],
                m["scrape_ms_p50"] if m["scrapes"] else None,
                m["scrape_ms_p99"] if m["scrapes"] else None,
                fmt(m["scrape_bytes"] / 1e6, 2) if m["scrape_bytes"] else "-",
                m["snapshot_ms_p50"] if m["scrapes"] else None,
                m["build_ms_p50"] if m["scrapes"] else None,
            ]
        )
    return "\n".join(
        [
            f"scrape: {p['containers']} containers x 1 line/s, {p['window_s']:g} s per phase, "
            f"median of {p['rounds']} round(s); agent from {p['agent_src']}",
            table(
                [
                    "scrapers",
                    "lines",
                    "lag p50 ms",
                    "lag p99 ms",
                    "lag max ms",
                    "agent CPU %",
                    "scrapes",
                    "errors",
                    "scrape p50 ms",
                    "scrape p99 ms",
                    "MB",
                    "copy ms",
                    "build ms",
                ],
                rows,
            ),
        ]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scrape")
    g.add_argument("--scrape-containers", type=int, default=300, help="containers (300)")
    g.add_argument("--scrape-window", type=float, default=30.0, help="seconds per phase (30)")
    g.add_argument("--scrape-rounds", type=int, default=2, help="rounds of the phases (2)")
    g.add_argument(
        "--agent-src",
        help="scrape: run the agent from this source tree (PYTHONPATH), e.g. an older commit",
    )
    g.add_argument(
        "--in-process",
        action="store_true",
        help="instead: /metrics of a faked agent in this process (bench.scrape_inproc)",
    )
    g.add_argument("--in-process-containers", type=int, default=1000, help="(1000)")
    g.add_argument("--in-process-scrapes", type=int, default=20, help="gzip, identity in turn (20)")
    g.add_argument(
        "--in-process-no-network", action="store_true", help="no lo counters per container"
    )
    g.add_argument("--in-process-idle", action="store_true", help="no load on the loop")
    g.add_argument(
        "--in-process-gzip", action="store_true", help="the exporter with compression: gzip"
    )
    add_quiet_argument(parser)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--scraper-child":
        scraper_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--in-process-client":
        from bench import scrape_inproc

        scrape_inproc.client_main(sys.argv[2:])
        return
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
