"""A /metrics answer: the copy of the agent's state taken on the event loop (``Snapshot``)
and the exposition built from it in the exporter's build thread (``render``)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from agent.metrics.collectors import AgentSnapshot, ContainersSnapshot
    from agent.metrics.text import TextCache
    from exporters.prometheus.listener import ListenerCounters


# While the build thread runs, the event loop's thread waits for the GIL after each of its
# system calls until the builder gives it up: up to the switch interval (5 ms by default),
# so every read and write of the loop would wait that long. Builds run with a shorter one.
BUILD_SWITCH_SECONDS = 0.0005

# An answer is kept and sent in pieces of about this size, never as one block. A 7 MB block
# (1,000 containers) was copied twice more on its way out (aiohttp joined the head to it;
# the transport kept what the socket did not take at once), and after such blocks the
# process kept more resident (likely glibc's mmap threshold, which rises to the size of a
# freed block): a faked agent of 1,000 containers kept 80 MB after six plain scrapes
# (75 gzipped), against 67 MB in pieces (docs/benchmarks.md, session 12).
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Body:
    """A /metrics answer (or its gzip) in pieces of about ``CHUNK_BYTES``."""

    chunks: tuple[bytes, ...]
    size: int

    def join(self) -> bytes:
        """The answer as one block (for tests and tools; the exporter sends the pieces)."""
        return b"".join(self.chunks)


def pieces(parts: Iterable[bytes], size: int = CHUNK_BYTES) -> Body:
    """``parts`` (small: a container's lines of a family) joined into pieces of at least
    ``size`` bytes (the last may be shorter), in order."""
    chunks: list[bytes] = []
    piece: list[bytes] = []
    n = total = 0
    for part in parts:
        piece.append(part)
        n += len(part)
        if n >= size:
            chunks.append(b"".join(piece))
            total += n
            piece, n = [], 0
    if n:
        chunks.append(b"".join(piece))
        total += n
    return Body(tuple(chunks), total)


# -- the scrape --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one /metrics answer says, copied on the event loop."""

    exporter: str
    containers: ContainersSnapshot
    agent: AgentSnapshot
    listener: ListenerCounters
    snapshot_seconds: float  # this snapshot's cost on the loop
    last_build_seconds: float


class _Families:
    """What ``generate_latest`` takes: anything with ``collect()``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def _listener_families(snap: Snapshot) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    name, c = [snap.exporter], snap.listener

    def one(family: Any, value: float) -> Metric:
        family.add_metric(name, value)
        return family

    def by(family: Any, pairs: tuple[tuple[str, int], ...]) -> Metric:
        for key, value in pairs:
            family.add_metric([*name, key], value)
        return family

    labels = ["exporter"]
    yield one(
        GaugeMetricFamily(
            "container_agent_http_connections",
            "Connections open to the prometheus exporter's listener now.",
            labels=labels,
        ),
        c.connections,
    )
    yield by(
        CounterMetricFamily(
            "container_agent_http_connections_refused",
            "Connections answered 503 and closed at once, by reason: max_connections were "
            "open (max_connections), or the new connection's descriptor fell within "
            "reserved_descriptors of the process's limit (descriptors).",
            labels=[*labels, "reason"],
        ),
        c.refused,
    )
    yield by(
        CounterMetricFamily(
            "container_agent_http_timeouts",
            "Connections closed because the client sent no complete request head within "
            "header_timeout_seconds (header), or read nothing of a response for "
            "idle_timeout_seconds (write). Idle kept-alive connections closed after "
            "idle_timeout_seconds are not counted.",
            labels=[*labels, "timeout"],
        ),
        c.timeouts,
    )
    yield one(
        CounterMetricFamily(
            "container_agent_http_accept_errors",
            "accept() calls on the listener that failed (EMFILE: the process is out of "
            "descriptors, ...); accepting pauses 1 s after each.",
            labels=labels,
        ),
        c.accept_errors,
    )
    yield one(
        CounterMetricFamily(
            "container_agent_http_accept_pauses",
            "Times the listener stopped accepting because fewer than reserved_descriptors "
            "descriptors remained under the process's limit (it polls every 0.5 s).",
            labels=labels,
        ),
        c.reserve_pauses,
    )
    yield one(
        GaugeMetricFamily(
            "container_agent_metrics_snapshot_seconds",
            "Time the copy of the agent's state for this /metrics answer took on the event "
            "loop (the only part of a scrape that holds up log shipping).",
            labels=labels,
        ),
        snap.snapshot_seconds,
    )
    yield one(
        GaugeMetricFamily(
            "container_agent_metrics_build_seconds",
            "Time the previous /metrics answer took: the copy on the event loop plus "
            "building the families and text in a thread.",
            labels=labels,
        ),
        snap.last_build_seconds,
    )


class _SwitchInterval:
    """``BUILD_SWITCH_SECONDS`` while any exporter's build runs (there may be several
    prometheus exporters, on one loop), then the interval as it was."""

    def __init__(self) -> None:
        self.builds = 0
        self.saved = 0.0

    @contextlib.contextmanager
    def short(self) -> Iterator[None]:
        if not self.builds:
            self.saved = sys.getswitchinterval()
            sys.setswitchinterval(min(self.saved, BUILD_SWITCH_SECONDS))
        self.builds += 1
        try:
            yield
        finally:
            self.builds -= 1
            if not self.builds:
                sys.setswitchinterval(self.saved)


SWITCH = _SwitchInterval()


def render(snap: Snapshot, openmetrics: bool, process: Any, cache: TextCache | None = None) -> Body:
    """The exposition of a snapshot: runs in the exporter's build thread. The
    per-container families, nearly all of the answer, are written by
    ``agent.metrics.text`` (reusing ``cache``'s lines of the previous build where their
    values are the same); the agent's own few go through prometheus-client."""
    from prometheus_client import exposition as text_format
    from prometheus_client.openmetrics import exposition as om_format

    from agent.metrics.collectors import agent_families
    from agent.metrics.text import container_parts

    parts = container_parts(snap.containers, openmetrics, cache)
    metrics = [*agent_families(snap.agent), *_listener_families(snap), *process.collect()]
    fmt = om_format if openmetrics else text_format
    parts.append(bytes(fmt.generate_latest(_Families(metrics))))
    return pieces(parts)  # one copy of the answer's ~7 KB a container


# -- gzip ---------------------------------------------------------------------------------------


def wants_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (Prometheus sends
    ``gzip``; ``gzip;q=0`` refuses it)."""
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.partition(";")
        if coding.strip() in ("gzip", "x-gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


def gzip_body(body: Body) -> Body:
    """``body`` as one gzip member, at the fastest level, compressed piece by piece: ISA-L's
    deflate when installed (``isal``: ~4 ms for 7 MB of /metrics, 7x smaller), else zlib's
    (~5x slower). In the build thread. Imported at the first gzipped answer: ISA-L's
    modules are ~0.4 MB of resident memory that an exporter without ``compression: gzip``
    never needs."""
    from exporters._compress import gzip_stream

    return pieces(gzip_stream(body.chunks, 1))
