"""Prometheus collectors: container metrics (cAdvisor names) and the agent's own health.

Collectors read the agent's current state at scrape time and never call the engine; a
container's series exist while the inventory holds it (stats series only while it runs),
so they are gone at the first scrape after it stops or is removed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.metrics.inventory import HEALTH, STATES, ContainerInfo
from agent.metrics.sample import StatsSample
from agent.record import timestamp_to_unix

if TYPE_CHECKING:
    from agent.state import AgentState

_NS = 1e9
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label(name: str) -> str:
    """cAdvisor's rule: ``container_label_`` + the name with every invalid char as ``_``."""
    return "container_label_" + _INVALID.sub("_", name)


class ContainerCollector(Collector):
    """Per-container metrics with cAdvisor's names, units and types."""

    def __init__(self, state: AgentState, label_allowlist: Iterable[str] = ()) -> None:
        self.state = state
        self.allow = list(label_allowlist)
        self.extra_names = [sanitize_label(k) for k in self.allow]

    def _labels(self, info: ContainerInfo) -> tuple[list[str], list[str]]:
        cgroup = None
        stats = self.state.stats
        if stats is not None and stats.cgroup is not None:
            cgroup = stats.cgroup._paths.get(info.meta.id)
        cid = "/" + (cgroup or f"docker/{info.meta.id}")
        names = ["id", "name", "image", *self.extra_names]
        values = [cid, info.meta.name, info.meta.image]
        values += [info.meta.labels.get(k, "") for k in self.allow]
        return names, values

    def describe(self) -> Iterator[Metric]:
        return iter(())  # series vary with the containers: no fixed description

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        containers = list(self.state.inventory.containers.values())
        if not containers:
            return
        names, _ = self._labels(containers[0])
        fam = _Families(names)
        for info in containers:
            _, lv = self._labels(info)
            if info.stats is not None:
                _resources(fam, lv, info, info.stats)
            _lifecycle(fam, lv, info)
            _logs(fam, lv, info, now)
        yield from fam.values()


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


def _resources(fam: _Families, lv: list[str], info: ContainerInfo, s: StatsSample) -> None:
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
    gauge("container_memory_working_set_bytes", "Current working set in bytes.").add_metric(
        lv, s.memory_working_set
    )
    gauge("container_memory_rss", "Size of RSS in bytes.").add_metric(lv, s.memory_rss)
    gauge("container_memory_cache", "Number of bytes of page cache memory.").add_metric(
        lv, s.memory_cache
    )
    gauge(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container (0: unlimited).",
    ).add_metric(lv, info.memory_limit or s.memory_limit)
    gauge("container_processes", "Number of processes running inside the container.").add_metric(
        lv, s.pids
    )
    for iface, n in s.networks.items():
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
    for dev in sorted(set(s.io_read_bytes) | set(s.io_write_bytes)):
        counter(
            "container_fs_reads_bytes", "Cumulative count of bytes read", ("device",)
        ).add_metric([*lv, dev], s.io_read_bytes.get(dev, 0))
        counter(
            "container_fs_writes_bytes",
            "Cumulative count of bytes written",
            ("device",),
        ).add_metric([*lv, dev], s.io_write_bytes.get(dev, 0))


def _lifecycle(fam: _Families, lv: list[str], info: ContainerInfo) -> None:
    """State, health, starts, exits and OOM kills, from the engine's events."""
    counter, gauge = fam.counter, fam.gauge
    gauge("container_last_seen", "Last time a container was seen by the exporter").add_metric(
        lv, info.last_seen
    )
    if info.started_at:
        gauge(
            "container_start_time_seconds",
            "Start time of the container since unix epoch in seconds.",
        ).add_metric(lv, info.started_at)
    st = gauge(
        "container_state",
        "1 for the container's current state, 0 for the others.",
        ("state",),
    )
    for state in STATES:
        st.add_metric([*lv, state], 1.0 if info.state == state else 0.0)
    hs = gauge(
        "container_health_status",
        "1 for the container's current health status (none: no health check), 0 for the others.",
        ("status",),
    )
    current = info.health or "none"
    for status in (*HEALTH, "none"):
        hs.add_metric([*lv, status], 1.0 if current == status else 0.0)
    counter(
        "container_restarts",
        "Starts of the container after its first, as seen by the agent.",
    ).add_metric(lv, info.restarts)
    if info.exit_code is not None:
        gauge("container_last_exit_code", "Exit code of the container's last exit.").add_metric(
            lv, info.exit_code
        )
    counter("container_oom_events", "OOM events of the container.").add_metric(lv, info.oom_events)


def _logs(fam: _Families, lv: list[str], info: ContainerInfo, now: float) -> None:
    """Log lines and bytes read, the read lag and the source."""
    for stream in ("stdout", "stderr"):
        slv = [*lv, stream]
        fam.counter(
            "container_log_lines", "Log lines delivered to the pipeline.", ("stream",)
        ).add_metric(slv, info.log_lines[stream])
        fam.counter(
            "container_log_bytes",
            "Characters of log messages delivered (bytes for ASCII).",
            ("stream",),
        ).add_metric(slv, info.log_bytes[stream])
    if info.last_log_timestamp:
        fam.gauge(
            "container_agent_log_read_lag_seconds",
            "Now minus the engine timestamp of the last log line delivered.",
        ).add_metric(lv, max(0.0, now - float(timestamp_to_unix(info.last_log_timestamp))))
    if info.log_source:
        fam.gauge(
            "container_agent_log_source",
            "1 for the log source the agent reads this container from.",
            ("source",),
        ).add_metric([*lv, info.log_source], 1.0)


class AgentCollector(Collector):
    """The agent's own health: records in and out per exporter, queues, engine, readers."""

    def __init__(self, state: AgentState) -> None:
        self.state = state

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._pipeline()
        yield from self._exporter_counters()
        yield from self._engine()

    def _pipeline(self) -> Iterator[Metric]:
        """Records in, out and dropped per exporter; queues and health."""
        st = self.state
        received = CounterMetricFamily(
            "container_agent_records_received",
            "Records handed to the exporter's queue.",
            labels=["exporter"],
        )
        exported = CounterMetricFamily(
            "container_agent_records_exported",
            "Records the exporter accepted.",
            labels=["exporter"],
        )
        dropped = CounterMetricFamily(
            "container_agent_records_dropped",
            "Records dropped, by reason.",
            labels=["exporter", "reason"],
        )
        failures = CounterMetricFamily(
            "container_agent_exporter_failures", "Failed sends (each retried).", labels=["exporter"]
        )
        depth = GaugeMetricFamily(
            "container_agent_queue_records",
            "Records waiting in the exporter's queue.",
            labels=["exporter"],
        )
        capacity = GaugeMetricFamily(
            "container_agent_queue_capacity_records",
            "Capacity of the exporter's queue.",
            labels=["exporter"],
        )
        up = GaugeMetricFamily(
            "container_agent_exporter_healthy",
            "1 when the exporter reports itself healthy.",
            labels=["exporter"],
        )
        for r in st.pipeline.runners:
            received.add_metric([r.name], r.received)
            exported.add_metric([r.name], r.exported)
            counts = dict(r.dropped)
            if r.buffer is not None:
                counts.update(r.buffer.dropped)  # "buffer_full"
            for reason in sorted({"queue_full", "shutdown", *counts}):
                dropped.add_metric([r.name, reason], counts.get(reason, 0))
            failures.add_metric([r.name], r.failures)
            depth.add_metric([r.name], r.queue.size)
            capacity.add_metric([r.name], r.queue.capacity)
            up.add_metric([r.name], 1.0 if r.exporter.health().ok else 0.0)
        yield from (received, exported, dropped, failures, depth, capacity, up)

    def _exporter_counters(self) -> Iterator[Metric]:
        """Disk buffers, and counters some exporters keep themselves (the http exporter
        retries inside send)."""
        st = self.state
        buffered = GaugeMetricFamily(
            "container_agent_buffer_records",
            "Records waiting in the exporter's disk buffer.",
            labels=["exporter"],
        )
        for r in st.pipeline.runners:
            if r.buffer is not None:
                buffered.add_metric([r.name], r.buffer.records)
        yield buffered
        for attr, name, doc in (
            ("requests", "container_agent_exporter_requests", "Requests sent to the backend."),
            ("retries", "container_agent_exporter_retries", "Requests retried."),
            (
                "dead_lettered_records",
                "container_agent_exporter_dead_lettered_records",
                "Records written to the dead-letter file.",
            ),
            ("bytes_sent", "container_agent_exporter_sent_bytes", "Bytes sent (compressed)."),
        ):
            fam = CounterMetricFamily(name, doc, labels=["exporter"])
            for r in st.pipeline.runners:
                value = getattr(r.exporter, attr, None)
                if isinstance(value, int | float):
                    fam.add_metric([r.name], value)
            if fam.samples:
                yield fam

    def _engine(self) -> Iterator[Metric]:
        """The engine connection, readers and stats rounds."""
        st = self.state
        yield CounterMetricFamily(
            "container_agent_engine_reconnects",
            "Times the agent reconnected to the engine.",
            value=st.discovery.reconnects,
        )
        yield GaugeMetricFamily(
            "container_agent_engine_connected",
            "1 while the engine's event stream is open.",
            value=1.0 if st.discovery.connected.is_set() else 0.0,
        )
        yield CounterMetricFamily(
            "container_agent_engine_events",
            "Container events received from the engine.",
            value=st.discovery.events_seen,
        )
        yield GaugeMetricFamily(
            "container_agent_containers_followed",
            "Containers whose logs are being read now.",
            value=st.followers.followed,
        )
        if st.stats is not None:
            yield CounterMetricFamily(
                "container_agent_stats_errors", "Stats readings that failed.", value=st.stats.errors
            )
            yield GaugeMetricFamily(
                "container_agent_stats_round_seconds",
                "Duration of the last stats round.",
                value=st.stats.last_round_seconds,
            )
