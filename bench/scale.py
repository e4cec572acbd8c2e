"""Many slow containers: the agent's CPU, memory, descriptors, start-up and delivery latency
following N containers that each print R short lines a second, files mode and API mode,
against the engine alone and (when ``$FLUENT_BIT`` names a binary) Fluent Bit, in one run.

For each shape (N x R) it starts N containers (each prints one short numbered line every
1/R s from a shell loop of builtins: no fork per line), waits until every one has printed,
and then, on those same running containers, in turn:

* **engine only**: dockerd's CPU over the window with no reader at all (the baseline: what
  the engine itself spends on those containers);
* **files**: the agent (``logs.source: files``) as a subprocess, writing to a file exporter
  in /tmp, with a prometheus exporter on 127.0.0.1 (a free port);
* **fluent-bit**: Fluent Bit's tail input on ``<containers dir>/*/*-json.log`` with the
  docker parser, a DB file in /tmp, a file output (``bench.fluentbit``), when available;
* **api**: the agent with ``logs.source: api``.

Each reader starts fresh (its own state dir: no checkpoint) and by default from *now*
(``logs.start_at: now``; Fluent Bit's ``Read_from_Head`` default, off), so that none of them
reads the backlog the earlier phases left (``--start-at beginning``: both read it, and the
start-up figures then depend on the phase order). From its start: the time until every
container is followed (the agent's ``container_followed`` lines) and until every
container's first line is in its output, and its CPU until then (start-up, counted apart).
Then, after ``--scale-settle`` s, a window of ``--scale-window`` s: its CPU % (utime+stime
from /proc), dockerd's CPU % (and containerd's plus the shims'), the machine's busy %, its
RSS, peak RSS, open descriptors and threads at the end, the p50/p99/max delivery latency
of the lines it wrote in the window (the engine's stamp of each line to the moment the
line appeared in its output file: a thread here follows that file with inotify and stamps
each new line with ``time.time()``), the lines delivered per second against those offered
(N x R) (and, once the reader has stopped, its whole output checked: the numbered lines
missing inside each container's range, and those written twice), and, for the agent,
``/metrics`` scraped as Prometheus would, every ``--scale-scrape-interval`` s (15; their
cost is in the window's CPU). After the window,
``--scale-scrapes`` more scrapes, 3 s apart (every row stale again), each asked for gzip
(as Prometheus asks) and then for identity: their time (curl's, when installed: this
process's own loop, following every output file, must not delay the answer it times), the
agent's CPU per scrape, and the size. Then ``--scale-late`` more containers are started,
and how long after its start (the engine's ``StartedAt``) each was followed (its
``container_followed`` line) is reported; they are removed before the next phase.
Ratios: the agent's figures to Fluent Bit's (same run), and the agent's CPU to the
engine-only dockerd CPU. A phase
during which other processes used the machine, or other containers ran on the engine, is
measured again (``--retries``) once the machine is quiet; a phase still skewed is flagged.
Fluent Bit's tail ``Path`` is that glob when this run's containers are the engine's only
ones, else the list of their files (``--fb-path``): a shared engine's other containers
would be read too. After each shape its table is logged, and the results so far are
written to ``bench/results/scale-partial.json``.

``--profile`` (after each agent window, so the measured figures are not disturbed): py-spy
(raw stacks, all threads) for ``--profile-seconds``, then ``strace -c -f`` for as long:
per-function and per-area shares, the agent's per-thread CPU, its GC collections (through a
small wrapper that counts them; ``--profile`` runs the agent under it), syscalls per
second. ``--bulk``: 4 containers x 250,000 lines as fast as they can, read by the agent
(files, api) and Fluent Bit in turn, lines/s until all arrive (medians of ``--bulk-runs``).

    python -m bench.scale [--scale-n 100,300] [--scale-rates 1,10] [--with-1000]
        [--scale-window 30] [--profile] [--bulk] [--no-shapes]
        [--scale-phases engine,files,fluent-bit,api]   # a subset, in this order
        [--ab-agent ../main/.venv/bin/container-agent --ab-rounds 3]   # A/B, same run

``--ab-agent``: each agent phase is run again with another tree's agent (``files@b``,
``api@b``) on the same containers, ``--ab-rounds`` times, which goes first alternating;
a table then gives both sides' medians. With ``--bulk``, each bulk run has
``files@b`` and ``api@b`` beside ``files`` and ``api`` too.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import collections
import contextlib
import ctypes
import ctypes.util
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import fluentbit, throughput
from bench.common import (
    ENGINE_DIR,
    RESULTS_DIR,
    RUN_LABEL,
    BenchEngine,
    CpuMeter,
    OthersMeter,
    RecordTail,
    add_quiet_argument,
    add_retries_argument,
    agent_command,
    check_alive,
    cpu_seconds,
    dockerd_pid,
    fmt,
    log,
    median,
    new_run_id,
    peak_rss_mb,
    rss_mb,
    skewed,
    standalone,
    table,
    thread_cpu_seconds,
    wait_quiet,
    watch_output,
    write_json,
)

PHASES = ("engine", "files", "fluent-bit", "api")
# Between the scrapes timed after the window: every row a line changed is stale again (as
# at Prometheus's 15 s), not answered from the text cache of the scrape before.
SCRAPE_GAP_SECONDS = 3.0
LATE_WAIT_SECONDS = 10.0  # for the containers started late to be followed
CAUGHT_UP_S = 3.0  # a container's line delivered within this: the reader keeps up with it

# The agent under --profile: counts GC collections and their time per generation; SIGUSR1
# writes the counts so far to $CA_BENCH_GC_OUT (read before and after the profile window).
GC_WRAPPER = r"""
import gc, json, os, signal, sys, time
_s = {"collections": [0, 0, 0], "seconds": [0.0, 0.0, 0.0], "collected": [0, 0, 0]}
_t = [0.0]
def _cb(phase, info):
    if phase == "start":
        _t[0] = time.perf_counter()
    else:
        g = info["generation"]
        _s["collections"][g] += 1
        _s["seconds"][g] += time.perf_counter() - _t[0]
        _s["collected"][g] += info["collected"]
gc.callbacks.append(_cb)
def _dump(*_):
    path = os.environ["CA_BENCH_GC_OUT"]
    with open(path + ".tmp", "w") as f:
        json.dump(_s, f)
    os.replace(path + ".tmp", path)
signal.signal(signal.SIGUSR1, _dump)
from agent.cli import main
sys.exit(main())
"""

# Where the CPU goes, by area: a sample counts for an area when any frame of its stack
# matches (inclusive shares; areas overlap, e.g. a to_thread call from the file exporter).
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("files source: read (_read, preadv)", ("_read (agent/sources/jsonfile/tail.py)",)),
    ("files source: decode+emit (_consume)", ("_consume (agent/sources/jsonfile/tail.py)",)),
    (
        "files source: end of file (_more_to_read, _wait)",
        (
            "_more_to_read (agent/sources/jsonfile/tail.py)",
            "_wait (agent/sources/jsonfile/tail.py)",
        ),
    ),
    ("inotify watcher thread", ("(agent/sources/jsonfile/inotify.py)",)),
    ("api source (stream read, decode)", ("(agent/sources/api/", "(agent/engine/httpstream.py)")),
    ("reader._emit (pipeline send, counters)", ("_emit (agent/sources/reader.py)",)),
    ("exporter worker (runner._work)", ("_work (agent/delivery/runner.py)",)),
    ("file exporter send (encode on the loop)", ("send (exporters/file/exporter.py)",)),
    ("file exporter write (in a thread)", ("(exporters/file/files.py)",)),
    ("thread pool workers (to_thread)", ("_worker (concurrent/futures/thread.py)",)),
    ("checkpoint loop", ("(agent/delivery/checkpoint.py)", "checkpoint")),
    ("stats collector", ("(agent/metrics/stats.py)", "(agent/metrics/cgroup.py)")),
    (
        "prometheus /metrics",
        ("(exporters/prometheus/", "(agent/metrics/collectors.py)", "(agent/metrics/own.py)"),
    ),
    ("discovery / engine API", ("(agent/engine/discovery.py)", "(agent/engine/client.py)")),
    ("logging (structlog)", ("(structlog/",)),
    ("asyncio loop (_run_once)", ("_run_once (asyncio/base_events.py)",)),
    ("epoll (select)", ("select (selectors.py)",)),
    (
        "call_soon_threadsafe / wakeups",
        ("call_soon_threadsafe", "_write_to_self", "_read_from_self"),
    ),
)


# -- the workload -----------------------------------------------------------------------


def ticker_command(index: int, rate: float) -> list[str]:
    """One short numbered line every 1/rate s. Only shell builtins in the loop (``read -t``
    on a FIFO nobody writes is the sleep): no fork per line, so 1,000 containers x 10
    lines/s cost the machine little beyond the logging itself."""
    period = f"{1 / rate:.4f}".rstrip("0").rstrip(".")
    script = (
        "mkfifo /tmp/tick && exec 3<>/tmp/tick; i=0; "
        f'while :; do i=$((i+1)); echo "s{index} line $i"; read -t {period} -u 3 _; done'
    )
    return ["sh", "-c", script]


async def containers_dir(engine: BenchEngine) -> str:
    info = await engine.docker.system.info()
    return str(Path(info["DockerRootDir"]) / "containers")


def log_path(cdir: str, cid: str) -> str:
    return os.path.join(cdir, cid, f"{cid}-json.log")


async def start_workload(
    engine: BenchEngine, run_id: str, n: int, rate: float, cdir: str, timeout: float
) -> tuple[list[str], dict[str, Any]]:
    """Creates and starts N tickers; returns their ids once every one has printed."""
    t0 = time.perf_counter()
    ids = await engine.create_many(
        [f"ca-bench-{run_id}-s{i}" for i in range(n)],
        [ticker_command(i, rate) for i in range(n)],
        run_id,
    )
    t1 = time.perf_counter()
    await engine.start_many(ids)
    t2 = time.perf_counter()
    deadline = t2 + timeout
    waiting = set(ids)
    while waiting:
        for cid in list(waiting):
            with contextlib.suppress(OSError):
                if os.stat(log_path(cdir, cid)).st_size > 0:
                    waiting.discard(cid)
        if not waiting:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{len(waiting)} of {n} containers printed nothing in {timeout:g} s")
        await asyncio.sleep(0.2)
    t3 = time.perf_counter()
    return ids, {"create_s": t1 - t0, "start_s": t2 - t1, "printing_s": t3 - t2}


# -- following an output file -----------------------------------------------------------

_IN_MODIFY, _IN_CREATE, _IN_MOVED_TO = 0x2, 0x100, 0x80
_SECONDS: dict[str, int] = {}


def ts_epoch(ts: str) -> float:
    """An RFC 3339 UTC stamp (``…T10:06:38.123456789Z``, any number of digits) as unix s."""
    head = ts[:19]
    sec = _SECONDS.get(head)
    if sec is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        sec = _SECONDS[head] = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
    frac = ts[20:-1] if len(ts) > 20 and ts[19] == "." else ""
    return sec + (int(frac) / 10 ** len(frac) if frac else 0.0)


def parse_agent(line: bytes) -> tuple[str, str] | None:
    if not line.startswith(b'{"kind":"log"'):
        return None
    d = orjson.loads(line)
    return d["container_id"], d["timestamp"]


def parse_fluentbit(line: bytes) -> tuple[str, str] | None:
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    name, ts = d.get("filename"), d.get("time")
    if not isinstance(name, str) or not isinstance(ts, str):
        return None
    return os.path.basename(os.path.dirname(name)), ts


_SEQUENCE = re.compile(r" line (\d+)\n?$")


def sequence_check(path: Path, key: str, text: str) -> dict[str, int]:
    """What the window's count of lines written cannot tell: the numbered lines missing
    inside each container's range in a reader's whole output (it starts at *now*, so the
    lines before its first are not missing, nor those after its stop), and the lines it
    wrote more than once; ``key`` and ``text``: its records' container and line fields.
    Read after the reader stopped, outside the measured figures."""
    seen: dict[str, list[int]] = {}
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            try:
                d = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            cid, message = d.get(key), d.get(text)
            if isinstance(cid, str) and isinstance(message, str):
                m = _SEQUENCE.search(message)
                if m:
                    seen.setdefault(cid, []).append(int(m.group(1)))
    missing = twice = 0
    for numbers in seen.values():
        distinct = set(numbers)
        twice += len(numbers) - len(distinct)
        missing += max(distinct) - min(distinct) + 1 - len(distinct)
    return {"seq_missing": missing, "seq_twice": twice}


class OutputWatch:
    """Follows an NDJSON output file from a thread woken by inotify (its directory is
    watched: the file may not exist yet) and stamps each new line with ``time.time()``.

    Keeps, per container, when its first line and its first line delivered within
    ``CAUGHT_UP_S`` of its engine stamp appeared; and the latencies of the lines that
    appeared within ``window`` (set from the loop)."""

    def __init__(self, path: Path, parse: Callable[[bytes], tuple[str, str] | None]) -> None:
        self.path = path
        self.parse = parse
        self.first: dict[str, float] = {}
        self.caught: dict[str, float] = {}
        self.lines = 0
        self.window: tuple[float, float] = (float("inf"), float("inf"))
        self.latencies = array("d")
        self.window_lines = 0
        self.polling = False
        self.error: BaseException | None = None
        self._rest = b""
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="output-watch", daemon=True)

    def start(self) -> OutputWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(10)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _inotify(self) -> int | None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        mask = _IN_MODIFY | _IN_CREATE | _IN_MOVED_TO
        if libc.inotify_add_watch(fd, os.fsencode(self.path.parent), mask) < 0:
            os.close(fd)
            return None
        return fd

    def _run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # reported by the loop
            self.error = exc

    def _follow(self) -> None:
        ino = self._inotify()
        self.polling = ino is None  # no inotify instance left: poll every 2 ms
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if ino is not None:
            poller.register(ino, select.POLLIN)
        f = None
        try:
            while not self._stop:
                poller.poll(2 if ino is None else 200)
                if ino is not None:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(ino, 65536):
                            pass
                if f is None:
                    try:
                        f = open(self.path, "rb")  # noqa: SIM115 - closed below
                    except FileNotFoundError:
                        continue
                while True:
                    data = f.read(1 << 20)
                    if not data:
                        break
                    self._feed(data, time.time())
        finally:
            if f is not None:
                f.close()
            if ino is not None:
                os.close(ino)

    def _feed(self, data: bytes, now: float) -> None:
        buf = self._rest + data if self._rest else data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        if not cut:
            return
        w0, w1 = self.window
        in_window = w0 <= now < w1
        parse, first, caught = self.parse, self.first, self.caught
        lat = self.latencies
        for line in buf[:cut].split(b"\n"):
            if not line:
                continue
            got = parse(line)
            if got is None:
                continue
            cid, ts = got
            self.lines += 1
            delay = now - ts_epoch(ts)
            if cid not in first:
                first[cid] = now
            if delay < CAUGHT_UP_S and cid not in caught:
                caught[cid] = now
            if in_window:
                lat.append(delay)
                self.window_lines += 1


def percentile(values: array[float] | list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    k = min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))
    return xs[k]


# -- process figures --------------------------------------------------------------------


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def fd_kinds(pid: int, cdir: str) -> dict[str, int]:
    """A process's descriptors by kind: sockets, pipes, container logs, other files, …"""
    out: collections.Counter[str] = collections.Counter()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return {}
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(cdir):
            out["container logs"] += 1
        elif target.startswith(("socket:", "pipe:")):
            out[target.partition(":")[0]] += 1
        elif target.startswith("anon_inode:"):
            out[target.removeprefix("anon_inode:")] += 1
        elif target.startswith("/sys/fs/cgroup"):
            out["cgroup files"] += 1
        else:
            out["other files"] += 1
    return dict(out)


def thread_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def engine_side_pids(ids: Iterable[str]) -> list[int]:
    """The test engine's containerd and the shims of ``ids`` (not dockerd; not the shims
    of other containers on the engine)."""
    mark = str(ENGINE_DIR).encode()
    wanted = {cid.encode() for cid in ids}
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            comm = (proc / "comm").read_bytes()
            if not comm.startswith(b"containerd"):
                continue
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark not in b" ".join(cmd):
            continue
        shim = comm.startswith(b"containerd-shim")
        if shim and (b"-id" not in cmd or cmd[cmd.index(b"-id") + 1] not in wanted):
            continue
        out.append(int(proc.name))
    return out


class GroupCpu:
    """CPU seconds of a fixed set of processes between ``start`` and ``stop`` (those that
    vanished meanwhile are left out)."""

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._start: dict[int, float] = {}

    def _read(self) -> dict[int, float]:
        out = {}
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[pid] = cpu_seconds(pid)
        return out

    def start(self) -> GroupCpu:
        self._start = self._read()
        return self

    def stop(self) -> float:
        end = self._read()
        return sum(v - self._start[p] for p, v in end.items() if p in self._start)


async def metrics_scrape(port: int, identity: bool = False) -> tuple[float, int, int]:
    """One scrape as a new client: seconds to the whole answer, its bytes, and the bytes
    on the wire. It asks ``Accept-Encoding: gzip`` (as Prometheus does); ``identity``:
    the plain text. With curl installed, curl scrapes and times itself, so that this
    process's own loop (following 1,000 output files) does not delay the answer it
    measures; else aiohttp (which asks ``gzip, deflate``)."""
    curl = shutil.which("curl")
    if curl is None:
        return await _aiohttp_scrape(port, identity)
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "-o",
        "/dev/null",
        "-H",
        f"Accept-Encoding: {'identity' if identity else 'gzip'}",
        "-w",
        "%{time_total} %{size_download} %{content_type}\\n%header{content-encoding}",
        f"http://127.0.0.1:{port}/metrics",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode:
        raise OSError(f"curl: {err.decode(errors='replace').strip()}")
    first, _, encoding = out.decode().partition("\n")
    seconds, size, _type = first.split(" ", 2)
    wire = int(size)
    # A gzipped answer's size before compression is not known here: the identity scrape
    # beside it tells it.
    return float(seconds), (0 if encoding.strip() == "gzip" else wire), wire


async def _aiohttp_scrape(port: int, identity: bool) -> tuple[float, int, int]:
    headers = {"Accept-Encoding": "identity"} if identity else {}
    async with aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        async with session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp:
            body = await resp.read()
            wire = int(resp.headers.get("Content-Length") or len(body))
        return time.perf_counter() - t0, len(body), wire


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- readers ----------------------------------------------------------------------------


class Reader:
    """The agent (files or api) or Fluent Bit as a subprocess writing ``output``."""

    def __init__(self, kind: str, workdir: Path, ctx: dict[str, Any]) -> None:
        self.kind = kind
        self.workdir = workdir
        self.ctx = ctx
        (workdir / "out").mkdir(parents=True, exist_ok=True)
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.fb: fluentbit.FluentBit | None = None
        self.gc_path = workdir / "gc.json"
        self.stderr_path = workdir / "agent.stderr"
        if kind == "fluent-bit":
            self.fb = fluentbit.FluentBit(
                ctx["fluent_bit"],
                workdir / "out",
                ctx["fb_path"],
                flush=ctx.get("fb_flush"),
                read_from_head=ctx["start_at"] == "beginning",
            )
            self.output = self.fb.output_path
            self.parse = parse_fluentbit
            self.fields = ("filename", "log")  # a record's container and line
        else:
            self.output = workdir / "out" / "records.ndjson"
            self.parse = parse_agent
            self.fields = ("container_id", "message")

    @property
    def pid(self) -> int:
        if self.fb is not None:
            return self.fb.pid
        assert self.proc is not None
        return self.proc.pid

    def start(self, gc_wrapper: bool = False) -> None:
        if self.fb is not None:
            self.fb.start()
            return
        ctx = self.ctx
        self.port = free_port()
        logs: dict[str, Any] = {"source": self.kind, "start_at": ctx["start_at"]}
        if self.kind == "files":
            logs["containers_dir"] = ctx["cdir"]
        config = {
            "engine": {"host": ctx["host"]},
            "state_dir": str(self.workdir / "state"),
            "agent": {"log_level": "info", "log_format": "json"},
            "logs": logs,
            "containers": {"include": {"label": [f"{RUN_LABEL}=^{ctx['run_id']}$"]}},
            "exporters": {
                "records": {"type": "file", "path": str(self.output)},
                "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{self.port}"},
            },
        }
        path = self.workdir / "agent.yaml"
        path.write_text(json.dumps(config, indent=2) + "\n")
        command = ctx.get("agent_command") or agent_command()
        env = dict(os.environ)
        if gc_wrapper:
            command = [sys.executable, "-c", GC_WRAPPER]
            env["CA_BENCH_GC_OUT"] = str(self.gc_path)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*command, "run", "--config", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
                env=env,
            )

    def check_alive(self) -> None:
        if self.fb is not None:
            self.fb.check_alive()
            return
        assert self.proc is not None
        check_alive(self.proc, "the agent", self.stderr_path)

    async def stop(self) -> int | None:
        if self.fb is not None:
            return await asyncio.to_thread(self.fb.stop)
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)
        return proc.returncode

    def followed(self, ids: set[str]) -> dict[str, float]:
        """From the agent's log: when each of ``ids`` was followed (unix s)."""
        short = {cid[:12]: cid for cid in ids}
        out: dict[str, float] = {}
        try:
            lines = self.stderr_path.read_bytes().splitlines()
        except OSError:
            return out
        for line in lines:
            if b"container_followed" not in line:
                continue
            with contextlib.suppress(ValueError, KeyError):
                d = orjson.loads(line)
                cid = short.get(d.get("id", ""))
                if cid and cid not in out:
                    out[cid] = datetime.fromisoformat(d["timestamp"]).timestamp()
        return out

    def warnings(self) -> dict[str, int]:
        """The agent's warning and error events by name (Fluent Bit: its [warn]/[error]
        lines by plugin), e.g. ``inotify_unavailable``: then it polls."""
        out: collections.Counter[str] = collections.Counter()
        path = self.fb.stderr_path if self.fb is not None else self.stderr_path
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            return {}
        for line in lines:
            if self.fb is not None:
                text = line.decode(errors="replace")
                if "[warn]" in text or "[error]" in text:
                    out[text.split("]", 2)[-1].strip()[:60]] += 1
                continue
            if b'"level":"warning"' not in line and b'"level":"error"' not in line:
                continue
            with contextlib.suppress(ValueError):
                out[str(orjson.loads(line).get("event"))] += 1
        return dict(out)

    def gc_stats(self) -> dict[str, Any] | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        with contextlib.suppress(OSError):
            self.gc_path.unlink()
        os.kill(self.proc.pid, signal.SIGUSR1)
        for _ in range(100):
            with contextlib.suppress(OSError, ValueError):
                return dict(json.loads(self.gc_path.read_text()))
            time.sleep(0.01)
        return None


async def reader_phase(
    kind: str, args: argparse.Namespace, ctx: dict[str, Any], ids: list[str]
) -> dict[str, Any]:
    n = len(ids)
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-scale-{kind}-"))
    want_profile = kind in ("files", "api") and ctx.get("profile", False)
    reader = Reader(kind, workdir, ctx)
    watch = OutputWatch(reader.output, reader.parse).start()
    result: dict[str, Any] = {"phase": kind}
    idset = set(ids)
    try:
        t0 = time.time()
        reader.start(gc_wrapper=want_profile)
        pid = reader.pid
        deadline = time.monotonic() + args.startup_timeout
        while len(idset & watch.first.keys()) < n:
            reader.check_alive()
            if watch.error:
                raise watch.error
            if time.monotonic() > deadline:
                seen = len(idset & watch.first.keys())
                raise TimeoutError(f"{kind}: {seen}/{n} containers in the output after start")
            await asyncio.sleep(0.05)
        startup_cpu = cpu_seconds(pid)
        firsts = [watch.first[c] for c in ids]
        result["all_in_output_s"] = max(firsts) - t0
        result["startup_cpu_s"] = startup_cpu
        result["polling_watch"] = watch.polling
        await asyncio.sleep(args.scale_settle)
        caught = len(idset & watch.caught.keys())
        foreign = await ctx["engine"].foreign_running()
        others = OthersMeter().start()
        group = GroupCpu(engine_side_pids(ids)).start()
        me = cpu_seconds(os.getpid())
        meter = CpuMeter(reader=pid, dockerd=dockerd_pid()).start()
        w0 = time.time()
        watch.window = (w0, w0 + args.scale_window)
        scrapes: list[tuple[float, int, int]] = []
        plain: list[tuple[float, int, int]] = []
        scrape_cpu: list[float] = []
        interval = args.scale_scrape_interval
        if reader.port is not None and interval > 0:
            # As Prometheus would scrape, in the window (their cost is in its CPU).
            at = interval / 2
            while at < args.scale_window:
                await asyncio.sleep(max(0.0, w0 + at - time.time()))
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    scrapes.append(await metrics_scrape(reader.port))
                at += interval
        await asyncio.sleep(max(0.0, w0 + args.scale_window - time.time()))
        used = meter.stop()
        elapsed = time.time() - w0
        engine_side = group.stop()
        bench_cpu = cpu_seconds(os.getpid()) - me
        others.stop()
        foreign = max(foreign, await ctx["engine"].foreign_running())
        reader.check_alive()
        lat = list(watch.latencies)
        if reader.port is not None:
            # After the window: more scrapes to time, each asked as Prometheus asks (gzip)
            # and then for identity; and the agent's CPU per scrape (beyond its rate in
            # the window).
            rate = used["reader"] / elapsed
            for _ in range(args.scale_scrapes):
                await asyncio.sleep(SCRAPE_GAP_SECONDS)
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    c0, t1 = cpu_seconds(pid), time.monotonic()
                    scrapes.append(await metrics_scrape(reader.port))
                    spent = cpu_seconds(pid) - c0 - rate * (time.monotonic() - t1)
                    scrape_cpu.append(max(0.0, spent))
                    await asyncio.sleep(0.5)
                    plain.append(await metrics_scrape(reader.port, identity=True))
        result.update(
            {
                "window_s": elapsed,
                "cpu_pct": 100 * used["reader"] / elapsed,
                "dockerd_cpu_pct": (100 * used["dockerd"] / elapsed if "dockerd" in used else None),
                "engine_side_cpu_pct": 100 * engine_side / elapsed,
                "machine_busy_pct": used.get("machine_busy_pct"),
                "bench_cpu_pct": 100 * bench_cpu / elapsed,
                "rss_mb": rss_mb(pid),
                "peak_rss_mb": peak_rss_mb(pid),
                "fds": open_fds(pid),
                "fd_kinds": fd_kinds(pid, ctx["cdir"]),
                "threads": thread_count(pid),
                "p50_ms": 1000 * (percentile(lat, 0.5) or 0) if lat else None,
                "p99_ms": 1000 * (percentile(lat, 0.99) or 0) if lat else None,
                "max_ms": 1000 * max(lat) if lat else None,
                "lines_per_s": watch.window_lines / elapsed,
                "caught_up_at_window": caught,
                "scrape_ms": 1000 * (median(s for s, _, _ in scrapes) or 0) if scrapes else None,
                "scrape_cpu_ms": 1000 * (median(scrape_cpu) or 0) if scrape_cpu else None,
                "scrape_kb": median(b / 1024 for _, b, _ in plain) if plain else None,
                "scrape_wire_kb": median(w / 1024 for _, _, w in scrapes) if scrapes else None,
                "scrape_identity_ms": 1000 * (median(s for s, _, _ in plain) or 0)
                if plain
                else None,
                "scrapes_ms": [round(1000 * s, 1) for s, _, _ in scrapes],
                "scrapes_identity_ms": [round(1000 * s, 1) for s, _, _ in plain],
                "others_cpu_s": others.cpu_s,
                "others_top": others.top,
                "foreign_containers": foreign,
                "skewed": skewed(others.cpu_s, elapsed, foreign),
            }
        )
        if kind in ("files", "api") and args.scale_late:
            result.update(await late_followed(reader, ctx, args.scale_late))
        if want_profile:
            result["profile"] = await profile_agent(reader, watch, args, ctx, kind)
    finally:
        try:
            result["exit_code"] = await reader.stop()
        finally:
            watch.stop()
    result["warnings"] = reader.warnings()
    result.update(sequence_check(reader.output, *reader.fields))
    if kind in ("files", "api"):
        followed = reader.followed(idset)
        result["followed"] = len(followed)
        if len(followed) == n:
            result["all_followed_s"] = max(followed.values()) - t0
    if args.keep:
        result["workdir"] = str(workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


async def late_followed(reader: Reader, ctx: dict[str, Any], n: int) -> dict[str, Any]:
    """Starts ``n`` more tickers while the agent runs (after the window), and how long
    after its start each was followed: its ``container_followed`` line's stamp less the
    engine's ``State.StartedAt``. They are removed before the next phase."""
    engine = ctx["engine"]
    tag = new_run_id()
    ids = await engine.create_many(
        [f"ca-bench-{ctx['run_id']}-late-{tag}-{i}" for i in range(n)],
        [ticker_command(i, 1.0) for i in range(n)],
        ctx["run_id"],
    )
    try:
        await engine.start_many(ids)
        started = {}
        for cid in ids:
            info = await engine.docker.containers.container(cid).show()
            started[cid] = ts_epoch(info["State"]["StartedAt"])
        deadline = time.monotonic() + LATE_WAIT_SECONDS
        followed = reader.followed(set(ids))
        while len(followed) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            followed = reader.followed(set(ids))
        delays = [1000 * (followed[c] - started[c]) for c in ids if c in followed]
        return {
            "late_followed": len(followed),
            "late_follow_ms": median(delays) if delays else None,
            "late_follow_max_ms": max(delays) if delays else None,
        }
    finally:
        await engine.remove(ids)


async def engine_phase(
    args: argparse.Namespace, ctx: dict[str, Any], ids: list[str]
) -> dict[str, Any]:
    """dockerd's CPU with the containers running and no reader at all."""
    foreign = await ctx["engine"].foreign_running()
    others = OthersMeter().start()
    group = GroupCpu(engine_side_pids(ids)).start()
    meter = CpuMeter(dockerd=dockerd_pid()).start()
    t0 = time.time()
    await asyncio.sleep(args.scale_window)
    used = meter.stop()
    elapsed = time.time() - t0
    engine_side = group.stop()
    others.stop()
    foreign = max(foreign, await ctx["engine"].foreign_running())
    return {
        "phase": "engine",
        "window_s": elapsed,
        "dockerd_cpu_pct": 100 * used["dockerd"] / elapsed if "dockerd" in used else None,
        "engine_side_cpu_pct": 100 * engine_side / elapsed,
        "machine_busy_pct": used.get("machine_busy_pct"),
        "others_cpu_s": others.cpu_s,
        "others_top": others.top,
        "foreign_containers": foreign,
        "skewed": skewed(others.cpu_s, elapsed, foreign),
    }


# -- profiling --------------------------------------------------------------------------


def py_spy() -> str | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return exe if os.access(exe, os.X_OK) else None


async def profile_agent(
    reader: Reader, watch: OutputWatch, args: argparse.Namespace, ctx: dict[str, Any], kind: str
) -> dict[str, Any]:
    """py-spy, then strace, each for ``--profile-seconds``, on the running agent."""
    pid = reader.pid
    secs = args.profile_seconds
    tag = f"{kind}-{ctx['n']}x{ctx['rate']:g}"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    exe = py_spy()
    if exe is not None:
        raw = RESULTS_DIR / f"scale-pyspy-{tag}.txt"
        threads0, cpu0, lines0 = thread_cpu_seconds(pid), cpu_seconds(pid), watch.lines
        gc0 = reader.gc_stats()
        t0 = time.time()
        log(f"  profile {tag}: py-spy for {secs:g} s")
        proc = subprocess.Popen(  # noqa: ASYNC220 - waited for in a thread
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(args.profile_rate),
                "--duration",
                str(int(secs)),
                "--format",
                "raw",
                "--nolineno",
                "--threads",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.to_thread(proc.communicate, None, secs + 60)
        elapsed = time.time() - t0
        threads1, cpu1, lines1 = thread_cpu_seconds(pid), cpu_seconds(pid), watch.lines
        gc1 = reader.gc_stats()
        out["pyspy"] = {
            "raw": str(raw),
            "seconds": elapsed,
            "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
            "lines_per_s": (lines1 - lines0) / elapsed,
            "main_thread_cpu_pct": 100 * (threads1.get(pid, 0) - threads0.get(pid, 0)) / elapsed,
            "other_threads_cpu_pct": 100
            * sum(v - threads0.get(t, 0.0) for t, v in threads1.items() if t != pid)
            / elapsed,
            "threads": len(threads1),
        }
        if gc0 and gc1:
            out["gc"] = {
                "collections_per_s": [
                    (b - a) / elapsed
                    for a, b in zip(gc0["collections"], gc1["collections"], strict=True)
                ],
                "ms_per_s": [
                    1000 * (b - a) / elapsed
                    for a, b in zip(gc0["seconds"], gc1["seconds"], strict=True)
                ],
            }
        if raw.exists() and raw.stat().st_size:
            out["pyspy"].update(summarise_raw(raw))
        else:
            out["pyspy"]["error"] = err.decode(errors="replace")[-500:]
    if shutil.which("strace"):
        txt = RESULTS_DIR / f"scale-strace-{tag}.txt"
        log(f"  profile {tag}: strace -c -f for {secs:g} s")
        cpu0, lines0 = cpu_seconds(pid), watch.lines
        t0 = time.time()
        proc = subprocess.Popen(  # noqa: ASYNC220 - waited for in a thread
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(txt)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(secs)
        proc.send_signal(signal.SIGINT)
        await asyncio.to_thread(proc.wait, 60)
        elapsed = time.time() - t0
        calls = parse_strace(txt)
        out["strace"] = {
            "file": str(txt),
            "seconds": elapsed,
            "cpu_pct_under_strace": 100 * (cpu_seconds(pid) - cpu0) / elapsed,
            "lines_per_s": (watch.lines - lines0) / elapsed,
            "per_s": {k: v / elapsed for k, v in sorted(calls.items(), key=lambda kv: -kv[1])},
        }
    return out


# Stacks whose innermost frame is one of these are threads waiting, not working (py-spy
# does not always tell: a C call that blocks leaves the Python frame that made it on top).
IDLE_LEAVES = (
    "EpollSelector.select (selectors.py)",
    "_worker (concurrent/futures/thread.py)",
    "Inotify._run (agent/sources/jsonfile/inotify.py)",
    "Condition.wait (threading.py)",
)


def _thread_role(name: str) -> str:
    if name == "MainThread":
        return "main (event loop)"
    if name == "inotify":
        return "inotify watcher"
    if name.startswith("asyncio_"):
        return "asyncio default executor (to_thread)"
    if name.startswith("metrics"):
        return "metrics executor"
    return name


def summarise_raw(raw: Path, top: int = 25) -> dict[str, Any]:
    """Per-thread, per-function (self and inclusive) and per-area shares of the samples
    that were working (``IDLE_LEAVES`` left out)."""
    self_c: collections.Counter[str] = collections.Counter()
    incl_c: collections.Counter[str] = collections.Counter()
    thread_c: collections.Counter[str] = collections.Counter()
    area_c: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        c = int(count)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        name = "?"
        if frames and frames[0].startswith("thread ("):
            name = frames[0].partition(": ")[2] or "?"
            frames = frames[1:]
        if not frames:
            continue
        if frames[-1] in IDLE_LEAVES:
            idle += c
            continue
        total += c
        thread_c[_thread_role(name)] += c
        self_c[frames[-1]] += c
        for f in set(frames):
            incl_c[f] += c
        for area, patterns in AREAS:
            if any(p in stack for p in patterns):
                area_c[area] += c
    if not total:
        return {"samples": 0, "idle_samples": idle}
    pct = 100 / total
    agentish = [(f, v) for f, v in incl_c.most_common() if "(agent/" in f or "(exporters/" in f]
    return {
        "samples": total,
        "idle_samples": idle,
        "by_thread": {k: v * pct for k, v in thread_c.most_common()},
        "areas": {a: area_c[a] * pct for a, _ in AREAS if area_c[a]},
        "top_self": [{"function": f, "pct": v * pct} for f, v in self_c.most_common(top)],
        "top_inclusive_agent": [{"function": f, "pct": v * pct} for f, v in agentish[:top]],
    }


def parse_strace(path: Path) -> dict[str, int]:
    """``strace -c`` summary: calls per syscall."""
    calls: dict[str, int] = {}
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return calls
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (5, 6) or parts[-1] == "total":
            continue
        try:
            float(parts[0])
            n = int(parts[3])
        except ValueError:
            continue
        calls[parts[-1]] = n
    return calls


# -- a shape ----------------------------------------------------------------------------


async def run_shape(
    engine: BenchEngine, args: argparse.Namespace, base: dict[str, Any], n: int, rate: float
) -> dict[str, Any]:
    run_id = new_run_id()
    ctx = dict(base, run_id=run_id, n=n, rate=rate, engine=engine)
    ctx["profile"] = args.profile and n in args.profile_n and rate in args.profile_rates
    result: dict[str, Any] = {"n": n, "rate": rate, "phases": {}}
    phases = [p for p in args.scale_phases if p != "fluent-bit" or base.get("fluent_bit")]
    runs = []  # (name, phase, agent command or None: this tree's)
    for i in range(args.ab_rounds if args.ab_agent else 1):
        suffix = f" r{i + 1}" if i else ""
        for phase in phases:
            if args.ab_agent and phase in ("files", "api"):
                pair = [(phase + suffix, phase, None), (f"{phase}@b{suffix}", phase, args.ab_agent)]
                runs.extend(pair if i % 2 == 0 else pair[::-1])  # alternate which goes first
            elif i == 0:
                runs.append((phase, phase, None))
    try:
        await wait_quiet(engine, args.quiet_wait)
        log(f"scale {n} x {rate:g}/s: starting {n} containers")
        ids, setup = await start_workload(
            engine, run_id, n, rate, base["cdir"], args.startup_timeout
        )
        result["setup"] = setup
        # Fluent Bit reads every container's log that its Path matches: the glob when this
        # run's containers are the engine's only ones (as on a node), else their own files.
        glob = os.path.join(base["cdir"], "*", "*-json.log")
        alone = args.fb_path == "glob" or (
            args.fb_path == "auto" and not await engine.foreign_running()
        )
        ctx["fb_path"] = glob if alone else ",".join(log_path(base["cdir"], c) for c in ids)
        result["fb_path"] = "glob" if alone else "ids"
        log(
            f"  created in {setup['create_s']:.1f} s, started in {setup['start_s']:.1f} s, "
            f"all printing {setup['printing_s']:.1f} s later"
        )
        for name, phase, command in runs:
            for attempt in range(args.retries + 1):
                log(f"  {n} x {rate:g}/s: {name}")
                if phase == "engine":
                    r = await engine_phase(args, ctx, ids)
                else:
                    run_ctx = dict(ctx, agent_command=[command]) if command else ctx
                    r = await reader_phase(phase, args, run_ctx, ids)
                r["discarded_attempts"] = attempt
                log("  " + summary_line(r))
                if not r["skewed"] or attempt == args.retries:
                    break
                # Others used the machine or ran containers on the engine meanwhile.
                log(
                    f"  {phase}: others used {r['others_cpu_s']:.1f} CPU s, "
                    f"{r['foreign_containers']} other container(s); measuring again"
                )
                await wait_quiet(engine, args.quiet_wait)
            result["phases"][name] = r
    finally:
        t = time.perf_counter()
        await engine.cleanup(run_id)
        result["cleanup_s"] = time.perf_counter() - t
    return result


def summary_line(r: dict[str, Any]) -> str:
    keys = ("cpu_pct", "dockerd_cpu_pct", "rss_mb", "p50_ms", "p99_ms", "all_in_output_s")
    return r["phase"] + ": " + ", ".join(f"{k} {fmt(r.get(k))}" for k in keys if k in r)


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return None
    return a / b


ROWS = (
    ("cpu_pct", "CPU % (window)"),
    ("startup_cpu_s", "start-up CPU s (until all in output)"),
    ("all_followed_s", "all followed s (agent log)"),
    ("all_in_output_s", "all in output s"),
    ("late_follow_ms", "followed after own start ms (median)"),
    ("late_follow_max_ms", "followed after own start ms (max)"),
    ("dockerd_cpu_pct", "dockerd CPU %"),
    ("engine_side_cpu_pct", "containerd+shims CPU %"),
    ("machine_busy_pct", "machine busy % (all CPUs)"),
    ("rss_mb", "RSS MB"),
    ("peak_rss_mb", "peak RSS MB"),
    ("fds", "open fds"),
    ("threads", "threads"),
    ("p50_ms", "latency p50 ms"),
    ("p99_ms", "latency p99 ms"),
    ("max_ms", "latency max ms"),
    ("lines_per_s", "lines/s delivered"),
    ("seq_missing", "numbered lines missing (whole run)"),
    ("seq_twice", "numbered lines written twice"),
    ("scrape_ms", "/metrics ms (median; gzip asked)"),
    ("scrape_wire_kb", "/metrics KB on the wire"),
    ("scrape_identity_ms", "/metrics ms (median; identity)"),
    ("scrape_cpu_ms", "/metrics agent CPU ms (median)"),
    ("scrape_kb", "/metrics KB"),
)


def shape_table(s: dict[str, Any]) -> str:
    ph = s["phases"]
    fb = ph.get("fluent-bit")
    cols = list(ph)
    headers = ["", *cols]
    if fb:
        headers += [f"{p} / fluent-bit" for p in ("files", "api") if p in ph]
    rows = []
    for key, title in ROWS:
        row: list[Any] = [title, *(ph[p].get(key) for p in cols)]
        if fb:
            row += [_ratio(ph[p].get(key), fb.get(key)) for p in ("files", "api") if p in ph]
        if any(v is not None for v in row[1:]):
            rows.append(row)
    base = ph.get("engine", {}).get("dockerd_cpu_pct")
    row = ["CPU % / engine-only dockerd CPU %", None]
    row += [_ratio(ph[p].get("cpu_pct"), base) if p != "engine" else None for p in cols[1:]]
    if fb:
        row += [None for p in ("files", "api") if p in ph]
    rows.append(row)
    lines = [
        f"{s['n']} containers x {s['rate']:g} line/s each (offered {s['n'] * s['rate']:,.0f} "
        f"lines/s), window {next(iter(ph.values()))['window_s']:.0f} s",
        table(headers, rows),
    ]
    warn = [p for p in cols if ph[p].get("skewed")]
    if warn:
        lines.append(
            "WARNING: others used the machine during: "
            + ", ".join(
                f"{p} ({ph[p]['others_cpu_s']:.1f} CPU s, {ph[p]['foreign_containers']} "
                f"foreign containers)"
                for p in warn
            )
        )
    for p in cols:
        if ph[p].get("warnings"):
            lines.append(
                f"{p} warned: " + ", ".join(f"{k} x{v}" for k, v in ph[p]["warnings"].items())
            )
        if ph[p].get("fd_kinds"):
            lines.append(
                f"{p} descriptors: "
                + ", ".join(f"{k} {v}" for k, v in sorted(ph[p]["fd_kinds"].items()))
            )
        if ph[p].get("polling_watch"):
            lines.append(f"{p}: no inotify instance left for the bench's output watch (polled)")
    if fb:
        lines.append(
            "fluent-bit Path: "
            + ("<containers dir>/*/*-json.log" if s.get("fb_path") == "glob" else "")
            + (
                "the run's containers' files (other containers ran on the engine)"
                if s.get("fb_path") == "ids"
                else ""
            )
        )
    for p in cols:
        prof = ph[p].get("profile")
        if prof:
            lines.append(profile_text(p, prof))
    ab = ab_table(ph)
    if ab:
        lines.append(ab)
    return "\n".join(lines)


AB_KEYS = (
    ("scrape_ms", "/metrics ms, gzip asked"),
    ("scrape_identity_ms", "/metrics ms, identity"),
    ("scrape_cpu_ms", "/metrics agent CPU ms"),
    ("scrape_wire_kb", "/metrics KB on the wire"),
    ("cpu_pct", "CPU %"),
    ("p99_ms", "latency p99 ms"),
)


def ab_table(ph: dict[str, Any]) -> str:
    """With --ab-agent: this tree (a) against the other (b), medians over the rounds; and
    every scrape's time, a's then b's."""
    out = []
    for phase in ("files", "api"):
        a = [r for name, r in ph.items() if name.split(" ")[0] == phase]
        b = [r for name, r in ph.items() if name.split(" ")[0] == f"{phase}@b"]
        if not a or not b:
            continue
        rows = []
        for key, title in AB_KEYS:
            ma, mb = median(r.get(key) for r in a), median(r.get(key) for r in b)
            rows.append([title, ma, mb, _ratio(ma, mb)])
        for key in ("scrapes_ms", "scrapes_identity_ms"):
            for tag, runs in (("a", a), ("b", b)):
                every = sorted(x for r in runs for x in r.get(key, []))
                rows.append([f"{key} {tag}: median of all", median(every), None, None])
        out.append(
            f"{phase}: this tree (a) against --ab-agent (b), medians of {len(a)} and {len(b)} "
            "run(s)"
        )
        out.append(table(["", "a", "b", "a / b"], rows))
        for tag, runs in (("a", a), ("b", b)):
            out.append(
                f"  {tag} scrapes (gzip asked | identity), ms: "
                + "; ".join(
                    " ".join(f"{x:.0f}" for x in r.get("scrapes_ms", []))
                    + " | "
                    + " ".join(f"{x:.0f}" for x in r.get("scrapes_identity_ms", []))
                    for r in runs
                )
            )
    return "\n".join(out)


def profile_text(phase: str, prof: dict[str, Any]) -> str:
    out = []
    ps = prof.get("pyspy")
    if ps and ps.get("samples"):
        out.append(
            f"profile, {phase}: py-spy {ps['seconds']:.0f} s, {ps['samples']} working samples "
            f"({ps['idle_samples']} idle left out), agent "
            f"{ps['cpu_pct']:.1f} % CPU (main thread {ps['main_thread_cpu_pct']:.1f} %, others "
            f"{ps['other_threads_cpu_pct']:.1f} %, {ps['threads']} threads), "
            f"{ps['lines_per_s']:,.0f} lines/s"
        )
        out.append(
            "  working samples by thread: "
            + ", ".join(f"{k} {v:.1f} %" for k, v in ps["by_thread"].items())
        )
        out.append(table(["area (inclusive)", "% of samples"], list(ps["areas"].items())))
        out.append(
            table(
                ["function (self)", "%"],
                [[t["function"], t["pct"]] for t in ps["top_self"][:15]],
            )
        )
        out.append(
            table(
                ["agent function (inclusive)", "%"],
                [[t["function"], t["pct"]] for t in ps["top_inclusive_agent"][:20]],
            )
        )
    gc = prof.get("gc")
    if gc:
        out.append(
            "  GC per s (gen 0/1/2): "
            + " / ".join(f"{c:.1f}" for c in gc["collections_per_s"])
            + " collections, "
            + " / ".join(f"{m:.2f}" for m in gc["ms_per_s"])
            + " ms"
        )
    st = prof.get("strace")
    if st:
        top = list(st["per_s"].items())[:14]
        out.append(
            f"  strace -c -f {st['seconds']:.0f} s ({st['lines_per_s']:,.0f} lines/s, agent "
            f"{st['cpu_pct_under_strace']:.1f} % CPU under strace), calls/s: "
            + ", ".join(f"{k} {v:,.1f}" for k, v in top)
        )
    return "\n".join(out)


# -- bulk -------------------------------------------------------------------------------


def first_stamp(path: Path, parse: Callable[[bytes], tuple[str, str] | None]) -> float | None:
    """The earliest engine stamp among the output's first lines (when writing began)."""
    best = None
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for i, line in enumerate(f):
            if i > 20_000:
                break
            got = parse(line.rstrip(b"\n"))
            if got:
                t = ts_epoch(got[1])
                best = t if best is None else min(best, t)
    return best


async def bulk_run(
    engine: BenchEngine, args: argparse.Namespace, base: dict[str, Any], kind: str
) -> dict[str, Any]:
    c, lines, delay = args.bulk_containers, args.bulk_lines, args.bulk_delay
    run_id = new_run_id()
    ctx = dict(base, run_id=run_id, start_at="beginning", fb_path="")
    source, _, other = kind.partition("@")
    if other:  # "files@b": --ab-agent's tree
        ctx["agent_command"] = [args.ab_agent]
    workdir = Path(tempfile.mkdtemp(prefix=f"ca-bench-bulk-{source}-"))
    reader = Reader(source, workdir, ctx)
    expected = c * lines
    result: dict[str, Any] = {"reader": kind}
    tail = RecordTail(reader.output, None if kind == "fluent-bit" else RecordTail.LOG)
    try:
        await wait_quiet(engine, args.quiet_wait)
        specs = [throughput.writer_command(i, lines) for i in range(c)]
        cmds = [["sh", "-c", f"sleep {delay:g}; " + s[0][2]] for s in specs]
        ids = await engine.create_many(
            [f"ca-bench-{run_id}-bulk-{i}" for i in range(c)], cmds, run_id, [s[1] for s in specs]
        )
        if reader.fb is not None:
            glob = os.path.join(base["cdir"], "*", "*-json.log")
            alone = args.fb_path == "glob" or (
                args.fb_path == "auto" and not await engine.foreign_running()
            )
            reader.fb.glob = glob if alone else ",".join(log_path(base["cdir"], i) for i in ids)
            result["fb_path"] = "glob" if alone else "ids"
        await engine.start_many(ids)
        t_started = time.time()
        reader.start()
        pid = reader.pid
        # Writing begins `delay` s after the start: the reader's CPU counts from just before.
        await asyncio.sleep(max(0.0, t_started + delay - 0.3 - time.time()))
        reader.check_alive()
        if kind != "fluent-bit":
            followed = reader.followed(set(ids))
            result["followed_before_writing"] = len(followed)
        meter = CpuMeter(reader=pid, dockerd=dockerd_pid()).start()
        deadline = time.time() + max(120.0, expected / 5_000)
        used: dict[str, float] = {}

        def paused() -> None:
            nonlocal used
            used = meter.stop()

        def give_up(quiet: float) -> str | None:
            stalled = quiet > 30 or time.time() > deadline
            return f"  bulk {kind}: stalled" if stalled else None

        t_end = await watch_output(tail, expected, paused, give_up, reader.check_alive)
        count = tail.logs
        result["peak_rss_mb"] = peak_rss_mb(pid)
        begin = first_stamp(reader.output, reader.parse) or (t_started + delay)
        wall = (t_end or begin) - begin
        result.update(
            {
                "lines": count,
                "wall_s": wall,
                "lines_per_s": count / wall if wall > 0 else None,
                "cpu_s": used["reader"],
                "cpu_s_per_mlines": used["reader"] / (count / 1e6) if count else None,
                "dockerd_cpu_s": used.get("dockerd"),
                "machine_busy_pct": used.get("machine_busy_pct"),
            }
        )
    finally:
        tail.close()
        try:
            result["exit_code"] = await reader.stop()
        finally:
            await engine.cleanup(run_id)
            shutil.rmtree(workdir, ignore_errors=True)
    return result


BULK_COLUMNS = (
    ("wall_s", "wall s"),
    ("lines_per_s", "lines/s"),
    ("cpu_s_per_mlines", "CPU s/M lines"),
    ("dockerd_cpu_s", "dockerd CPU s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("machine_busy_pct", "machine busy %"),
)


async def bulk(
    engine: BenchEngine, args: argparse.Namespace, base: dict[str, Any]
) -> dict[str, Any]:
    kinds = ["files", "api"] + (["fluent-bit"] if base.get("fluent_bit") else [])
    if args.ab_agent:  # the other tree beside each, which goes first alternating
        kinds[1:1] = ["files@b"]
        kinds[3:3] = ["api@b"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(args.bulk_runs):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            log(f"bulk run {i + 1}/{args.bulk_runs}: {kind}")
            r = await bulk_run(engine, args, base, kind)
            runs[kind].append(r)
            log(
                f"  {kind}: {r.get('lines', 0):,} lines, {fmt(r.get('lines_per_s'))} lines/s, "
                f"{fmt(r.get('cpu_s_per_mlines'))} CPU s/M"
            )
    medians = {
        k: {c: median(r.get(c) for r in rs) for c, _ in BULK_COLUMNS} for k, rs in runs.items()
    }
    ratios = {}
    if "fluent-bit" in medians:
        fb = medians["fluent-bit"]
        ratios = {
            k: {c: _ratio(medians[k][c], fb[c]) for c, _ in BULK_COLUMNS} for k in ("files", "api")
        }
    return {
        "params": {
            "containers": args.bulk_containers,
            "lines": args.bulk_lines,
            "runs": args.bulk_runs,
        },
        "runs": runs,
        "median": medians,
        "ratio_to_fluent_bit": ratios,
    }


def bulk_text(b: dict[str, Any]) -> str:
    p = b["params"]
    rows = [[k, *(m.get(c) for c, _ in BULK_COLUMNS)] for k, m in b["median"].items()]
    for k, r in b["ratio_to_fluent_bit"].items():
        rows.append([f"{k} / fluent-bit", *(r.get(c) for c, _ in BULK_COLUMNS)])
    return "\n".join(
        [
            f"bulk: {p['containers']} containers x {p['lines']:,} lines of "
            f"{throughput.LINE_BYTES} B as fast as they can, median of {p['runs']} run(s)",
            table(["reader", *(t for _, t in BULK_COLUMNS)], rows),
        ]
    )


# -- the benchmark ----------------------------------------------------------------------


async def run(args: argparse.Namespace, engine: BenchEngine) -> dict[str, Any]:
    exe = fluentbit.binary()
    base: dict[str, Any] = {
        "host": engine.host,
        "cdir": await containers_dir(engine),
        "start_at": args.start_at,
        "fluent_bit": exe,
        "fb_flush": args.fb_flush,
    }
    result: dict[str, Any] = {
        "params": {
            "n": args.scale_n,
            "rates": args.scale_rates,
            "window_s": args.scale_window,
            "start_at": args.start_at,
        },
        "fluent_bit": {"binary": exe, "version": fluentbit.version(exe)} if exe else None,
        "limits": {
            "nofile": _nofile(),
            "inotify_max_user_instances": _read_int("/proc/sys/fs/inotify/max_user_instances"),
            "inotify_max_user_watches": _read_int("/proc/sys/fs/inotify/max_user_watches"),
        },
        "shapes": [],
    }
    if exe is None:
        log("FLUENT_BIT is not set (or not executable): no Fluent Bit comparison")
    ns = list(args.scale_n) + ([1000] if args.with_1000 and 1000 not in args.scale_n else [])
    if not args.no_shapes:
        for n in ns:
            for rate in args.scale_rates:
                try:
                    shape = await run_shape(engine, args, base, n, rate)
                    log("\n" + shape_table(shape))
                except (TimeoutError, RuntimeError) as exc:
                    log(f"scale {n} x {rate:g}: FAILED: {exc}")
                    shape = {"n": n, "rate": rate, "error": str(exc)}
                result["shapes"].append(shape)
                # What is measured so far survives an interrupted run.
                write_json(RESULTS_DIR / "scale-partial.json", result)
    if args.bulk:
        result["bulk"] = await bulk(engine, args, base)
    return result


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _nofile() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def report(result: dict[str, Any]) -> str:
    out = []
    fb = result.get("fluent_bit")
    out.append(
        f"Fluent Bit: {fb['version']} ({fb['binary']})"
        if fb
        else "Fluent Bit: not run (set FLUENT_BIT to a fluent-bit binary for the ratios)"
    )
    lim = result["limits"]
    out.append(
        f"limits: nofile {lim['nofile']}, inotify instances {lim['inotify_max_user_instances']}, "
        f"watches {lim['inotify_max_user_watches']}; readers start at "
        f"{result['params']['start_at']}"
    )
    for s in result["shapes"]:
        if "error" in s:
            out.append(f"{s['n']} containers x {s['rate']:g}/s: FAILED: {s['error']}")
            continue
        out.append("")
        su = s["setup"]
        out.append(
            f"[{s['n']} containers: created in {su['create_s']:.0f} s, started in "
            f"{su['start_s']:.0f} s, removed in {s['cleanup_s']:.0f} s]"
        )
        out.append(shape_table(s))
    if result.get("bulk"):
        out.append("")
        out.append(bulk_text(result["bulk"]))
    return "\n".join(out)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("scale")
    g.add_argument("--scale-n", type=_ints, default=[100, 300], help="containers (100,300)")
    g.add_argument("--with-1000", action="store_true", help="also N=1000 (several minutes more)")
    g.add_argument("--scale-rates", type=_floats, default=[1.0, 10.0], help="lines/s each (1,10)")
    g.add_argument("--scale-window", type=float, default=30.0, help="measured window, s (30)")
    g.add_argument("--scale-settle", type=float, default=2.0, help="after all are in output (2)")
    g.add_argument(
        "--scale-scrape-interval",
        type=float,
        default=15.0,
        help="s between /metrics scrapes in the window, as Prometheus's (15; 0: none)",
    )
    g.add_argument(
        "--scale-scrapes", type=int, default=3, help="/metrics scrapes timed after the window (3)"
    )
    g.add_argument(
        "--scale-late",
        type=int,
        default=5,
        help="containers started after the window: followed how long after their start (5)",
    )
    g.add_argument("--startup-timeout", type=float, default=300.0, help="s (300)")
    g.add_argument(
        "--start-at",
        choices=("now", "beginning"),
        default="now",
        help="where readers start in the logs (now: no backlog; Fluent Bit's Read_from_Head "
        "follows it)",
    )
    g.add_argument(
        "--fb-flush", type=float, default=None, help="Fluent Bit's Flush (its default: 1 s)"
    )
    g.add_argument(
        "--no-shapes", action="store_true", help="skip the N x R shapes (e.g. --bulk only)"
    )
    g.add_argument(
        "--fb-path",
        choices=("auto", "glob", "ids"),
        default="auto",
        help="Fluent Bit's tail Path: <containers dir>/*/*-json.log (glob), the run's "
        "containers' files (ids), or the glob when no other container runs (auto)",
    )
    g.add_argument(
        "--scale-phases",
        type=lambda text: [p for p in text.split(",") if p],
        default=list(PHASES),
        help="which phases, in this order (engine,files,fluent-bit,api)",
    )
    g.add_argument(
        "--ab-agent",
        help="a container-agent of another tree (e.g. ../main/.venv/bin/container-agent): "
        "each files and api phase is run again with it, as files@b and api@b, in the same "
        "run on the same containers",
    )
    g.add_argument(
        "--ab-rounds",
        type=int,
        default=1,
        help="with --ab-agent: rounds of the agent phases, which goes first alternating (1)",
    )
    g.add_argument("--profile", action="store_true", help="py-spy and strace after agent windows")
    g.add_argument(
        "--profile-n", type=_ints, default=[100, 300], help="shapes to profile (100,300)"
    )
    g.add_argument("--profile-rates", type=_floats, default=[1.0], help="rates to profile (1)")
    g.add_argument(
        "--profile-seconds", type=float, default=20.0, help="each of py-spy, strace (20)"
    )
    g.add_argument("--profile-rate", type=int, default=500, help="py-spy samples/s (500)")
    g.add_argument(
        "--bulk", action="store_true", help="also 4 x 250,000 lines, agent vs Fluent Bit"
    )
    g.add_argument("--bulk-containers", type=int, default=4)
    g.add_argument("--bulk-lines", type=int, default=250_000)
    g.add_argument("--bulk-runs", type=int, default=3)
    g.add_argument(
        "--bulk-delay", type=float, default=4.0, help="containers wait before writing (4)"
    )
    g.add_argument("--keep", action="store_true", help="keep the readers' work dirs in /tmp")
    add_quiet_argument(parser)
    add_retries_argument(parser)


def main() -> None:
    standalone(sys.modules[__name__])


if __name__ == "__main__":
    main()
