"""The agent's own metrics: records in and out per exporter, queues and health, the
engine connection, readers, config reloads, the tap and the processing stages.

As for the container metrics (``agent.metrics.collectors``): ``AgentSnapshot`` is the
plain copy taken on the event loop, ``agent_families`` builds the families from it alone
(any thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from agent.delivery.runner import ExporterRunner


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


# The counters some exporters keep themselves (the http exporter retries inside send, the
# file exporter rotates and skips what an earlier run wrote):
# attribute, metric name, help.
OWN_COUNTERS = (
    (
        "requests",
        "container_agent_exporter_requests",
        "Requests the exporter sent to its backend, retries included.",
    ),
    (
        "retries",
        "container_agent_exporter_retries",
        "Times the exporter sent a request again after a failure (connection error, "
        "timeout, 429 or 5xx, or bulk items answered 429/5xx).",
    ),
    (
        "dead_lettered_records",
        "container_agent_exporter_dead_lettered_records",
        "Records the exporter wrote to its dead-letter file because the backend refused "
        "them for good (the exporter's own count).",
    ),
    (
        "bytes_sent",
        "container_agent_exporter_sent_bytes",
        "Request body bytes the backend answered with a 2xx (compressed size when "
        "compression is on).",
    ),
    (
        "rotations",
        "container_agent_exporter_file_rotations",
        "Times the file exporter rotated an output file (size or age).",
    ),
    (
        "duplicates_skipped",
        "container_agent_exporter_duplicates_skipped_records",
        "Records the file exporter did not write again after a restart because an earlier "
        "run had already written them (read back from the file's tail).",
    ),
    (
        "slow_loop_writes",
        "container_agent_exporter_slow_loop_writes",
        "Small writes the file exporter made on the event loop that were slow (each logs "
        "file_write_slow and sends its writes to a thread for a while).",
    ),
)


@dataclass(frozen=True, slots=True)
class ExporterRow:
    name: str
    received: int
    exported: int
    dead_lettered: int
    dropped: tuple[tuple[str, int], ...]  # by reason, sorted
    failures: int
    queue_records: int
    queue_capacity: int
    healthy: bool
    buffer_records: int | None  # None: no disk buffer
    own: tuple[tuple[str, float], ...]  # OWN_COUNTERS the exporter has: (attribute, value)


@dataclass(frozen=True, slots=True)
class AgentSnapshot:
    exporters: tuple[ExporterRow, ...]
    engine_reconnects: int
    engine_connected: bool
    engine_events: int
    containers_followed: int
    stats_errors: int | None  # None: stats are off
    stats_round_seconds: float | None
    containers_unavailable: int
    lines_lost: int
    reloads: tuple[tuple[str, int], ...]  # result, count
    config_hash: str | None
    tap_dropped: int
    processing: tuple[tuple[str, int], ...]  # counter, value (``Processing.totals``)


def exporter_row(r: ExporterRunner) -> ExporterRow:
    exporter = r.exporter
    counts = dict(r.dropped)
    if r.buffer is not None:
        counts.update(r.buffer.dropped)  # "buffer_full"
    dropped = tuple(
        (reason, counts.get(reason, 0)) for reason in sorted({"queue_full", "shutdown", *counts})
    )
    own = []
    for attr, _, _ in OWN_COUNTERS:
        value = _number(getattr(exporter, attr, None))
        if value is not None:
            own.append((attr, value))
    return ExporterRow(
        r.name,
        r.received,
        r.exported,
        r.dead_lettered,
        dropped,
        r.failures + int(_number(getattr(exporter, "failures", 0)) or 0),
        r.queue.size,
        r.queue.capacity,
        exporter.health().ok,
        r.buffer.records if r.buffer is not None else None,
        tuple(own),
    )


def agent_families(snap: AgentSnapshot) -> Iterator[Metric]:
    """The agent's own health: records in and out per exporter, queues, engine, readers."""
    yield from _pipeline(snap.exporters)
    yield from _exporter_counters(snap.exporters)
    yield from _engine(snap)
    yield from _operations(snap)
    yield from processing_families(snap.processing)


def _pipeline(rows: tuple[ExporterRow, ...]) -> Iterator[Metric]:
    """Records in, out and dropped per exporter; queues and health."""
    received = CounterMetricFamily(
        "container_agent_records_received",
        "Records the pipeline handed to the exporter (those its container filter takes), "
        "queued or dropped. Exporters that take no records (prometheus) stay at 0.",
        labels=["exporter"],
    )
    exported = CounterMetricFamily(
        "container_agent_records_exported",
        "Records the exporter delivered: records of the batches it accepted, less those the "
        "backend refused for good (dead-lettered, or dropped as dead_letter_full). With a "
        "disk buffer, counted when they leave the buffer.",
        labels=["exporter"],
    )
    dead = CounterMetricFamily(
        "container_agent_records_dead_lettered",
        "Records of the batches the exporter accepted that it wrote to its dead-letter file "
        "instead of delivering (the backend refused them for good).",
        labels=["exporter"],
    )
    dropped = CounterMetricFamily(
        "container_agent_records_dropped",
        "Records lost, by reason: queue_full (memory queue full under when_full: "
        "drop_newest), buffer_full (disk buffer full under drop_newest or drop_oldest), "
        "shutdown (still in the memory queue when the shutdown drain timed out), "
        "dead_letter_full (refused for good by the backend while the dead-letter file was "
        "at its cap).",
        labels=["exporter", "reason"],
    )
    failures = CounterMetricFamily(
        "container_agent_exporter_failures",
        "Failed delivery attempts: sends that raised (the pipeline retries the batch) plus "
        "the failed requests an exporter retries itself (http).",
        labels=["exporter"],
    )
    depth = GaugeMetricFamily(
        "container_agent_queue_records",
        "Records waiting in the exporter's memory queue (not the batch being sent).",
        labels=["exporter"],
    )
    capacity = GaugeMetricFamily(
        "container_agent_queue_capacity_records",
        "Records the exporter's memory queue holds before when_full applies (queue_records).",
        labels=["exporter"],
    )
    up = GaugeMetricFamily(
        "container_agent_exporter_healthy",
        "1 when the exporter reports itself healthy (as in /readyz), else 0.",
        labels=["exporter"],
    )
    for r in rows:
        received.add_metric([r.name], r.received)
        exported.add_metric([r.name], r.exported)
        dead.add_metric([r.name], r.dead_lettered)
        for reason, n in r.dropped:
            dropped.add_metric([r.name, reason], n)
        failures.add_metric([r.name], r.failures)
        depth.add_metric([r.name], r.queue_records)
        capacity.add_metric([r.name], r.queue_capacity)
        up.add_metric([r.name], 1.0 if r.healthy else 0.0)
    yield from (received, exported, dead, dropped, failures, depth, capacity, up)


def _exporter_counters(rows: tuple[ExporterRow, ...]) -> Iterator[Metric]:
    """Disk buffers, and counters some exporters keep themselves (the http exporter
    retries inside send)."""
    buffered = GaugeMetricFamily(
        "container_agent_buffer_records",
        "Records in the exporter's disk buffer not yet delivered (the batch being sent included).",
        labels=["exporter"],
    )
    for r in rows:
        if r.buffer_records is not None:
            buffered.add_metric([r.name], r.buffer_records)
    yield buffered
    for attr, name, doc in OWN_COUNTERS:
        fam = CounterMetricFamily(name, doc, labels=["exporter"])
        for r in rows:
            for key, value in r.own:
                if key == attr:
                    fam.add_metric([r.name], value)
        if fam.samples:
            yield fam


def _engine(snap: AgentSnapshot) -> Iterator[Metric]:
    """The engine connection, readers and stats rounds."""
    yield CounterMetricFamily(
        "container_agent_engine_reconnects",
        "Times the agent connected to the engine again after losing its event stream.",
        value=snap.engine_reconnects,
    )
    yield GaugeMetricFamily(
        "container_agent_engine_connected",
        "1 while the engine's event stream is open, else 0.",
        value=1.0 if snap.engine_connected else 0.0,
    )
    yield CounterMetricFamily(
        "container_agent_engine_events",
        "Container events received on the engine's event stream.",
        value=snap.engine_events,
    )
    yield GaugeMetricFamily(
        "container_agent_containers_followed",
        "Containers whose logs are being read now.",
        value=snap.containers_followed,
    )
    if snap.stats_errors is not None:
        yield CounterMetricFamily(
            "container_agent_stats_errors",
            "Stats readings that failed with an engine error (that container is skipped for "
            "the round).",
            value=snap.stats_errors,
        )
        yield GaugeMetricFamily(
            "container_agent_stats_round_seconds",
            "Duration of the last stats round (every running container read once).",
            value=snap.stats_round_seconds or 0.0,
        )


def _operations(snap: AgentSnapshot) -> Iterator[Metric]:
    """Containers lost before they could be read, config reloads, the tap."""
    yield CounterMetricFamily(
        "container_agent_containers_unavailable",
        "Containers removed before any of their logs could be read (their logs went with "
        "them: the engine's store has nothing left to read).",
        value=snap.containers_unavailable,
    )
    yield CounterMetricFamily(
        "container_agent_log_lines_lost",
        "Log lines the agent knows it could not read, estimated from their files' sizes: "
        "json-file logs rotated away, or truncated, before they were read (each is also "
        "logged as a log_lines_lost warning).",
        value=snap.lines_lost,
    )
    reloads = CounterMetricFamily(
        "container_agent_config_reloads",
        "Config reloads (SIGHUP, `container-agent reload`) by result: ok (applied) or "
        "failed (rejected: the running config stays).",
        labels=["result"],
    )
    for result, count in snap.reloads:
        reloads.add_metric([result], count)
    yield reloads
    if snap.config_hash is not None:
        info = GaugeMetricFamily(
            "container_agent_config_info",
            "1, with the hash of the config the agent runs (the first 12 hex digits of the "
            "SHA-256 of its JSON): it changes when a reload applies a new config.",
            labels=["hash"],
        )
        info.add_metric([snap.config_hash], 1.0)
        yield info
    yield CounterMetricFamily(
        "container_agent_tap_dropped",
        "Record copies a tap watcher (`/tap`, `container-agent tap`) lost because it read "
        "too slowly; the records themselves were not affected.",
        value=snap.tap_dropped,
    )


# Processing counters (``Processing.totals``) as families: counter key -> family, help,
# and the label value when several keys share a family.
_PROCESSING: dict[str, tuple[str, str, str | None]] = {
    "parsed": ("parser_lines", "result", "parsed"),
    "unparsed": ("parser_lines", "result", "unparsed"),
    "time_unparsed": ("parser_time_unparsed", "", None),
    "filtered": ("filtered_lines", "", None),
    "rate_limited_lines": ("rate_limited_lines", "", None),
    "rate_limited_bytes": ("rate_limited_bytes", "", None),
    "rate_limit_summaries": ("rate_limit_summaries", "", None),
    "multiline_records": ("multiline_records", "", None),
    "multiline_lines": ("multiline_lines", "", None),
    "invalid_labels": ("invalid_labels", "", None),
}
_PROCESSING_HELP = {
    "parser_lines": "Lines a parser (json, logfmt, regex) was applied to, by result: parsed, "
    "or unparsed (passed on untouched).",
    "parser_time_unparsed": "Parsed lines whose time field did not match the time format "
    "(the engine's timestamp was kept).",
    "filtered_lines": "Lines dropped by include/exclude filters.",
    "rate_limited_lines": "Lines dropped by a rate limit (mode drop); a summary record says "
    "how many, per container.",
    "rate_limited_bytes": "Bytes of the lines dropped by a rate limit.",
    "rate_limit_summaries": "Summary records a rate limit emitted for the lines it dropped.",
    "rate_limit_delay_seconds": "Seconds readers were held back by a rate limit (mode delay).",
    "multiline_records": "Records made by joining lines (multiline).",
    "multiline_lines": "Lines joined into those records.",
    "redactions": "Values masked by redaction, by preset or rule.",
    "invalid_labels": "container-agent.logs.* labels that were ignored as invalid (each is "
    "logged once per container).",
}


def processing_families(totals: tuple[tuple[str, int], ...]) -> Iterator[Metric]:
    """The processing stages' counters, summed over containers, all time."""
    fams: dict[str, CounterMetricFamily] = {}

    def fam(short: str, label: str = "") -> CounterMetricFamily:
        if short not in fams:
            fams[short] = CounterMetricFamily(
                "container_agent_processing_" + short,
                _PROCESSING_HELP[short],
                labels=[label] if label else None,
            )
        return fams[short]

    for key, value in totals:
        if key.startswith("redacted."):
            fam("redactions", "rule").add_metric([key.removeprefix("redacted.")], value)
        elif key == "rate_limit_delay_ms":
            fam("rate_limit_delay_seconds").add_metric([], value / 1000)
        elif key in _PROCESSING:
            short, label, label_value = _PROCESSING[key]
            fam(short, label).add_metric([label_value] if label_value else [], value)
    yield from fams.values()
