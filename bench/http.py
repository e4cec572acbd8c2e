"""The http exporter's throughput against the file exporter's, same workload.

Each run starts C fresh containers printing L lines of 100 bytes (``throughput``'s writer)
and measures the agent (``container-agent run`` as a subprocess, following only that run's
containers) from the containers' start until the last line is

* written to its NDJSON file (``file`` exporter), or
* received by a local HTTP receiver on 127.0.0.1 in this process (``http`` exporter, gzip
  on, the format(s) chosen; the receiver decompresses and counts records, and answers 200
  or, for ``elasticsearch``, a ``_bulk`` answer with every item created).

The modes alternate (file, http, file, http, …) and medians of ``--http-runs`` runs are
reported, with the ratio http / file (target: at least 0.8). After the timed part every
output is checked for lost and duplicated lines. Containers carry the bench's owner label
(``bench.common``), and this bench removes only its own runs' containers.

    python -m bench.http [--http-containers 4] [--http-lines 100000] [--http-runs 3]
                         [--http-formats ndjson,loki,elasticsearch,otlp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from bench.common import (
    RESULTS_DIR,
    RUN_LABEL,
    AgentProcess,
    BenchEngine,
    CpuMeter,
    OthersMeter,
    add_quiet_argument,
    add_retries_argument,
    agent_command,
    dockerd_pid,
    engine_host,
    log,
    machine_info,
    machine_line,
    median,
    new_run_id,
    peak_rss_mb,
    run_main,
    skewed,
    table,
    wait_quiet,
    write_json,
)
from bench.throughput import LINE_BYTES, check_output, phase_timeout, writer_command

LOG = b'{"kind":"log"'
EVENT = b'"kind":"event"'


def _fast_inflate() -> None:
    """The receiver's gzip decoding with ISA-L when installed (as the agent's encoding):
    a backend's CPU is not what this bench measures, and it shares the machine's cores."""
    try:
        import aiohttp
        from isal import isal_zlib
    except ImportError:
        return
    with contextlib.suppress(AttributeError):  # aiohttp before 3.12 has no such hook
        aiohttp.set_zlib_backend(isal_zlib)


class Receiver:
    """A minimal backend on 127.0.0.1: keeps bodies (decompressed by aiohttp's server),
    counts log records, notes container start events (for the readiness check)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.bodies: list[bytes] = []
        self.chunks: list[list[bytes]] = []  # ndjson bodies, as received
        self.logs = 0
        self.wire_bytes = 0
        self.requests = 0
        self.started: set[str] = set()
        self.watch_events = True
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        _fast_inflate()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def reset(self) -> None:
        """Forgets what came so far (the readiness check's records) and stops looking for
        events: from here on the receiver only keeps and counts."""
        self.bodies.clear()
        self.chunks.clear()
        self.logs = self.wire_bytes = self.requests = 0
        self.watch_events = False

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.wire_bytes += request.content_length or 0
        if self.fmt == "ndjson" and not self.watch_events:
            # Chunk by chunk, without joining: a record start split between two chunks is
            # found by looking again at the previous chunk's tail.
            chunks = []
            tail = b""
            async for chunk in request.content.iter_any():
                chunks.append(chunk)
                self.logs += (tail + chunk[: len(LOG) - 1]).count(LOG) + chunk.count(LOG)
                tail = chunk[-(len(LOG) - 1) :]
            self.chunks.append(chunks)
            return web.Response(body=b"{}", content_type="application/json")
        body = await request.read()
        self.bodies.append(body)
        self.logs += self._count(body)
        if self.watch_events:
            self._events(body)
        if self.fmt == "elasticsearch":
            n = body.count(b"\n") // 2
            items = b",".join([b'{"create":{"status":201}}'] * n)
            return web.Response(
                body=b'{"took":1,"errors":false,"items":[' + items + b"]}",
                content_type="application/json",
            )
        return web.Response(body=b"{}", content_type="application/json")

    def _count(self, body: bytes) -> int:
        if self.fmt == "ndjson":
            return body.count(LOG)
        if self.fmt == "elasticsearch":
            return body.count(b'"kind":"log"')
        if self.fmt == "loki":  # entries of streams with a `stream` label (not events)
            streams = orjson.loads(body)["streams"]
            return sum(len(s["values"]) for s in streams if "stream" in s["stream"])
        return body.count(b'"log.iostream"')  # otlp: one per log record

    def _events(self, body: bytes) -> None:
        """Container ids of start events (any format), by a cheap scan."""
        if self.fmt in ("ndjson", "elasticsearch"):
            for line in body.splitlines():
                if EVENT in line and b'"action":"start"' in line:
                    self.started.add(orjson.loads(line)["container_id"])
        elif self.fmt == "loki":
            for stream in orjson.loads(body)["streams"]:
                for _, line in stream["values"]:
                    if '"action":"start"' in line:
                        self.started.add(orjson.loads(line)["container_id"])
        else:
            for rl in orjson.loads(body)["resourceLogs"]:
                attrs = {a["key"]: a["value"] for a in rl["resource"]["attributes"]}
                for sl in rl["scopeLogs"]:
                    for lr in sl["logRecords"]:
                        if lr["body"].get("stringValue") == "start":
                            self.started.add(attrs["container.id"]["stringValue"])

    def write_ndjson(self, path: Path) -> None:
        """The log records received, as NDJSON with a ``message`` field each (for
        ``throughput.check_output``)."""
        with open(path, "wb") as out:
            if self.fmt == "ndjson":
                for body in self.bodies:
                    out.write(body)
                for chunks in self.chunks:
                    out.writelines(chunks)
                return
            if self.fmt == "elasticsearch":
                for body in self.bodies:
                    for line in body.splitlines()[1::2]:  # sources
                        out.write(b"{" + line[line.index(b'"kind"') :] + b"\n")
                return
            for body in self.bodies:
                doc = orjson.loads(body)
                if self.fmt == "loki":
                    messages = [v[1] for s in doc["streams"] for v in s["values"]]
                else:
                    messages = [
                        lr["body"].get("stringValue", "")
                        for rl in doc["resourceLogs"]
                        for sl in rl["scopeLogs"]
                        for lr in sl["logRecords"]
                        if any(a["key"] == "log.iostream" for a in lr["attributes"])
                    ]
                for m in messages:
                    out.write(LOG + b',"message":' + orjson.dumps(m) + b"}\n")


class HttpAgentProcess(AgentProcess):
    """The agent with one exporter: ``file`` (AgentProcess's) or ``http`` to ``receiver``."""

    def __init__(
        self, host: str, run_id: str, workdir: Path, receiver: Receiver | None = None
    ) -> None:
        super().__init__(host, run_id, workdir)
        self.receiver = receiver

    def start(self) -> None:
        if self.receiver is None:
            super().start()
            return
        exporter = {"type": "http", "url": self.receiver.url, "format": self.receiver.fmt}
        config = {
            "engine": {"host": self.host},
            "agent": {"log_level": self.log_level, "log_format": "json"},
            "state_dir": str(self.workdir / "state"),
            "containers": {"include": {"label": [f"{RUN_LABEL}=^{self.run_id}$"]}},
            "exporters": {"records": exporter},
        }
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*agent_command(), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )

    async def wait_ready(self, engine: BenchEngine, timeout: float = 60) -> None:
        if self.receiver is None:
            await super().wait_ready(engine, timeout)
            return
        cid = await engine.create(f"ca-bench-{self.run_id}-sentinel", ["true"], self.run_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(Exception):
                await engine.start(cid)
            for _ in range(20):
                await asyncio.sleep(0.05)
                if cid in self.receiver.started:
                    return
        raise TimeoutError(f"no start event of the sentinel within {timeout:g} s")

    def count(self) -> int:
        return self.receiver.logs if self.receiver is not None else self.tail.poll()


async def one_run(
    engine: BenchEngine, mode: str, containers: int, lines: int, stall_s: float = 30.0
) -> dict[str, Any]:
    """One agent run in ``mode`` (``file`` or an http format)."""
    run_id = new_run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-http-{run_id}-"))
    receiver = await Receiver(mode).start() if mode != "file" else None
    agent = HttpAgentProcess(engine.host, run_id, workdir, receiver)
    ids: list[str] = []
    expected = containers * lines
    result: dict[str, Any] = {"mode": mode}
    try:
        agent.start()
        await agent.wait_ready(engine)
        if receiver is not None:
            receiver.reset()
        specs = [writer_command(i, lines) for i in range(containers)]
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-http-{i}" for i in range(containers)],
            [s[0] for s in specs],
            run_id,
            [s[1] for s in specs],
        )
        meter = CpuMeter(agent=agent.pid, dockerd=dockerd_pid(), bench=os.getpid())
        meter.start()
        t0 = time.perf_counter()
        await engine.start_many(ids)
        deadline = t0 + phase_timeout(containers, lines)
        last, last_change = -1, t0
        while True:
            now = time.perf_counter()
            count = agent.count()
            if count >= expected:
                break
            if count != last:
                last, last_change = count, now
            elif now - last_change > stall_s or now > deadline:
                log(f"  {mode}: stalled at {count}/{expected} lines")
                break
            agent.check_alive()
            await asyncio.sleep(0.01)
        end = time.perf_counter() if count >= expected else last_change
        used = meter.stop()
        wall = end - t0
        result.update(
            {
                "wall_s": wall,
                "lines": count,
                "lines_per_s": count / wall,
                "cpu_s": used.get("agent"),
                "cpu_s_per_mlines": used["agent"] / (count / 1e6) if count else None,
                "dockerd_cpu_s": used.get("dockerd"),
                "receiver_cpu_s": used.get("bench"),
                "machine_busy_pct": used.get("machine_busy_pct"),
                "peak_rss_mb": peak_rss_mb(agent.pid),
            }
        )
        if receiver is not None:
            result["requests"] = receiver.requests
            result["wire_mb"] = receiver.wire_bytes / 1e6
    finally:
        try:
            result["exit_code"] = await agent.stop()
        finally:
            await engine.remove(ids)
            await engine.cleanup(run_id)
    if receiver is not None:
        await receiver.stop()
        out = workdir / "received.ndjson"
        receiver.write_ndjson(out)
        result.update(check_output(out, containers, lines))
    else:
        result.update(check_output(agent.records_path, containers, lines))
    shutil.rmtree(workdir, ignore_errors=True)
    return result


async def measured(engine: BenchEngine, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """A run on a quiet machine; measured again (``--retries``) when others used it."""
    c, n = args.http_containers, args.http_lines
    result: dict[str, Any] = {}
    for attempt in range(args.retries + 1):
        await wait_quiet(engine, args.quiet_wait)
        foreign = await engine.foreign_running()
        others = OthersMeter().start()
        result = await one_run(engine, mode, c, n)
        others.stop()
        foreign = max(foreign, await engine.foreign_running())
        result["others_cpu_s"] = others.cpu_s
        result["skewed"] = skewed(others.cpu_s, result.get("wall_s", 0.0), foreign)
        result["discarded_attempts"] = attempt
        if not result["skewed"]:
            break
        log(f"  {mode}: others used {others.cpu_s:.1f} CPU s, {foreign} other container(s)")
    return result


METRICS = (
    "wall_s",
    "lines_per_s",
    "cpu_s",
    "cpu_s_per_mlines",
    "peak_rss_mb",
    "dockerd_cpu_s",
    "receiver_cpu_s",
    "requests",
    "wire_mb",
    "lost",
    "dup",
)


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    formats = [f.strip() for f in args.http_formats.split(",") if f.strip()]
    modes = ["file", *formats]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    c, n = args.http_containers, args.http_lines
    for i in range(args.http_runs):
        for mode in modes:
            log(f"http bench run {i + 1}/{args.http_runs}: {mode}, {c} containers x {n:,} lines")
            r = await measured(engine, args, mode)
            runs[mode].append(r)
            log(
                f"  {mode}: {r.get('wall_s', 0):.2f} s, {r.get('lines_per_s', 0):,.0f} lines/s, "
                f"lost {r.get('lost')}, dup {r.get('dup')}"
            )
            await asyncio.sleep(1)
    medians = {
        m: {k: median(r.get(k) for r in rs) for k in METRICS if any(k in r for r in rs)}
        for m, rs in runs.items()
    }
    file_rate = medians["file"].get("lines_per_s")
    ratios = {m: (medians[m]["lines_per_s"] / file_rate if file_rate else None) for m in formats}
    return {
        "params": {"containers": c, "lines": n, "line_bytes": LINE_BYTES, "runs": args.http_runs},
        "runs": runs,
        "median": medians,
        "ratio": ratios,
    }


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    rows = []
    for mode, m in result["median"].items():
        rows.append([mode, *(m.get(k) for k in METRICS), result["ratio"].get(mode)])
    head = (
        f"http exporter vs file exporter: {p['containers']} containers x {p['lines']:,} lines "
        f"of {p['line_bytes']} B, gzip on, median of {p['runs']} run(s)"
    )
    text = [
        head,
        table(
            [
                "exporter",
                "wall s",
                "lines/s",
                "CPU s",
                "CPU s/M lines",
                "peak RSS MB",
                "dockerd CPU s",
                "receiver CPU s",
                "requests",
                "wire MB",
                "lost",
                "dup",
                "/ file",
            ],
            rows,
        ),
        "target: http lines/s at least 0.80 of the file exporter's",
    ]
    bad = sum(1 for rs in result["runs"].values() for r in rs if r.get("skewed"))
    if bad:
        text.append(f"WARNING: {bad} run(s) shared the machine with others (figures skewed)")
    return "\n".join(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("http")
    g.add_argument("--http-containers", type=int, default=4, help="containers per run (4)")
    g.add_argument("--http-lines", type=int, default=100_000, help="lines per container (100000)")
    g.add_argument("--http-runs", type=int, default=3, help="repetitions; medians (3)")
    g.add_argument(
        "--http-formats",
        default="ndjson",
        help="http formats to measure, comma-separated: ndjson, loki, elasticsearch, otlp",
    )
    add_quiet_argument(parser)
    add_retries_argument(parser)


async def _main(args: argparse.Namespace) -> int:
    engine = BenchEngine(engine_host())  # no `async with`: no clean-up beyond our own runs
    try:
        info = await machine_info(engine)
        result = await run(args, engine)
    finally:
        await engine.docker.close()
    print(machine_line(info))
    print(report(result))
    out = RESULTS_DIR / "http.json"
    write_json(out, {"machine": info, "result": result})
    print(f"(written to {out})")
    lost = sum(r.get("lost", 0) + r.get("dup", 0) for rs in result["runs"].values() for r in rs)
    return 1 if lost else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args()
    raise SystemExit(run_main(lambda: _main(args)))


if __name__ == "__main__":
    main()
