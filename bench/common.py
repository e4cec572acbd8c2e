"""Helpers shared by the benchmarks: the test engine, bench containers, process metrics,
the agent as a subprocess, the agent's output file, and table output.

Every bench container carries the label ``ca-bench=1`` (leftovers are removed when a bench
starts) and ``ca-bench-run=<run id>``, which the agent's config includes, so that one agent
only reads its own run's containers. Containers run with network mode ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import functools
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiodocker
import orjson

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENGINE_DIR = Path(os.environ.get("CA_ENGINE_DIR") or "/tmp/container-agent-engine")
IMAGE = os.environ.get("CA_TEST_IMAGE", "ca-busybox:latest")
BENCH_LABEL = "ca-bench"
RUN_LABEL = "ca-bench-run"
# "<pid>:<start time in clock ticks>" of the bench process that created the container, so
# that one bench's start-up cleanup never removes the containers of another running bench.
OWNER_LABEL = "ca-bench-owner"
UNOWNED_MAX_AGE_S = 2 * 3600  # bench containers from before owner labels: removed when older
CLK_TCK = os.sysconf("SC_CLK_TCK")

T = TypeVar("T")


def log(message: str) -> None:
    """Progress output (stderr, so that a bench's stdout holds only its results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def within(seconds: float, aw: Awaitable[T], what: str) -> T:
    """``await aw`` with a timeout whose error says what was waited for."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        raise TimeoutError(f"{what}: no answer within {seconds:g} s") from None


# -- the engine ---------------------------------------------------------------------------


def engine_host() -> str:
    """The test engine's address: $CA_TEST_DOCKER_HOST, else ``scripts/test-engine.sh start``."""
    host = os.environ.get("CA_TEST_DOCKER_HOST")
    if host:
        return host
    script = REPO / "scripts" / "test-engine.sh"
    out = subprocess.run(
        [str(script), "start", str(ENGINE_DIR)],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("DOCKER_HOST="):
            host = line.split("=", 1)[1].strip()
            os.environ["CA_TEST_DOCKER_HOST"] = host
            return host
    raise RuntimeError(f"{script} start printed no DOCKER_HOST line: {out.stdout!r}")


def socket_path(host: str) -> str:
    if not host.startswith("unix://"):
        raise ValueError(f"the benchmarks need a unix socket engine, not {host}")
    return host.removeprefix("unix://")


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()[19].decode()  # field 22: starttime


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid)}"


def owner_alive(token: str) -> bool:
    pid, _, ticks = token.partition(":")
    return pid.isdigit() and _start_ticks(int(pid)) == ticks


def new_run_id() -> str:
    return f"{int(time.time())}-{secrets.token_hex(3)}"


class BenchEngine:
    """An aiodocker client that creates, starts and removes bench containers.

    ``async with BenchEngine(host) as engine:`` removes leftover bench containers first.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self.docker = aiodocker.Docker(url=host)

    async def __aenter__(self) -> BenchEngine:
        try:
            removed = await self.cleanup(leftovers_only=True)
        except BaseException:
            await self.docker.close()
            raise
        if removed:
            log(f"removed {removed} leftover bench container(s)")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.docker.close()

    async def version(self) -> dict[str, Any]:
        return await within(30, self.docker.version(), "GET /version")

    async def cleanup(self, run_id: str | None = None, leftovers_only: bool = False) -> int:
        """Removes the containers of one run, or every bench container (``ca-bench=1``);
        ``leftovers_only`` spares those whose creating bench process still runs (another
        bench may share the engine). Returns how many were removed."""
        label = f"{RUN_LABEL}={run_id}" if run_id else f"{BENCH_LABEL}=1"
        filters = json.dumps({"label": [label]})
        listed = await within(
            30,
            self.docker._query_json("containers/json", params={"all": "1", "filters": filters}),
            "list bench containers",
        )
        if leftovers_only:
            now = time.time()
            listed = [
                c
                for c in listed
                if (
                    not owner_alive(owner)
                    if (owner := (c.get("Labels") or {}).get(OWNER_LABEL))
                    else now - c.get("Created", now) > UNOWNED_MAX_AGE_S
                )
            ]
        await self.remove([c["Id"] for c in listed])
        return len(listed)

    async def foreign_running(self) -> int:
        """Running containers on the engine that this process did not create (another
        bench or test sharing the engine skews every CPU figure)."""
        listed = await within(
            30, self.docker._query_json("containers/json"), "list running containers"
        )
        mine = owner_token()
        return sum(1 for c in listed if (c.get("Labels") or {}).get(OWNER_LABEL) != mine)

    async def create(
        self,
        name: str,
        cmd: Sequence[str],
        run_id: str,
        env: dict[str, str] | None = None,
    ) -> str:
        config = {
            "Image": IMAGE,
            "Cmd": list(cmd),
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
            "Labels": {BENCH_LABEL: "1", RUN_LABEL: run_id, OWNER_LABEL: owner_token()},
            "AttachStdout": False,
            "AttachStderr": False,
            "NetworkDisabled": True,
            "HostConfig": {"NetworkMode": "none"},
        }
        container = await within(
            60, self.docker.containers.create(config, name=name), f"create {name}"
        )
        return container.id

    async def create_many(
        self,
        names: Sequence[str],
        cmds: Sequence[Sequence[str]],
        run_id: str,
        envs: Sequence[dict[str, str] | None] | None = None,
        parallel: int = 8,
    ) -> list[str]:
        sem = asyncio.Semaphore(parallel)
        envs = envs or [None] * len(names)

        async def one(name: str, cmd: Sequence[str], env: dict[str, str] | None) -> str:
            async with sem:
                return await self.create(name, cmd, run_id, env)

        return list(
            await asyncio.gather(*(one(n, c, e) for n, c, e in zip(names, cmds, envs, strict=True)))
        )

    async def start(self, cid: str) -> None:
        await within(60, self.docker.containers.container(cid).start(), f"start {cid[:12]}")

    async def start_many(self, ids: Sequence[str], parallel: int = 8) -> None:
        sem = asyncio.Semaphore(parallel)

        async def one(cid: str) -> None:
            async with sem:
                await self.start(cid)

        await asyncio.gather(*(one(c) for c in ids))

    async def wait_exit(self, cid: str, timeout: float) -> int:
        data = await within(
            timeout,
            self.docker.containers.container(cid).wait(timeout=None),
            f"wait for {cid[:12]} to exit",
        )
        return int(data.get("StatusCode", -1))

    async def remove(self, ids: Iterable[str]) -> None:
        """Force-removes containers (and their log files); missing ones are fine."""
        sem = asyncio.Semaphore(8)

        async def one(cid: str) -> None:
            async with sem:
                with contextlib.suppress(aiodocker.DockerError):
                    await within(
                        60,
                        self.docker.containers.container(cid).delete(force=True, v=True),
                        f"remove {cid[:12]}",
                    )

        await asyncio.gather(*(one(c) for c in ids))

    async def logs_bytes(self, cid: str, timeout: float = 120) -> bytes:
        """The whole framed ``/logs`` answer (no follow, with timestamps) as bytes."""
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "0"}

        async def fetch() -> bytes:
            async with self.docker._query(f"containers/{cid}/logs", params=params) as resp:
                return await resp.read()

        return await within(timeout, fetch(), f"GET /containers/{cid[:12]}/logs")


# -- process metrics ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    return cpu_seconds_path(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each thread of a process, by thread id (the main thread's is pid)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[int(task.name)] = cpu_seconds_path(task / "stat")
    return out


def cpu_seconds_path(stat_path: Path) -> float:
    stat = stat_path.read_bytes()
    # Fields after "(comm)": state is field 3, utime field 14, stime field 15.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set size, in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


def rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


def dockerd_pid() -> int | None:
    """The test engine's dockerd: its pidfile, else a dockerd whose command line names the
    engine dir; None if neither is found (engine CPU is then not reported)."""
    for candidate in (ENGINE_DIR / "dockerd.pid", ENGINE_DIR / "exec" / "docker.pid"):
        try:
            pid = int(candidate.read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}").exists():
            return pid
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"dockerd") and str(ENGINE_DIR).encode() in b" ".join(cmd):
            return int(proc.name)
    return None


def _system_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    idle = fields[3] + fields[4]
    return total - idle, total


class CpuMeter:
    """CPU seconds of a set of processes between ``start()`` and ``stop()``."""

    def __init__(self, **pids: int | None) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_seconds(pid)
        return out

    def start(self) -> CpuMeter:
        self._start = self._read()
        self._system = _system_ticks()
        self.used = {}
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds per named process, plus ``machine_busy_pct``: how busy all CPUs
        of the machine were together (100 = every core busy all the time), and
        ``machine_busy_s``: the CPU seconds of all of them (for a share of a shorter span
        than the meter's, ``busy_pct``)."""
        end = self._read()
        busy, total = _system_ticks()
        self.used = {k: end[k] - self._start[k] for k in end if k in self._start}
        self.used["machine_busy_s"] = (busy - self._system[0]) / CLK_TCK
        if total > self._system[1]:
            self.used["machine_busy_pct"] = (
                100 * (busy - self._system[0]) / (total - self._system[1])
            )
        return self.used


def busy_pct(used: dict[str, float], seconds: float) -> float | None:
    """How busy all CPUs were together over ``seconds`` (100 = every core all the time),
    from a ``CpuMeter`` that ran for longer but idle beyond them, as the agent's runs do:
    their meter stops only after the output has stayed unchanged for a while."""
    if "machine_busy_s" not in used or seconds <= 0:
        return None
    return min(100.0, 100 * used["machine_busy_s"] / ((os.cpu_count() or 1) * seconds))


def add_quiet_argument(parser: Any) -> None:
    """``--quiet-wait``, shared by the benchmarks (added once even when several ask)."""
    if any("--quiet-wait" in a.option_strings for a in parser._actions):
        return
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each measurement, wait up to this many seconds for an idle machine "
        "and engine (120; 0: only warn)",
    )


def add_retries_argument(parser: Any) -> None:
    if any("--retries" in a.option_strings for a in parser._actions):
        return
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="measure again when other processes used the machine meanwhile (3 times)",
    )


async def wait_quiet(
    engine: BenchEngine, max_wait: float, busy_below: float = 20.0, sample_s: float = 1.0
) -> bool:
    """Waits up to ``max_wait`` seconds until the machine is nearly idle (all CPUs below
    ``busy_below`` % over ``sample_s``) and no other container runs on the engine, so that
    a benchmark does not measure someone else's tests. Returns whether it got quiet."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        meter = CpuMeter().start()
        await asyncio.sleep(sample_s)
        busy = meter.stop().get("machine_busy_pct", 0.0)
        foreign = await engine.foreign_running()
        if busy < busy_below and not foreign:
            if said:
                log("  the machine is quiet again")
            return True
        if time.monotonic() >= deadline:
            log(
                f"  WARNING: still busy after {max_wait:g} s ({busy:.0f} % CPU, {foreign} other "
                "container(s)); measuring anyway"
            )
            return False
        if not said:
            log(f"  waiting for a quiet machine ({busy:.0f} % CPU, {foreign} other container(s))")
            said = True


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, comm, CPU seconds) for every process.

    Reaped children's time (cutime) is left out: a long-lived process ending meanwhile
    would put its whole lifetime into its parent's delta."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        out[int(entry.name)] = (int(fields[1]), comm, ticks / CLK_TCK)
    return out


def _ours(table: dict[int, tuple[int, str, float]], roots: set[int]) -> set[int]:
    """The roots, kernel threads, container shims, and all their descendants; also pid 1
    (the machine's init, whose light background load is the environment's, not a user's)."""
    mine = set(roots) | {1, 2}
    mine |= {pid for pid, (_, comm, _) in table.items() if comm.startswith("containerd-shim")}
    parents = set(mine) - {1}  # init's other descendants are everybody else's processes
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if pid not in parents and ppid in parents:
                parents.add(pid)
                changed = True
    return parents | {1}


class OthersMeter:
    """CPU that processes outside this bench, its engine and its containers used meanwhile
    (someone's tests, another benchmark): above a little, the figures are skewed."""

    def __init__(self) -> None:
        self._start: dict[int, tuple[int, str, float]] = {}
        self.cpu_s = 0.0
        self.top: list[tuple[str, float]] = []

    def start(self) -> OthersMeter:
        self._start = _proc_table()
        return self

    def stop(self) -> float:
        end = _proc_table()
        roots = {os.getpid(), *(p for p in [dockerd_pid()] if p)}
        ours = _ours(end, roots) | _ours(self._start, roots)
        used: dict[str, float] = {}
        for pid, (_, comm, cpu) in end.items():
            if pid in ours:
                continue
            before = self._start.get(pid)
            delta = cpu - before[2] if before and before[1] == comm else cpu
            if delta > 0:
                used[comm] = used.get(comm, 0.0) + delta
        self.cpu_s = sum(used.values())
        self.top = sorted(used.items(), key=lambda kv: -kv[1])[:3]
        return self.cpu_s


def skewed(others_cpu_s: float, wall_s: float, foreign: int, share: float = 0.03) -> bool:
    """Whether a measurement shared the machine or the engine with someone else: other
    containers ran, or others used more than ``share`` of all cores (and over 0.3 s).
    A single-threaded benchmark tolerates more (the other cores are spare)."""
    capacity = wall_s * (os.cpu_count() or 1)
    return foreign > 0 or others_cpu_s > max(0.3, share * capacity)


def run_main(main: Callable[[], Awaitable[int | None]]) -> int:
    """``asyncio.run`` where SIGINT and SIGTERM cancel the benchmark, so that its
    ``finally`` blocks stop the agent and remove the containers (also when started in the
    background, where SIGINT is ignored). Returns the exit code (130 when interrupted)."""

    async def wrapper() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return (await main()) or 0
        except asyncio.CancelledError:
            log("interrupted; cleaned up")
            return 130

    return asyncio.run(wrapper())


def standalone(module: Any) -> None:
    """``python -m bench.<name>``: one benchmark alone (the modules ``run_all`` runs share
    ``add_arguments``, ``run`` and ``report``), with the machine line and optional JSON."""
    # Run with -m, the module is "__main__"; its spec keeps the real name.
    full = module.__spec__.name if module.__spec__ is not None else module.__name__
    name = full.rsplit(".", 1)[-1]
    parser = argparse.ArgumentParser(
        prog=f"python -m {full}", description=(module.__doc__ or "").split("\n")[0]
    )
    module.add_arguments(parser)
    parser.add_argument("--json", help="also write the result as JSON to this file")
    args = parser.parse_args()

    async def main() -> None:
        async with BenchEngine(engine_host()) as engine:
            info = await machine_info(engine)
            result = await module.run(args, engine)
        print(machine_line(info))
        print(module.report(result))
        if args.json:
            write_json(Path(args.json), {"machine": info, name: result})

    sys.exit(run_main(main))


# -- the agent as a subprocess ------------------------------------------------------------


@functools.cache
def _compiled() -> None:
    """The agent's modules compiled to ``__pycache__``, as a wheel install has them. An
    editable install has none, and where PYTHONDONTWRITEBYTECODE is set (this workplace
    sets it) every start would compile some 80 modules again: 0.1-0.2 s of CPU that no
    installed agent spends, in every start-up figure."""
    import agent
    import exporters

    for package in (agent, exporters):
        compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)


def agent_command() -> list[str]:
    """``container-agent`` of the running venv (falls back to ``python -m agent``), its
    modules compiled."""
    _compiled()
    script = Path(sys.executable).parent / "container-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "agent"]


class RecordTail:
    """Follows a reader's output file: counts its records, keeps the agent's event records.

    It reads only what was appended, counts lines that begin with ``prefix`` (the agent's
    log records; None: every line) with ``bytes.count`` and parses only event lines. Still,
    reading and scanning a flood's output costs about 0.9 CPU s per million records, which
    a timed part should not take from the machine the reader shares: there
    ``watch_output`` watches with ``written()`` and counts when the writes pause.
    """

    LOG = b'{"kind":"log"'
    EVENT = b'{"kind":"event"'

    def __init__(self, path: Path, prefix: bytes | None = LOG) -> None:
        self.path = path
        self.prefix = prefix
        self._file: Any = None
        self._rest = b""
        self.logs = 0
        self.events: list[dict[str, Any]] = []
        self.size = 0
        self.logs_end = 0  # the file offset just after the last record counted

    def written(self) -> tuple[int, float]:
        """The file's size and the time (``time.time()``'s clock) of its last write, read
        without reading the file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0, 0.0
        return st.st_size, st.st_mtime_ns / 1e9

    def poll(self) -> int:
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                return self.logs
        data = self._file.read()
        if not data:
            return self.logs
        self.size += len(data)
        buf = self._rest + data if self._rest else data
        cut = buf.rfind(b"\n") + 1
        self._rest = buf[cut:]
        if not cut:
            return self.logs
        start = self.size - len(buf)  # the file offset of buf[0], a line's start
        if self.prefix is None:
            self.logs += buf.count(b"\n", 0, cut)
            self.logs_end = start + cut
        elif logs := buf.count(b"\n" + self.prefix, 0, cut) + buf.startswith(self.prefix):
            self.logs += logs
            last = buf.rfind(b"\n" + self.prefix, 0, cut) + 1  # 0: the first line
            self.logs_end = start + buf.index(b"\n", last) + 1
        pos = buf.find(self.EVENT, 0, cut)
        while pos >= 0:
            end = buf.index(b"\n", pos)
            self.events.append(orjson.loads(buf[pos:end]))
            pos = buf.find(self.EVENT, end, cut)
        return self.logs

    def event_ids(self, action: str) -> set[str]:
        return {e["container_id"] for e in self.events if e.get("action") == action}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# How an output is watched while a reader writes it (``watch_output``): a stat per POLL_S
# (a 10 ms poll cost the bench 0.4 CPU s per 12 s run on this kind of machine), and its
# records counted once the writes pause for QUIET_S: twice the file exporter's linger
# (0.25 s), which spaces the agent's writes as a flood ends.
POLL_S = 0.05
QUIET_S = 0.5


async def watch_output(
    tail: RecordTail,
    expected: int,
    paused: Callable[[], None],
    give_up: Callable[[float], str | None],
    alive: Callable[[], None],
) -> float | None:
    """Waits until ``tail``'s file holds ``expected`` records, or ``give_up(seconds since
    the last write)`` gives a reason (logged). Until then the file is only stat'ed: its
    records are read and counted (``tail.poll``) when the writes pause, just after
    ``paused()`` (which takes the CPU figures, so that they leave the count out).

    Returns when the last record counted was written (``time.time()``'s clock; None: no
    record): the time of the last write seen when the file first held it, exact unless
    another write followed it within POLL_S.
    """
    arrivals: list[tuple[float, int]] = []  # (the last write's time, the size) per change
    last_size, last_change, counted = 0, time.monotonic(), 0
    while True:
        now = time.monotonic()
        size, mtime = tail.written()
        if size != last_size:
            arrivals.append((mtime, size))
            last_size, last_change = size, now
        elif now - last_change >= QUIET_S and counted != size:
            paused()
            tail.poll()
            counted = size
            if tail.size != size:  # written after the stat, before the read: no pause
                size, mtime = tail.written()
                arrivals.append((mtime, size))
                last_size, last_change, counted = size, now, -1
            elif tail.logs >= expected:
                break
        why = give_up(now - last_change)
        if why:
            log(f"{why} at {tail.logs:,}/{expected:,} records")
            paused()
            tail.poll()
            break
        alive()
        await asyncio.sleep(POLL_S)
    return next((t for t, n in arrivals if n >= tail.logs_end and tail.logs), None)


def file_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a child process's stderr file ("" if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def check_alive(proc: subprocess.Popen[bytes] | None, what: str, stderr_path: Path) -> None:
    """Raises RuntimeError, with the end of its stderr, when ``proc`` has exited."""
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(
            f"{what} exited early with code {proc.returncode}:\n{file_tail(stderr_path)}"
        )


class AgentProcess:
    """``container-agent run --config <workdir>/agent.yaml`` writing to a file exporter and
    following only the containers labelled ``ca-bench-run=<run_id>``."""

    def __init__(self, host: str, run_id: str, workdir: Path, log_level: str = "warning") -> None:
        self.host = host
        self.run_id = run_id
        self.workdir = workdir
        self.log_level = log_level
        self.records_path = workdir / "records.ndjson"
        self.config_path = workdir / "agent.yaml"
        self.stderr_path = workdir / "agent.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail = RecordTail(self.records_path)
        self.returncode: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        config = {
            "engine": {"host": self.host},
            "agent": {"log_level": self.log_level, "log_format": "json"},
            "containers": {"include": {"label": [f"{RUN_LABEL}=^{self.run_id}$"]}},
            "exporters": {"records": {"type": "file", "path": str(self.records_path)}},
        }
        # JSON is YAML.
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [*agent_command(), "run", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )

    def check_alive(self) -> None:
        check_alive(self.proc, "the agent", self.stderr_path)

    def stderr_tail(self, lines: int = 20) -> str:
        return file_tail(self.stderr_path, lines)

    async def wait_ready(self, engine: BenchEngine, timeout: float = 60) -> None:
        """Starts a sentinel container (``true``) of this run until its start event shows up
        in the output: from then on the agent is connected and follows new containers."""
        cid = await engine.create(f"ca-bench-{self.run_id}-sentinel", ["true"], self.run_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(aiodocker.DockerError):
                await engine.start(cid)
            for _ in range(20):
                await asyncio.sleep(0.05)
                self.tail.poll()
                if cid in self.tail.event_ids("start"):
                    return
        raise TimeoutError(
            f"the agent wrote no event of its sentinel container within {timeout:g} s:\n"
            f"{self.stderr_tail()}"
        )

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; raises if it does not exit in time or exits non-zero."""
        self.tail.close()
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.wait, timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                raise RuntimeError(
                    f"the agent did not exit within {timeout:g} s of SIGTERM"
                ) from None
        self.returncode = proc.returncode
        if proc.returncode != 0:
            raise RuntimeError(
                f"the agent exited with code {proc.returncode}:\n{self.stderr_tail()}"
            )
        return proc.returncode


# -- output -------------------------------------------------------------------------------


def median(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return statistics.median(xs) if xs else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1_000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table: text columns left-aligned, numbers right-aligned."""
    raw = [list(row) for row in rows]
    cells = [[fmt(v) for v in row] for row in raw]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def align(i: int, text: str, value: Any) -> str:
        numeric = isinstance(value, int | float) or value is None
        return text.rjust(widths[i]) if numeric else text.ljust(widths[i])

    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row, values in zip(cells, raw, strict=True):
        lines.append("  ".join(align(i, c, values[i]) for i, c in enumerate(row)).rstrip())
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def machine_info(engine: BenchEngine) -> dict[str, Any]:
    try:
        version = await engine.version()
    except (aiodocker.DockerError, OSError, TimeoutError):
        version = {}
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    return {
        "git": git_state(),
        "nproc": nproc,
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "docker_server": version.get("Version", "unknown"),
        "docker_api": version.get("ApiVersion", "unknown"),
        "python": platform.python_version(),
    }


def git_state() -> str:
    """The commit the measured agent comes from, ``+dirty`` when agent/ or exporters/ have
    uncommitted changes (the agent subprocess runs the working tree)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "agent", "exporters"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['nproc']} CPU(s) {info['cpu']}, kernel {info['kernel']}, "
        f"docker {info['docker_server']} (API {info['docker_api']}), Python {info['python']}, "
        f"agent at {info.get('git', 'unknown')}"
    )


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
