"""One stats reading of a container (``StatsSample``), as the stats API or cgroup files
give it, and the CPU percent computed as ``docker stats`` does."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from agent.record import timestamp_to_unix

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
