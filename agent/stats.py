"""Resource usage of each running container, from the stats API or from cgroup files.

Two sources behind one interface, ``StatsSource.sample(info) -> StatsSample | None``:

* ``ApiStatsSource``: ``GET /containers/{id}/stats?stream=false&one-shot=true``, one short
  request per container and interval (no stream held open per container; one-shot skips the
  engine's one-second pre-sample wait).
* ``CgroupStatsSource``: the container's cgroup files under a configurable root, as cAdvisor
  reads them (cgroup v1 or v2, told apart by ``cgroup.controllers`` at the root), plus
  ``/proc/<pid>/net/dev`` for network counters. Microseconds per container, no engine CPU.

``auto`` picks cgroups when the root holds the container's cgroup, else the API, per
container. CPU percent is computed the way ``docker stats`` does: the container's CPU time
delta over the host's CPU time delta, times the number of online CPUs, times 100.
"""

from __future__ import annotations

import abc
import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.docker import Engine, EngineError, NotFound
from agent.inventory import ContainerInfo, Inventory
from agent.record import Record, format_timestamp_ns, timestamp_to_unix

log = structlog.get_logger("agent.stats")

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NS = 1_000_000_000
_UNLIMITED = 1 << 62  # cgroup v1 reports "no limit" as a number near 2**63


@dataclass(slots=True)
class NetCounters:
    rx_bytes: int = 0
    rx_packets: int = 0
    rx_errors: int = 0
    rx_dropped: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    tx_errors: int = 0
    tx_dropped: int = 0


@dataclass(slots=True)
class StatsSample:
    """One reading, in base units (nanoseconds, bytes); counters are cumulative."""

    read_at: float
    cpu_total_ns: int
    cpu_user_ns: int
    cpu_system_ns: int
    system_cpu_ns: int | None  # the host's CPU time, for CPU percent
    online_cpus: int
    memory_usage: int
    memory_working_set: int
    memory_rss: int
    memory_cache: int
    memory_limit: int  # 0: unlimited
    pids: int
    networks: dict[str, NetCounters] = field(default_factory=dict)
    io_read_bytes: dict[str, int] = field(default_factory=dict)  # by "major:minor"
    io_write_bytes: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def to_dict(self, cpu_percent: float | None) -> dict[str, Any]:
        return {
            "source": self.source,
            "cpu_usage_seconds": self.cpu_total_ns / _NS,
            "cpu_user_seconds": self.cpu_user_ns / _NS,
            "cpu_system_seconds": self.cpu_system_ns / _NS,
            "cpu_percent": cpu_percent,
            "memory_usage_bytes": self.memory_usage,
            "memory_working_set_bytes": self.memory_working_set,
            "memory_rss_bytes": self.memory_rss,
            "memory_cache_bytes": self.memory_cache,
            "memory_limit_bytes": self.memory_limit,
            "pids": self.pids,
            "network": {
                name: {k: getattr(n, k) for k in NetCounters.__slots__}
                for name, n in self.networks.items()
            },
            "io_read_bytes": sum(self.io_read_bytes.values()),
            "io_write_bytes": sum(self.io_write_bytes.values()),
        }


def cpu_percent(prev: StatsSample | None, cur: StatsSample) -> float | None:
    """``docker stats``' CPU %: container CPU delta / host CPU delta * online CPUs * 100."""
    if prev is None or prev.system_cpu_ns is None or cur.system_cpu_ns is None:
        return None
    cpu_delta = cur.cpu_total_ns - prev.cpu_total_ns
    system_delta = cur.system_cpu_ns - prev.system_cpu_ns
    if cpu_delta < 0 or system_delta <= 0:
        return None
    return cpu_delta / system_delta * cur.online_cpus * 100.0


def _working_set(usage: int, inactive_file: int) -> int:
    # cAdvisor: usage minus inactive file cache, never below zero.
    return max(0, usage - inactive_file)


def parse_api_stats(payload: dict[str, Any], memory_limit: int = 0) -> StatsSample:
    """A stats API answer (cgroup v1 or v2 engine) as a sample.

    v1 engines report ``memory_stats.stats`` with ``total_*`` keys and blkio ops
    capitalised ("Read"); v2 engines report ``anon``/``file``/``inactive_file`` and
    lower-case ops.
    """
    cpu = payload.get("cpu_stats") or {}
    usage = cpu.get("cpu_usage") or {}
    online = cpu.get("online_cpus") or len(usage.get("percpu_usage") or []) or 1
    mem = payload.get("memory_stats") or {}
    mstats = mem.get("stats") or {}
    mem_usage = int(mem.get("usage") or 0)
    if "total_inactive_file" in mstats or "total_rss" in mstats:  # cgroup v1
        inactive = int(mstats.get("total_inactive_file", 0))
        rss = int(mstats.get("total_rss", 0))
        cache = int(mstats.get("total_cache", 0))
    else:  # cgroup v2
        inactive = int(mstats.get("inactive_file", 0))
        rss = int(mstats.get("anon", 0))
        cache = int(mstats.get("file", 0))
    reads: dict[str, int] = {}
    writes: dict[str, int] = {}
    for entry in (payload.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        dev = f"{entry.get('major', 0)}:{entry.get('minor', 0)}"
        op = str(entry.get("op", "")).lower()
        if op == "read":
            reads[dev] = reads.get(dev, 0) + int(entry.get("value", 0))
        elif op == "write":
            writes[dev] = writes.get(dev, 0) + int(entry.get("value", 0))
    networks = {
        name: NetCounters(
            rx_bytes=n.get("rx_bytes", 0),
            rx_packets=n.get("rx_packets", 0),
            rx_errors=n.get("rx_errors", 0),
            rx_dropped=n.get("rx_dropped", 0),
            tx_bytes=n.get("tx_bytes", 0),
            tx_packets=n.get("tx_packets", 0),
            tx_errors=n.get("tx_errors", 0),
            tx_dropped=n.get("tx_dropped", 0),
        )
        for name, n in (payload.get("networks") or {}).items()
    }
    read = payload.get("read") or ""
    read_at = (
        float(timestamp_to_unix(read)) if read and not read.startswith("0001") else time.time()
    )
    system = cpu.get("system_cpu_usage")
    return StatsSample(
        read_at=read_at,
        cpu_total_ns=int(usage.get("total_usage") or 0),
        cpu_user_ns=int(usage.get("usage_in_usermode") or 0),
        cpu_system_ns=int(usage.get("usage_in_kernelmode") or 0),
        system_cpu_ns=int(system) if system is not None else None,
        online_cpus=int(online),
        memory_usage=mem_usage,
        memory_working_set=_working_set(mem_usage, inactive),
        memory_rss=rss,
        memory_cache=cache,
        memory_limit=memory_limit,
        pids=int((payload.get("pids_stats") or {}).get("current") or 0),
        networks=networks,
        io_read_bytes=reads,
        io_write_bytes=writes,
        source="api",
    )


# -- cgroup files ---------------------------------------------------------------------------


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, ValueError):
        return None
    if text == "max":
        return 0
    try:
        return int(text)
    except ValueError:
        return None


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_host_cpu(proc: Path = Path("/proc")) -> tuple[int | None, int]:
    """The host's CPU time in ns (as the engine computes ``system_cpu_usage``) and CPUs."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None, os.cpu_count() or 1
    total = None
    cpus = 0
    for line in lines:
        if line.startswith("cpu "):
            fields = [int(x) for x in line.split()[1:8]]
            total = sum(fields) * _NS // _CLK_TCK
        elif line.startswith("cpu"):
            cpus += 1
    return total, cpus or (os.cpu_count() or 1)


def read_net_dev(path: Path) -> dict[str, NetCounters]:
    out: dict[str, NetCounters] = {}
    try:
        lines = path.read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        v = [int(x) for x in rest.split()]
        if len(v) < 12:
            continue
        out[name.strip()] = NetCounters(v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11])
    return out


class CgroupLayout:
    """Where a container's cgroup lives under ``root``, for v1 and v2 hierarchies."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.v2 = (root / "cgroup.controllers").exists()

    def _candidates(self, cid: str, parent: str) -> list[str]:
        names = [f"docker/{cid}", f"system.slice/docker-{cid}.scope"]
        if parent:
            parent = parent.strip("/")
            names.insert(0, f"{parent}/{cid}")
            if parent.endswith(".slice"):  # systemd driver with a custom slice
                names.insert(0, f"{parent}/docker-{cid}.scope")
        return names

    def find(self, cid: str, parent: str = "") -> str | None:
        """The cgroup path relative to the hierarchy root, e.g. ``docker/<id>``."""
        probe = "" if self.v2 else "cpuacct"
        for rel in self._candidates(cid, parent):
            if (self.root / probe / rel).is_dir():
                return rel
        return None

    def read(self, rel: str, memory_limit: int, pid: int | None, proc: Path) -> StatsSample:
        system, cpus = read_host_cpu(proc)
        nets = read_net_dev(proc / str(pid) / "net" / "dev") if pid else {}
        if self.v2:
            base = self.root / rel
            cpu = _read_kv(base / "cpu.stat")
            mem = _read_kv(base / "memory.stat")
            usage = _read_int(base / "memory.current") or 0
            reads: dict[str, int] = {}
            writes: dict[str, int] = {}
            try:
                io_lines = (base / "io.stat").read_text().splitlines()
            except OSError:
                io_lines = []
            for line in io_lines:
                dev, *pairs = line.split()
                kv = dict(p.split("=", 1) for p in pairs if "=" in p)
                reads[dev] = int(kv.get("rbytes", 0))
                writes[dev] = int(kv.get("wbytes", 0))
            return StatsSample(
                read_at=time.time(),
                cpu_total_ns=cpu.get("usage_usec", 0) * 1000,
                cpu_user_ns=cpu.get("user_usec", 0) * 1000,
                cpu_system_ns=cpu.get("system_usec", 0) * 1000,
                system_cpu_ns=system,
                online_cpus=cpus,
                memory_usage=usage,
                memory_working_set=_working_set(usage, mem.get("inactive_file", 0)),
                memory_rss=mem.get("anon", 0),
                memory_cache=mem.get("file", 0),
                memory_limit=memory_limit,
                pids=_read_int(base / "pids.current") or 0,
                networks=nets,
                io_read_bytes=reads,
                io_write_bytes=writes,
                source="cgroup",
            )
        r = self.root
        cpuacct = _read_kv(r / "cpuacct" / rel / "cpuacct.stat")
        mem = _read_kv(r / "memory" / rel / "memory.stat")
        usage = _read_int(r / "memory" / rel / "memory.usage_in_bytes") or 0
        reads, writes = {}, {}
        try:
            io_lines = (
                (r / "blkio" / rel / "blkio.throttle.io_service_bytes_recursive")
                .read_text()
                .splitlines()
            )
        except OSError:
            io_lines = []
        for line in io_lines:
            parts = line.split()
            if len(parts) != 3:
                continue
            dev, op, value = parts
            if op == "Read":
                reads[dev] = reads.get(dev, 0) + int(value)
            elif op == "Write":
                writes[dev] = writes.get(dev, 0) + int(value)
        return StatsSample(
            read_at=time.time(),
            cpu_total_ns=_read_int(r / "cpuacct" / rel / "cpuacct.usage") or 0,
            cpu_user_ns=cpuacct.get("user", 0) * _NS // _CLK_TCK,
            cpu_system_ns=cpuacct.get("system", 0) * _NS // _CLK_TCK,
            system_cpu_ns=system,
            online_cpus=cpus,
            memory_usage=usage,
            memory_working_set=_working_set(usage, mem.get("total_inactive_file", 0)),
            memory_rss=mem.get("total_rss", 0),
            memory_cache=mem.get("total_cache", 0),
            memory_limit=memory_limit,
            pids=_read_int(r / "pids" / rel / "pids.current") or 0,
            networks=nets,
            io_read_bytes=reads,
            io_write_bytes=writes,
            source="cgroup",
        )


# -- sources --------------------------------------------------------------------------------


class StatsSource(abc.ABC):
    name: str

    @abc.abstractmethod
    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        """One reading of a running container; None when it cannot be read now."""


class ApiStatsSource(StatsSource):
    name = "api"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        payload = await self.engine.stats(info.meta.id)
        return parse_api_stats(payload, info.memory_limit)


class CgroupStatsSource(StatsSource):
    name = "cgroup"

    def __init__(self, root: str, proc: str = "/proc") -> None:
        self.layout = CgroupLayout(Path(root))
        self.proc = Path(proc)
        self._paths: dict[str, str | None] = {}

    def locate(self, info: ContainerInfo) -> str | None:
        cid = info.meta.id
        if cid not in self._paths or self._paths[cid] is None:
            self._paths[cid] = self.layout.find(cid, info.cgroup_parent)
        return self._paths[cid]

    def forget(self, cid: str) -> None:
        self._paths.pop(cid, None)

    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        rel = self.locate(info)
        if rel is None:
            return None
        # A few small files: cheaper inline than a thread hop (measured in bench/stats.py).
        return self.layout.read(rel, info.memory_limit, info.pid, self.proc)


class StatsCollector:
    """Samples every running container each interval; owns no task per container."""

    def __init__(
        self,
        engine: Engine,
        inventory: Inventory,
        mode: str,
        cgroup_root: str,
        interval: float,
        send_records: Any = None,
        concurrency: int = 8,
    ) -> None:
        self.engine = engine
        self.inventory = inventory
        self.mode = mode
        self.interval = interval
        self.api = ApiStatsSource(engine)
        self.cgroup = CgroupStatsSource(cgroup_root) if mode in ("auto", "cgroup") else None
        self.send_records = send_records
        self._sem = asyncio.Semaphore(concurrency)
        self.sources: dict[str, str] = {}  # container id → source used last
        self.errors = 0
        self.rounds = 0
        self.last_round_seconds = 0.0
        self._warned_cgroup = False

    async def run(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.collect_once()
            except EngineError as exc:
                log.debug("stats_round_failed", error=str(exc))
            self.last_round_seconds = time.monotonic() - t0
            await asyncio.sleep(max(0.0, self.interval - self.last_round_seconds))

    async def collect_once(self) -> None:
        running = [c for c in self.inventory.running() if c.state == "running"]
        results = await asyncio.gather(*(self._one(c) for c in running))
        self.rounds += 1
        if self.send_records:
            records = [
                Record.stats_sample(
                    format_timestamp_ns(int(s.read_at * _NS)), c.meta, s.to_dict(c.cpu_percent)
                )
                for c, s in zip(running, results, strict=True)
                if s is not None
            ]
            if records:
                await self.send_records(records)

    async def _one(self, info: ContainerInfo) -> StatsSample | None:
        async with self._sem:
            try:
                if not info.inspected:
                    self.inventory.apply_inspect(
                        info.meta.id, await self.engine.inspect(info.meta.id)
                    )
                sample = None
                if self.cgroup is not None:
                    sample = await self.cgroup.sample(info)
                    if sample is None and self.mode == "cgroup" and not self._warned_cgroup:
                        self._warned_cgroup = True
                        log.warning(
                            "cgroup_not_found",
                            container=info.meta.name,
                            root=str(self.cgroup.layout.root),
                            fallback="api",
                        )
                if sample is None:
                    sample = await self.api.sample(info)
            except NotFound:
                return None
            except EngineError as exc:
                self.errors += 1
                log.debug("stats_failed", container=info.meta.name, error=str(exc))
                return None
        if info.state != "running":
            return None  # died while being read
        info.cpu_percent = cpu_percent(info.stats, sample)
        info.stats = sample
        info.last_seen = time.time()
        self.sources[info.meta.id] = sample.source
        return sample
