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
from collections.abc import Callable, Iterable, Iterator
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


@dataclass(slots=True)
class ContainerRow:
    """One container as one scrape sees it, copied from its ``ContainerInfo``. Nothing
    changes a row once made; it is not a frozen dataclass only because a frozen one's
    ``__init__`` sets each field through ``object.__setattr__``: 1.5 ms of the 2.7 ms the
    loop spent copying 1,000 containers."""

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
    labels: tuple[str, ...] = ("/" + (cgroup or "docker/" + meta.id), meta.name, meta.image)
    if allow:
        labels += tuple([meta.labels.get(k, "") for k in allow])
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


# -- families: one declaration, built from a snapshot alone (any thread) ---------------------


@dataclass(frozen=True, slots=True)
class Family:
    """One per-container metric family: its name (a counter's without ``_total``), type,
    help, and its values for a row: ``value(row, now)`` gives the one sample of a family
    without ``extra`` (None: no sample), ``values(row, now)`` the ``(extra label value,
    value)`` pairs of a family with one. ``reads`` names every row field those values
    depend on, when they depend on nothing else (not on ``now``): the text writer then
    keeps a container's lines of the family until one of those fields changes
    (``agent.metrics.text``); None: written at every scrape."""

    name: str
    kind: str  # "counter" or "gauge"
    doc: str
    extra: str = ""
    value: Callable[[ContainerRow, float], float | None] | None = None
    values: Callable[[ContainerRow, float], Iterable[tuple[str, float]]] | None = None
    reads: tuple[str, ...] | None = None


def _stat(attr: str, scale: float = 1.0) -> Callable[[ContainerRow, float], float | None]:
    def value(row: ContainerRow, now: float) -> float | None:
        s = row.stats
        return None if s is None else getattr(s, attr) / scale

    return value


def _net(attr: str) -> Callable[[ContainerRow, float], Iterable[tuple[str, float]]]:
    return lambda row, now: [(iface, getattr(n, attr)) for iface, n in row.networks]


def _read_lag(row: ContainerRow, now: float) -> float | None:
    stamp = row.last_log_timestamp
    return max(0.0, now - float(timestamp_to_unix(stamp))) if stamp else None


def _memory_limit(row: ContainerRow, now: float) -> float | None:
    s = row.stats
    return None if s is None else (row.memory_limit or s.memory_limit)


# What the families below read of a row (``Family.reads``), in groups that change about
# as often, which the text writer checks together: a family may name more fields than it
# reads (its lines are then written again sooner), never fewer.
_STATS = ("stats", "memory_limit", "last_seen")  # every stats round
_EVENTS = (  # at events
    "started_at",
    "state",
    "health",
    "restarts",
    "exit_code",
    "oom_events",
    "log_read_failures",
    "log_source",
)
_LOGS = ("log_lines", "log_bytes")  # as the container prints

_NETWORK = tuple(
    Family(
        f"container_network_{direction}_{what}",
        "counter",
        f"Cumulative count of {doc} {verb}",
        "interface",
        values=_net(f"{prefix}_{attr}"),
        reads=("networks",),
    )
    for direction, prefix, verb in (
        ("receive", "rx", "received"),
        ("transmit", "tx", "transmitted"),
    )
    for what, attr, doc in (
        ("bytes", "bytes", "bytes"),
        ("packets", "packets", "packets"),
        ("errors", "errors", "errors"),
        ("packets_dropped", "dropped", "packets dropped"),
    )
)

# In the order of the answer. cAdvisor's names, units and types; the agent's own per
# container are the container_agent_ ones.
FAMILIES: tuple[Family, ...] = (
    # CPU, memory, processes, network and block I/O of a running container
    Family(
        "container_cpu_usage_seconds",
        "counter",
        "Cumulative cpu time consumed in seconds.",
        "cpu",
        values=lambda row, now: (
            () if row.stats is None else (("total", row.stats.cpu_total_ns / _NS),)
        ),
        reads=_STATS,
    ),
    Family(
        "container_cpu_user_seconds",
        "counter",
        "Cumulative user cpu time consumed in seconds.",
        value=_stat("cpu_user_ns", _NS),
        reads=_STATS,
    ),
    Family(
        "container_cpu_system_seconds",
        "counter",
        "Cumulative system cpu time consumed in seconds.",
        value=_stat("cpu_system_ns", _NS),
        reads=_STATS,
    ),
    Family(
        "container_memory_usage_bytes",
        "gauge",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        value=_stat("memory_usage"),
        reads=_STATS,
    ),
    Family(
        "container_memory_working_set_bytes",
        "gauge",
        "Current working set in bytes (usage minus inactive file cache).",
        value=_stat("memory_working_set"),
        reads=_STATS,
    ),
    Family(
        "container_memory_rss",
        "gauge",
        "Size of RSS in bytes.",
        value=_stat("memory_rss"),
        reads=_STATS,
    ),
    Family(
        "container_memory_cache",
        "gauge",
        "Number of bytes of page cache memory.",
        value=_stat("memory_cache"),
        reads=_STATS,
    ),
    Family(
        "container_spec_memory_limit_bytes",
        "gauge",
        "Memory limit for the container in bytes (0: unlimited).",
        value=_memory_limit,
        reads=_STATS,
    ),
    Family(
        "container_processes",
        "gauge",
        "Number of processes running inside the container.",
        value=_stat("pids"),
        reads=_STATS,
    ),
    *_NETWORK,
    Family(
        "container_fs_reads_bytes",
        "counter",
        "Cumulative count of bytes read",
        "device",
        values=lambda row, now: [(dev, read) for dev, read, _ in row.io],
        reads=("io",),
    ),
    Family(
        "container_fs_writes_bytes",
        "counter",
        "Cumulative count of bytes written",
        "device",
        values=lambda row, now: [(dev, written) for dev, _, written in row.io],
        reads=("io",),
    ),
    # state, health, starts, exits and OOM kills, from the engine's events
    Family(
        "container_last_seen",
        "gauge",
        "Last time (unix seconds) the agent saw the container: in a listing, an event or a "
        "stats reading.",
        value=lambda row, now: row.last_seen,
        reads=_STATS,
    ),
    Family(
        "container_start_time_seconds",
        "gauge",
        "Start time of the container since unix epoch in seconds.",
        value=lambda row, now: row.started_at or None,
        reads=_EVENTS,
    ),
    Family(
        "container_state",
        "gauge",
        "1 for the container's current state, 0 for the others.",
        "state",
        values=lambda row, now: [(s, 1.0 if row.state == s else 0.0) for s in STATES],
        reads=_EVENTS,
    ),
    Family(
        "container_health_status",
        "gauge",
        "1 for the container's current health status (none: no health check), 0 for the others.",
        "status",
        values=lambda row, now: [
            (s, 1.0 if (row.health or "none") == s else 0.0) for s in (*HEALTH, "none")
        ],
        reads=_EVENTS,
    ),
    Family(
        "container_restarts",
        "counter",
        "Starts of the container after its first, as seen by the agent.",
        value=lambda row, now: row.restarts,
        reads=_EVENTS,
    ),
    Family(
        "container_last_exit_code",
        "gauge",
        "Exit code of the container's last exit.",
        value=lambda row, now: row.exit_code,
        reads=_EVENTS,
    ),
    Family(
        "container_oom_events",
        "counter",
        "OOM events (oom) the engine reported for the container.",
        value=lambda row, now: row.oom_events,
        reads=_EVENTS,
    ),
    # log lines and bytes read, the read lag and the source
    Family(
        "container_log_lines",
        "counter",
        "Log lines read from the container and handed to the pipeline (queued for the "
        "exporters, or dropped by a full queue under when_full: drop_newest).",
        "stream",
        values=lambda row, now: (("stdout", row.log_lines[0]), ("stderr", row.log_lines[1])),
        reads=_LOGS,
    ),
    Family(
        "container_log_bytes",
        "counter",
        "Characters of those lines' messages (bytes for ASCII).",
        "stream",
        values=lambda row, now: (("stdout", row.log_bytes[0]), ("stderr", row.log_bytes[1])),
        reads=_LOGS,
    ),
    Family(
        "container_agent_log_read_lag_seconds",
        "gauge",
        "Now minus the engine timestamp of the last log line handed to the pipeline "
        "(grows while the container is quiet).",
        value=_read_lag,
    ),
    Family(
        "container_agent_log_read_failures",
        "counter",
        "Reads of the container's log that failed (engine errors, cut streams, unreadable "
        "files); each is retried with back-off for as long as the container exists.",
        value=lambda row, now: row.log_read_failures,
        reads=_EVENTS,
    ),
    Family(
        "container_agent_log_source",
        "gauge",
        "1 for the log source the agent reads this container from.",
        "source",
        values=lambda row, now: ((row.log_source, 1.0),) if row.log_source else (),
        reads=_EVENTS,
    ),
)


def container_families(snap: ContainersSnapshot) -> Iterator[Metric]:
    """The per-container families as prometheus-client metrics (``generate_latest``'s
    input). ``agent.metrics.text`` writes the same answer faster, straight from
    ``FAMILIES``; a family with no sample is left out by both."""
    names = list(snap.label_names)
    now = snap.taken_at
    for fam in FAMILIES:
        cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
        metric = cls(fam.name, fam.doc, labels=[*names, fam.extra] if fam.extra else names)
        for row in snap.rows:
            if fam.values is not None:
                for extra, value in fam.values(row, now):
                    metric.add_metric([*row.labels, extra], value)
            elif fam.value is not None and (v := fam.value(row, now)) is not None:
                metric.add_metric(list(row.labels), v)
        if metric.samples:
            yield metric


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
