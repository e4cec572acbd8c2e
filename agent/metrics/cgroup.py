"""A container's cgroup files read as a ``StatsSample``, for cgroup v1 and v2, as cAdvisor
reads them, plus ``/proc/<pid>/net/dev`` for network counters and ``/proc/stat`` for the
host's CPU time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.metrics.sample import (
    _CLK_TCK,
    _NS,
    NetCounters,
    StatsSample,
    _working_set,
)


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

    def read(
        self,
        rel: str,
        memory_limit: int,
        pid: int | None,
        proc: Path,
        host: tuple[int | None, int] | None = None,
    ) -> StatsSample:
        """One container's reading; ``host``: ``read_host_cpu``'s answer when the caller
        has it (one per round: the kernel builds /proc/stat for every CPU and IRQ)."""
        system, cpus = host if host is not None else read_host_cpu(proc)
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
