"""Prometheus collectors: container metrics (cAdvisor names) and the agent's own health.

Collectors read the agent's current state at scrape time and never call the engine; a
container's series exist while the inventory holds it (stats series only while it runs),
so they are gone at the first scrape after it stops or is removed.

A scrape has two steps. ``snapshot()`` runs on the event loop and copies what the scrape
needs into plain frozen values (a few microseconds per container); ``*_families(snapshot)``
builds the metric families from that copy alone, so it may run in a thread while the loop
keeps changing the inventory and the counters. Nothing but a snapshot crosses to the
thread: no live dict, inventory entry or runner is read there. ``collect()`` does both
steps in the caller's thread, for a plain ``CollectorRegistry`` on the loop. The agent's
own metrics are built in ``agent.metrics.own``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.metrics.inventory import HEALTH, STATES, ContainerInfo
from agent.metrics.own import AgentSnapshot, agent_families, exporter_row
from agent.metrics.sample import NetCounters, StatsSample
from agent.record import timestamp_to_unix

if TYPE_CHECKING:
    from agent.state import AgentState

_NS = 1e9
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label(name: str) -> str:
    """cAdvisor's rule: ``container_label_`` + the name with every invalid char as ``_``."""
    return "container_label_" + _INVALID.sub("_", name)


# -- snapshots: plain copies taken on the event loop ----------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerRow:
    """One container as one scrape sees it, copied from its ``ContainerInfo``."""

    labels: tuple[str, ...]  # id, name, image, then the allowlisted labels' values
    state: str
    health: str | None
    started_at: float | None
    restarts: int
    exit_code: int | None
    oom_events: int
    last_seen: float
    log_lines: tuple[int, int]  # stdout, stderr
    log_bytes: tuple[int, int]
    last_log_timestamp: str | None
    log_source: str
    log_read_failures: int
    memory_limit: int
    # A StatsSample is never changed once made (the stats collector replaces it whole);
    # its dicts are copied anyway, so the build thread iterates nothing shared.
    stats: StatsSample | None
    networks: tuple[tuple[str, NetCounters], ...]
    io: tuple[tuple[str, int, int], ...]  # device, bytes read, bytes written


@dataclass(frozen=True, slots=True)
class ContainersSnapshot:
    label_names: tuple[str, ...]
    rows: tuple[ContainerRow, ...]
    taken_at: float  # unix time, for the read lag


def _row(info: ContainerInfo, cgroup: str | None, allow: list[str]) -> ContainerRow:
    meta = info.meta
    labels = (
        "/" + (cgroup or f"docker/{meta.id}"),
        meta.name,
        meta.image,
        *(meta.labels.get(k, "") for k in allow),
    )
    lines, chars, s = info.log_lines, info.log_bytes, info.stats
    networks: tuple[tuple[str, NetCounters], ...] = ()
    io: tuple[tuple[str, int, int], ...] = ()
    if s is not None:
        networks = tuple(s.networks.items())
        reads, writes = s.io_read_bytes, s.io_write_bytes
        if reads or writes:
            io = tuple(
                (dev, reads.get(dev, 0), writes.get(dev, 0)) for dev in sorted({*reads, *writes})
            )
    return ContainerRow(
        labels,
        info.state,
        info.health,
        info.started_at,
        info.restarts,
        info.exit_code,
        info.oom_events,
        info.last_seen,
        (lines["stdout"], lines["stderr"]),
        (chars["stdout"], chars["stderr"]),
        info.last_log_timestamp,
        info.log_source,
        info.log_read_failures,
        info.memory_limit,
        s,
        networks,
        io,
    )


# -- families: built from a snapshot alone (any thread) -------------------------------------


class _Families:
    """The metric families of one scrape, made on first use, with the container labels."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._fam: dict[str, Metric] = {}

    def counter(self, key: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
        if key not in self._fam:
            self._fam[key] = CounterMetricFamily(key, doc, labels=[*self.names, *extra])
        return self._fam[key]  # type: ignore[return-value]

    def gauge(self, key: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
        if key not in self._fam:
            self._fam[key] = GaugeMetricFamily(key, doc, labels=[*self.names, *extra])
        return self._fam[key]  # type: ignore[return-value]

    def values(self) -> Iterable[Metric]:
        return self._fam.values()


def container_families(snap: ContainersSnapshot) -> Iterator[Metric]:
    """Per-container metrics with cAdvisor's names, units and types."""
    if not snap.rows:
        return
    fam = _Families(list(snap.label_names))
    for row in snap.rows:
        lv = list(row.labels)
        if row.stats is not None:
            _resources(fam, lv, row, row.stats)
        _lifecycle(fam, lv, row)
        _logs(fam, lv, row, snap.taken_at)
    yield from fam.values()


def _resources(fam: _Families, lv: list[str], row: ContainerRow, s: StatsSample) -> None:
    """CPU, memory, processes, network and block I/O of a running container."""
    counter, gauge = fam.counter, fam.gauge
    counter(
        "container_cpu_usage_seconds",
        "Cumulative cpu time consumed in seconds.",
        ("cpu",),
    ).add_metric([*lv, "total"], s.cpu_total_ns / _NS)
    counter(
        "container_cpu_user_seconds", "Cumulative user cpu time consumed in seconds."
    ).add_metric(lv, s.cpu_user_ns / _NS)
    counter(
        "container_cpu_system_seconds",
        "Cumulative system cpu time consumed in seconds.",
    ).add_metric(lv, s.cpu_system_ns / _NS)
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
    ).add_metric(lv, s.memory_usage)
    gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes (usage minus inactive file cache).",
    ).add_metric(lv, s.memory_working_set)
    gauge("container_memory_rss", "Size of RSS in bytes.").add_metric(lv, s.memory_rss)
    gauge("container_memory_cache", "Number of bytes of page cache memory.").add_metric(
        lv, s.memory_cache
    )
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container in bytes (0: unlimited).",
    ).add_metric(lv, row.memory_limit or s.memory_limit)
    gauge("container_processes", "Number of processes running inside the container.").add_metric(
        lv, s.pids
    )
    for iface, n in row.networks:
        ilv = [*lv, iface]
        for direction, prefix, verb in (
            ("receive", "rx", "received"),
            ("transmit", "tx", "transmitted"),
        ):
            for what, attr, doc in (
                ("bytes", "bytes", "bytes"),
                ("packets", "packets", "packets"),
                ("errors", "errors", "errors"),
                ("packets_dropped", "dropped", "packets dropped"),
            ):
                counter(
                    f"container_network_{direction}_{what}",
                    f"Cumulative count of {doc} {verb}",
                    ("interface",),
                ).add_metric(ilv, getattr(n, f"{prefix}_{attr}"))
    for dev, read, written in row.io:
        counter(
            "container_fs_reads_bytes", "Cumulative count of bytes read", ("device",)
        ).add_metric([*lv, dev], read)
        counter(
            "container_fs_writes_bytes",
            "Cumulative count of bytes written",
            ("device",),
        ).add_metric([*lv, dev], written)


def _lifecycle(fam: _Families, lv: list[str], row: ContainerRow) -> None:
    """State, health, starts, exits and OOM kills, from the engine's events."""
    counter, gauge = fam.counter, fam.gauge
    gauge(
        "container_last_seen",
        "Last time (unix seconds) the agent saw the container: in a listing, an event or a "
        "stats reading.",
    ).add_metric(lv, row.last_seen)
    if row.started_at:
        gauge(
            "container_start_time_seconds",
            "Start time of the container since unix epoch in seconds.",
        ).add_metric(lv, row.started_at)
    st = gauge(
        "container_state",
        "1 for the container's current state, 0 for the others.",
        ("state",),
    )
    for state in STATES:
        st.add_metric([*lv, state], 1.0 if row.state == state else 0.0)
    hs = gauge(
        "container_health_status",
        "1 for the container's current health status (none: no health check), 0 for the others.",
        ("status",),
    )
    current = row.health or "none"
    for status in (*HEALTH, "none"):
        hs.add_metric([*lv, status], 1.0 if current == status else 0.0)
    counter(
        "container_restarts",
        "Starts of the container after its first, as seen by the agent.",
    ).add_metric(lv, row.restarts)
    if row.exit_code is not None:
        gauge("container_last_exit_code", "Exit code of the container's last exit.").add_metric(
            lv, row.exit_code
        )
    counter(
        "container_oom_events", "OOM events (oom) the engine reported for the container."
    ).add_metric(lv, row.oom_events)


def _logs(fam: _Families, lv: list[str], row: ContainerRow, now: float) -> None:
    """Log lines and bytes read, the read lag and the source."""
    for i, stream in enumerate(("stdout", "stderr")):
        slv = [*lv, stream]
        fam.counter(
            "container_log_lines",
            "Log lines read from the container and handed to the pipeline (queued for the "
            "exporters, or dropped by a full queue under when_full: drop_newest).",
            ("stream",),
        ).add_metric(slv, row.log_lines[i])
        fam.counter(
            "container_log_bytes",
            "Characters of those lines' messages (bytes for ASCII).",
            ("stream",),
        ).add_metric(slv, row.log_bytes[i])
    if row.last_log_timestamp:
        fam.gauge(
            "container_agent_log_read_lag_seconds",
            "Now minus the engine timestamp of the last log line handed to the pipeline "
            "(grows while the container is quiet).",
        ).add_metric(lv, max(0.0, now - float(timestamp_to_unix(row.last_log_timestamp))))
    fam.counter(
        "container_agent_log_read_failures",
        "Reads of the container's log that failed (engine errors, cut streams, unreadable "
        "files); each is retried with back-off for as long as the container exists.",
    ).add_metric(lv, row.log_read_failures)
    if row.log_source:
        fam.gauge(
            "container_agent_log_source",
            "1 for the log source the agent reads this container from.",
            ("source",),
        ).add_metric([*lv, row.log_source], 1.0)


# -- collectors: snapshot and build in one go ------------------------------------------------


class ContainerCollector(Collector):
    """Per-container metrics with cAdvisor's names, units and types."""

    def __init__(self, state: AgentState, label_allowlist: Iterable[str] = ()) -> None:
        self.state = state
        self.allow = list(label_allowlist)
        self.extra_names = [sanitize_label(k) for k in self.allow]

    def snapshot(self) -> ContainersSnapshot:
        """On the event loop: a copy of every container's values."""
        paths: dict[str, str | None] = {}
        stats = self.state.stats
        if stats is not None and stats.cgroup is not None:
            paths = stats.cgroup._paths
        allow = self.allow
        rows = tuple(
            _row(info, paths.get(cid), allow)
            for cid, info in list(self.state.inventory.containers.items())
        )
        return ContainersSnapshot(("id", "name", "image", *self.extra_names), rows, time.time())

    def describe(self) -> Iterator[Metric]:
        return iter(())  # series vary with the containers: no fixed description

    def collect(self) -> Iterator[Metric]:
        return container_families(self.snapshot())


class AgentCollector(Collector):
    """The agent's own health: records in and out per exporter, queues, engine, readers."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    def snapshot(self) -> AgentSnapshot:
        """On the event loop: the runners' and the engine's counters."""
        st = self.state
        stats, reloader, processing = st.stats, st.reloader, st.followers.processing
        return AgentSnapshot(
            tuple(exporter_row(r) for r in st.pipeline.runners),
            st.discovery.reconnects,
            st.discovery.connected.is_set(),
            st.discovery.events_seen,
            st.followers.followed,
            stats.errors if stats is not None else None,
            stats.last_round_seconds if stats is not None else None,
            st.followers.unavailable,
            st.followers.lines_lost,
            tuple(sorted(reloader.results.items())) if reloader is not None else (),
            reloader.hash if reloader is not None else None,
            st.tap.dropped,
            tuple(sorted(processing.totals().items())) if processing is not None else (),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        return agent_families(self.snapshot())


__all__ = [
    "AgentCollector",
    "AgentSnapshot",
    "ContainerCollector",
    "ContainersSnapshot",
    "agent_families",
    "container_families",
    "sanitize_label",
]
