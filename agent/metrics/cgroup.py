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


def _read(path: str) -> bytes | None:
    """A small kernel file's bytes, None when it cannot be read. Plain descriptor reads: a
    round reads about seven files per container, and ``open()``'s buffered text layers
    cost as much again as the kernel's own work on these files (an ``fstat``, two
    ``lseek`` and an ``ioctl`` each, decoding, line splitting)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        parts = []
        while chunk := os.read(fd, 65536):
            parts.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(parts) if len(parts) != 1 else parts[0]


def _read_int(path: str) -> int | None:
    data = _read(path)
    if data is None:
        return None
    data = data.strip()
    if data == b"max":
        return 0
    try:
        return int(data)
    except ValueError:
        return None


def _read_kv(path: str) -> dict[bytes, int]:
    """``key value`` lines; a line whose value is no integer is left out."""
    data = _read(path)
    if not data:
        return {}
    out: dict[bytes, int] = {}
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def read_host_cpu(proc: Path = Path("/proc")) -> tuple[int | None, int]:
    """The host's CPU time in ns (as the engine computes ``system_cpu_usage``) and CPUs."""
    data = _read(f"{proc}/stat")
    if data is None:
        return None, os.cpu_count() or 1
    total = None
    cpus = 0
    for line in data.splitlines():
        if line.startswith(b"cpu "):
            fields = [int(x) for x in line.split()[1:8]]
            total = sum(fields) * _NS // _CLK_TCK
        elif line.startswith(b"cpu"):
            cpus += 1
    return total, cpus or (os.cpu_count() or 1)


def read_net_dev(path: str | os.PathLike[str]) -> dict[str, NetCounters]:
    out: dict[str, NetCounters] = {}
    data = _read(os.fspath(path))
    if data is None:
        return out
    for line in data.splitlines()[2:]:
        name, _, rest = line.partition(b":")
        try:
            v = [int(x) for x in rest.split()]
        except ValueError:
            continue
        if len(v) < 12:
            continue
        out[name.strip().decode("ascii", "replace")] = NetCounters(
            v[0], v[1], v[2], v[3], v[8], v[9], v[10], v[11]
        )
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
        nets = read_net_dev(f"{proc}/{pid}/net/dev") if pid else {}
        reads: dict[str, int] = {}
        writes: dict[str, int] = {}
        if self.v2:
            base = f"{self.root}/{rel}/"
            cpu = _read_kv(base + "cpu.stat")
            mem = _read_kv(base + "memory.stat")
            usage = _read_int(base + "memory.current") or 0
            for line in (_read(base + "io.stat") or b"").decode("ascii", "replace").splitlines():
                dev, *pairs = line.split()
                kv = dict(p.split("=", 1) for p in pairs if "=" in p)
                reads[dev] = int(kv.get("rbytes", 0))
                writes[dev] = int(kv.get("wbytes", 0))
            return StatsSample(
                read_at=time.time(),
                cpu_total_ns=cpu.get(b"usage_usec", 0) * 1000,
                cpu_user_ns=cpu.get(b"user_usec", 0) * 1000,
                cpu_system_ns=cpu.get(b"system_usec", 0) * 1000,
                system_cpu_ns=system,
                online_cpus=cpus,
                memory_usage=usage,
                memory_working_set=_working_set(usage, mem.get(b"inactive_file", 0)),
                memory_rss=mem.get(b"anon", 0),
                memory_cache=mem.get(b"file", 0),
                memory_limit=memory_limit,
                pids=_read_int(base + "pids.current") or 0,
                networks=nets,
                io_read_bytes=reads,
                io_write_bytes=writes,
                source="cgroup",
            )
        cpuacct_dir = f"{self.root}/cpuacct/{rel}/"
        memory_dir = f"{self.root}/memory/{rel}/"
        cpuacct = _read_kv(cpuacct_dir + "cpuacct.stat")
        mem = _read_kv(memory_dir + "memory.stat")
        usage = _read_int(memory_dir + "memory.usage_in_bytes") or 0
        blkio = _read(f"{self.root}/blkio/{rel}/blkio.throttle.io_service_bytes_recursive")
        for line in (blkio or b"").decode("ascii", "replace").splitlines():
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
            cpu_total_ns=_read_int(cpuacct_dir + "cpuacct.usage") or 0,
            cpu_user_ns=cpuacct.get(b"user", 0) * _NS // _CLK_TCK,
            cpu_system_ns=cpuacct.get(b"system", 0) * _NS // _CLK_TCK,
            system_cpu_ns=system,
            online_cpus=cpus,
            memory_usage=usage,
            memory_working_set=_working_set(usage, mem.get(b"total_inactive_file", 0)),
            memory_rss=mem.get(b"total_rss", 0),
            memory_cache=mem.get(b"total_cache", 0),
            memory_limit=memory_limit,
            pids=_read_int(f"{self.root}/pids/{rel}/pids.current") or 0,
            networks=nets,
            io_read_bytes=reads,
            io_write_bytes=writes,
            source="cgroup",
        )
