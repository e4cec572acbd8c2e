"""Log throughput: the agent against a minimal raw reader of the same logs API (the floor).

Each run starts C fresh containers that print L lines of 100 bytes as fast as busybox can
(``seq -s`` with a separator that carries the newline and the padding, about 10x faster
than an awk loop), each line ``c<index> <padding> <sequence number>``, then measures

* the floor: one aiohttp GET /containers/{id}/logs?follow=1&timestamps=1 per container,
  opened right after the container starts, bytes counted and thrown away; and
* the agent: ``container-agent run`` (already running and following this run's label) on
  another C fresh containers, until its file exporter holds C*L log records.

Wall time runs from the containers' start to the last line read (floor) or written (agent).
CPU is utime+stime from /proc. After the timed part, the agent's output is checked for lost
and duplicated sequence numbers.

    python -m bench.throughput [--containers 4] [--lines 250000] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from agent.record import timestamp_to_unix
from bench.common import (
    RESULTS_DIR,
    AgentProcess,
    BenchEngine,
    CpuMeter,
    OthersMeter,
    add_quiet_argument,
    add_retries_argument,
    busy_pct,
    dockerd_pid,
    log,
    median,
    new_run_id,
    peak_rss_mb,
    skewed,
    socket_path,
    standalone,
    table,
    thread_cpu_seconds,
    wait_quiet,
    watch_output,
    within,
)

LINE_BYTES = 100
SEQ_BASE = 1_000_000_000  # ten digits for every sequence number: fixed-width lines
# The output's sequence numbers; the message is c<index> <padding> <SEQ_BASE + n>.
MESSAGE_RE = re.compile(rb'"message":"c(\d+) x+ (\d+)"')


def writer_command(index: int, lines: int) -> tuple[list[str], dict[str, str]]:
    """A container command printing ``lines`` lines of LINE_BYTES bytes, newline included.

    ``seq -s SEP`` writes "FIRST SEP ... SEP LAST\\n" through stdio in large blocks; a SEP of
    "<padding>\\nc<i> <padding> " turns that into one padded line per number.
    """
    prefix = f"c{index} "
    pad = "x" * (LINE_BYTES - len(prefix) - 1 - 10 - 1)
    head = f"{prefix}{pad} "
    env = {
        "HEAD": head,
        "SEP": f"\n{head}",
        "FIRST": str(SEQ_BASE),
        "LAST": str(SEQ_BASE + lines - 1),
    }
    cmd = ["sh", "-c", 'printf "%s" "$HEAD"; exec seq -s "$SEP" "$FIRST" "$LAST"']
    return cmd, env


def phase_timeout(containers: int, lines: int) -> float:
    return max(120.0, containers * lines / 5_000)


# -- the floor ----------------------------------------------------------------------------


class _FloorState:
    def __init__(self, per_container: int, containers: int) -> None:
        self.per_container = per_container
        self.expected = per_container * containers
        self.lines = 0
        self.bytes = 0
        self.short_streams = 0  # follow streams the engine ended before the last line
        self.done_at: float | None = None

    def add(self, data: bytes) -> int:
        n = data.count(b"\n")
        self.bytes += len(data)
        self.lines += n
        if self.done_at is None and self.lines >= self.expected:
            self.done_at = time.perf_counter()
        return n


_LOG_PARAMS = {"stdout": "1", "stderr": "1", "timestamps": "1"}


async def _floor_stream(
    session: aiohttp.ClientSession, engine: BenchEngine, cid: str, state: _FloorState
) -> None:
    await engine.start(cid)
    url = f"http://localhost/containers/{cid}/logs"
    got = 0
    prev = last = b""
    async with session.get(url, params={**_LOG_PARAMS, "follow": "1"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET /logs of {cid[:12]}: {resp.status} {await resp.text()}")
        content = resp.content
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            got += state.add(chunk)
            prev, last = last, chunk
    if got < state.per_container:
        # The engine (dockerd 20.10, json-file) sometimes ends a followed stream when the
        # container exits before sending its last lines, which are in the log file: read
        # them without follow from the last line's timestamp, as a correct reader must.
        state.short_streams += 1
        await _floor_rest(session, url, prev + last, state)


async def _floor_rest(
    session: aiohttp.ClientSession, url: str, tail: bytes, state: _FloorState
) -> None:
    end = tail.rfind(b"\n")
    frame = tail[tail.rfind(b"\n", 0, end) + 1 : end]  # 8-byte header, "<ts> <message>"
    sp = frame.index(b" ", 8)
    ts, message = frame[8:sp].decode(), frame[sp + 1 :]
    params = {**_LOG_PARAMS, "follow": "0", "since": timestamp_to_unix(ts)}
    async with session.get(url, params=params) as resp:
        data = await resp.read()
    at = data.find(b" " + message + b"\n")
    if at < 0:
        raise RuntimeError(f"the last line read is not in the re-read logs of {url}")
    state.add(data[at + len(message) + 2 :])


async def floor_run(engine: BenchEngine, containers: int, lines: int) -> dict[str, Any]:
    run_id = new_run_id()
    specs = [writer_command(i, lines) for i in range(containers)]
    ids: list[str] = []
    connector = aiohttp.UnixConnector(path=socket_path(engine.host), limit=0)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
    )
    try:
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-floor-{i}" for i in range(containers)],
            [s[0] for s in specs],
            run_id,
            [s[1] for s in specs],
        )
        state = _FloorState(lines, containers)
        meter = CpuMeter(reader=os.getpid(), dockerd=dockerd_pid())
        meter.start()
        t0 = time.perf_counter()
        await within(
            phase_timeout(containers, lines),
            asyncio.gather(*(_floor_stream(session, engine, cid, state) for cid in ids)),
            "floor: the log streams to end",
        )
        end = state.done_at or time.perf_counter()
        used = meter.stop()
    finally:
        await session.close()
        await engine.remove(ids)
        await engine.cleanup(run_id)
    wall = end - t0
    return {
        "wall_s": wall,
        "lines": state.lines,
        "lines_per_s": state.lines / wall,
        "bytes": state.bytes,
        "mb_per_s": state.bytes / wall / 1e6,
        "cpu_s": used.get("reader"),
        "cpu_s_per_mlines": used["reader"] / (state.lines / 1e6) if state.lines else None,
        "dockerd_cpu_s": used.get("dockerd"),
        "machine_busy_pct": used.get("machine_busy_pct"),
        "short_streams": state.short_streams,
    }


# -- the agent ----------------------------------------------------------------------------


def check_output(path: Path, containers: int, lines: int) -> dict[str, int]:
    """Lost and duplicated sequence numbers per container, summed; after the timed part."""
    seen = [bytearray(lines) for _ in range(containers)]
    dup = other = matched = 0
    data = path.read_bytes()
    for m in MESSAGE_RE.finditer(data):
        matched += 1
        index, seq = int(m.group(1)), int(m.group(2)) - SEQ_BASE
        if not (0 <= index < containers and 0 <= seq < lines):
            other += 1
            continue
        row = seen[index]
        if row[seq]:
            dup += 1
        else:
            row[seq] = 1
    lost = sum(row.count(0) for row in seen)
    short = sum(1 for row in seen if row.count(0))
    # Log records that are not one of the writers' lines (none expected).
    unexpected = data.count(b'{"kind":"log"') - (matched - other)
    return {"lost": lost, "dup": dup, "unexpected": unexpected, "short_containers": short}


class _Profiler:
    """py-spy attached to the agent for the timed part; raw (collapsed) stacks out."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nolineno",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        if not self.out.exists() or not self.out.stat().st_size:
            log(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-500:]}")


def top_functions(raw: Path, n: int = 10, main_only: bool = False) -> list[dict[str, Any]]:
    """Self and inclusive sample shares per function from py-spy's raw output.

    ``main_only``: only the event loop's thread (stacks rooted at the ``container-agent``
    script), leaving out the thread pool that writes the output file.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames or (main_only and not frames[0].startswith("<module>")):
            continue
        samples += c
        self_counts[frames[-1]] += c
        for f in set(frames):
            total_counts[f] += c
    return [
        {
            "function": f,
            "self_pct": 100 * c / samples,
            "total_pct": 100 * total_counts[f] / samples,
            "samples": c,
        }
        for f, c in self_counts.most_common(n)
    ]


async def agent_run(
    engine: BenchEngine,
    containers: int,
    lines: int,
    profile: Path | None = None,
    stall_s: float = 30.0,
    settle_s: float = 5.0,
) -> dict[str, Any]:
    """One agent run; gives up waiting when no record came for ``settle_s`` after every
    container died, or for ``stall_s`` in any case (the missing lines count as lost)."""
    run_id = new_run_id()
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-{run_id}-"))
    agent = AgentProcess(engine.host, run_id, workdir)
    ids: list[str] = []
    expected = containers * lines
    result: dict[str, Any] = {}
    profiler: _Profiler | None = None
    try:
        agent.start()
        await agent.wait_ready(engine)
        specs = [writer_command(i, lines) for i in range(containers)]
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-agent-{i}" for i in range(containers)],
            [s[0] for s in specs],
            run_id,
            [s[1] for s in specs],
        )
        tail = agent.tail
        if profile is not None:
            profiler = _Profiler(agent.pid, profile)
            await asyncio.sleep(1.0)  # py-spy attaches
        meter = CpuMeter(agent=agent.pid, dockerd=dockerd_pid(), bench=os.getpid())
        threads_before = thread_cpu_seconds(agent.pid)
        meter.start()
        t0 = time.time()
        await engine.start_many(ids)
        deadline = t0 + phase_timeout(containers, lines)
        used: dict[str, float] = {}
        threads: dict[int, float] = {}

        def paused() -> None:
            nonlocal used, threads
            used, threads = meter.stop(), thread_cpu_seconds(agent.pid)

        def give_up(quiet: float) -> str | None:
            if quiet > stall_s or (quiet > settle_s and set(ids) <= tail.event_ids("die")):
                return f"agent: no new record for {quiet:.1f} s"
            return "agent: timed out" if time.time() > deadline else None

        end = await watch_output(tail, expected, paused, give_up, agent.check_alive)
        count = tail.logs
        main_cpu = threads.get(agent.pid, 0.0) - threads_before.get(agent.pid, 0.0)
        result["main_thread_cpu_s"] = main_cpu
        result["other_threads_cpu_s"] = sum(
            v - threads_before.get(tid, 0.0) for tid, v in threads.items() if tid != agent.pid
        )
        result["peak_rss_mb"] = peak_rss_mb(agent.pid)
        if profiler is not None:
            profiler.stop()
            profiler = None
        wall = max((end or t0) - t0, 1e-9)
        result.update(
            {
                "wall_s": wall,
                "lines": count,
                "lines_per_s": count / wall,
                "bytes": tail.size,
                "mb_per_s": tail.size / wall / 1e6,
                "cpu_s": used.get("agent"),
                "cpu_s_per_mlines": used["agent"] / (count / 1e6) if count else None,
                "dockerd_cpu_s": used.get("dockerd"),
                "bench_cpu_s": used.get("bench"),
                # over the timed part: the meter also ran while the watch waited for the
                # output to stay unchanged (QUIET_S), idle time that made a machine busy
                # all along read 86 % against the floor's 97 %
                "machine_busy_pct": busy_pct(used, wall),
            }
        )
    finally:
        if profiler is not None:
            profiler.stop()
        try:
            result["exit_code"] = await agent.stop()
        finally:
            await engine.remove(ids)
            await engine.cleanup(run_id)
    # Outside the timed part: the agent has flushed and exited.
    result.update(check_output(agent.records_path, containers, lines))
    shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- the benchmark ------------------------------------------------------------------------

METRICS = (
    "wall_s",
    "lines_per_s",
    "mb_per_s",
    "cpu_s",
    "cpu_s_per_mlines",
    "peak_rss_mb",
    "dockerd_cpu_s",
    "lost",
    "dup",
    "main_thread_cpu_s",
    "other_threads_cpu_s",
    "short_streams",
    "short_containers",
    "machine_busy_pct",
)


async def measured(
    engine: BenchEngine,
    args: argparse.Namespace,
    what: str,
    phase: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """Runs one phase on a quiet machine; repeats it (up to ``--retries`` times) when other
    processes or containers used the machine meanwhile, and marks it ``skewed`` if the last
    attempt still was."""
    discarded: list[dict[str, Any]] = []
    for attempt in range(args.retries + 1):
        await wait_quiet(engine, args.quiet_wait)
        foreign = await engine.foreign_running()
        others = OthersMeter().start()
        result = await phase()
        others.stop()
        foreign = max(foreign, await engine.foreign_running())
        result["others_cpu_s"] = others.cpu_s
        result["others_top"] = others.top
        result["foreign_containers"] = foreign
        result["skewed"] = skewed(others.cpu_s, result["wall_s"], foreign)
        result["discarded_attempts"] = attempt
        result["discarded"] = list(discarded)
        if not result["skewed"]:
            break
        # What a discarded attempt saw still counts for correctness (lost lines).
        discarded.append(
            {k: result.get(k) for k in ("wall_s", "lines_per_s", "lost", "dup", "others_cpu_s")}
        )
        who = ", ".join(f"{name} {cpu:.1f} s" for name, cpu in others.top)
        log(
            f"  {what}: others used {others.cpu_s:.1f} CPU s ({who}), {foreign} other "
            f"container(s)" + ("; measuring again" if attempt < args.retries else "; kept")
        )
    return result


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    c, n = args.containers, args.lines
    floors: list[dict[str, Any]] = []
    agents: list[dict[str, Any]] = []
    for i in range(args.runs):
        log(f"throughput run {i + 1}/{args.runs}: floor, {c} containers x {n:,} lines")
        f = await measured(engine, args, "floor", lambda: floor_run(engine, c, n))
        floors.append(f)
        log(
            f"  floor: {f['wall_s']:.2f} s, {f['lines_per_s']:,.0f} lines/s, "
            f"CPU {f['cpu_s']:.2f} s, dockerd {f['dockerd_cpu_s']:.2f} s"
        )
        await asyncio.sleep(1)
        log(f"throughput run {i + 1}/{args.runs}: agent")
        a = await measured(engine, args, "agent", lambda: agent_run(engine, c, n))
        agents.append(a)
        log(
            f"  agent: {a['wall_s']:.2f} s, {a['lines_per_s']:,.0f} lines/s, "
            f"lost {a['lost']}, dup {a['dup']}, unexpected {a['unexpected']}, "
            f"exit {a['exit_code']}, bench's poll CPU {a.get('bench_cpu_s') or 0:.2f} s, "
            f"agent CPU {a['cpu_s']:.2f} s, dockerd {a['dockerd_cpu_s']:.2f} s"
        )
        await asyncio.sleep(1)
    result: dict[str, Any] = {
        "params": {"containers": c, "lines": n, "line_bytes": LINE_BYTES, "runs": args.runs},
        "floor": {"runs": floors, "median": _medians(floors)},
        "agent": {"runs": agents, "median": _medians(agents)},
    }
    fl = result["floor"]["median"]["lines_per_s"]
    ag = result["agent"]["median"]["lines_per_s"]
    result["ratio"] = ag / fl if fl and ag else None
    result["ratios_per_run"] = [
        a["lines_per_s"] / f["lines_per_s"] for f, a in zip(floors, agents, strict=True)
    ]
    if args.profile:
        out = RESULTS_DIR / "agent-profile.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        log("profile run (not counted): the agent under py-spy")
        prof = await measured(engine, args, "profile", lambda: agent_run(engine, c, n, out))
        ok = out.exists() and out.stat().st_size > 0
        result["profile"] = {
            "raw": str(out),
            "run": prof,
            "top": top_functions(out) if ok else [],
            "top_main_thread": top_functions(out, main_only=True) if ok else [],
        }
    return result


def _medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = {k: median(r.get(k) for r in runs) for k in METRICS if any(k in r for r in runs)}
    for k in ("lost", "dup", "short_streams", "short_containers"):
        if out.get(k) is not None:
            out[k] = round(out[k])
    return out


def report(result: dict[str, Any]) -> str:
    p = result["params"]
    rows = []
    for name in ("floor", "agent"):
        m = result[name]["median"]
        rows.append([name, *(m.get(k) for k in METRICS[:9])])
    head = (
        f"throughput: {p['containers']} containers x {p['lines']:,} lines of {p['line_bytes']} B, "
        f"median of {p['runs']} run(s)"
    )
    text = [
        head,
        table(
            [
                "path",
                "wall s",
                "lines/s",
                "MB/s*",
                "CPU s",
                "CPU s/M lines",
                "peak RSS MB",
                "dockerd CPU s",
                "lost",
                "dup",
            ],
            rows,
        ),
        "* floor: framed logs-API bytes read; agent: NDJSON bytes written",
        "agent / floor lines/s: "
        + (f"{result['ratio']:.2f}" if result["ratio"] else "-")
        + "  (per run: "
        + ", ".join(f"{r:.2f}" for r in result["ratios_per_run"])
        + ")",
    ]
    runs = result["floor"]["runs"] + result["agent"]["runs"]
    bad = sum(1 for r in runs if r.get("skewed"))
    discarded = sum(r.get("discarded_attempts", 0) for r in runs)
    if bad or discarded:
        text.append(
            f"{discarded} attempt(s) measured again because others used the machine"
            + (f"; WARNING: {bad} kept run(s) still skewed" if bad else "")
        )
    short_floor = [r.get("short_streams", 0) for r in result["floor"]["runs"]]
    short_agent = [r.get("short_containers", 0) for r in result["agent"]["runs"]]
    lost_agent = [r.get("lost", 0) for r in result["agent"]["runs"]]
    lost_discarded = [
        d.get("lost")
        for r in result["agent"]["runs"]
        for d in r.get("discarded", [])
        if d.get("lost")
    ]
    if lost_discarded:
        text.append(f"agent lines lost in discarded (skewed) attempts: {lost_discarded}")
    text.append(
        f"follow streams the engine ended early, per run: floor {short_floor} (re-read "
        f"without follow); agent: containers with lost lines {short_agent}, lost {lost_agent}"
    )
    a = result["agent"]["median"]
    f = result["floor"]["median"]
    if a.get("machine_busy_pct") is not None and f.get("machine_busy_pct") is not None:
        text.append(
            f"machine CPU busy (all {os.cpu_count()} cores together): floor "
            f"{f['machine_busy_pct']:.0f} %, agent {a['machine_busy_pct']:.0f} %"
        )
    if a.get("main_thread_cpu_s") is not None:
        text.append(
            f"agent CPU by thread (median): event loop {a['main_thread_cpu_s']:.2f} s, "
            f"other threads (file writes) {a['other_threads_cpu_s']:.2f} s"
        )
    prof = result.get("profile")
    if prof:
        pr = prof["run"]
        text.append(
            f"agent profile run under py-spy (not counted: {pr.get('lines_per_s', 0):,.0f} "
            f"lines/s, lost {pr.get('lost')}), raw stacks in {prof['raw']}"
        )
        for key, title in (("top", "all threads"), ("top_main_thread", "event loop thread")):
            text.append(f"top functions by self time, {title}:")
            text.append(
                table(
                    ["function", "self %", "total %"],
                    [[t["function"], t["self_pct"], t["total_pct"]] for t in prof[key]],
                )
            )
    return "\n".join(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("throughput")
    g.add_argument("--containers", type=int, default=4, help="containers per run (4)")
    g.add_argument("--lines", type=int, default=250_000, help="lines per container (250000)")
    g.add_argument("--runs", type=int, default=3, help="repetitions; medians reported (3)")
    g.add_argument(
        "--profile",
        action="store_true",
        help="one extra agent run under py-spy (not counted); prints the top functions",
    )
    add_quiet_argument(parser)
    add_retries_argument(parser)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
