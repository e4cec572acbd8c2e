"""What a running agent is doing, as one JSON document: ``/status``, and what
``container-agent status`` and ``top`` show.

Per followed container: its log source, lines and bytes per second, lag (now minus the
engine stamp of the last line delivered), failed reads and the last one's error. Per
exporter: records per second, queue depth, disk-buffered records and bytes, retries,
drops by reason, dead letters, failures and the last error. Then the engine connection
and the agent's uptime, config hash and reloads.

Rates are measured between two calls at least ``MIN_RATE_SECONDS`` apart (a faster caller
gets the last rate again); the first call gives the average since the agent started. The
document is built from a copy of plain counters: cheap, on the event loop.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.record import timestamp_to_unix

if TYPE_CHECKING:
    from agent.state import AgentState

MIN_RATE_SECONDS = 1.0


class Rates:
    """Per key, the rate of a counter between the last two samples."""

    def __init__(self, started: float) -> None:
        self.started = started
        self._last: dict[str, tuple[float, float]] = {}  # key -> (time, value)
        self._rate: dict[str, float] = {}

    def rate(self, key: str, value: float, now: float) -> float:
        last = self._last.get(key)
        if last is None:
            self._last[key] = (now, value)
            self._rate[key] = value / max(now - self.started, 1e-9)
        elif now - last[0] >= MIN_RATE_SECONDS:
            self._rate[key] = max(0.0, value - last[1]) / (now - last[0])
            self._last[key] = (now, value)
        return self._rate[key]

    def forget(self, keep: set[str]) -> None:
        for key in [k for k in self._last if k.split(":", 1)[1] not in keep]:
            self._last.pop(key, None)
            self._rate.pop(key, None)


def build(state: AgentState, rates: Rates) -> dict[str, Any]:
    now = time.time()
    return {
        "agent": _agent(state, now),
        "engine": _engine(state),
        "containers": _containers(state, rates, now),
        "exporters": _exporters(state, rates, now),
    }


def _agent(state: AgentState, now: float) -> dict[str, Any]:
    reloader = state.reloader
    return {
        "version": __version__,
        "host": state.host,
        "uptime_seconds": round(now - state.started_at, 3),
        "config_hash": getattr(reloader, "hash", None),
        "reloads": dict(getattr(reloader, "results", {})),
        "tasks_down": dict(state.supervisor.down) if state.supervisor is not None else {},
    }


def _engine(state: AgentState) -> dict[str, Any]:
    d = state.discovery
    return {
        "host": d.engine.host,
        "connected": d.connected.is_set(),
        "reconnects": d.reconnects,
        "events": d.events_seen,
        "last_error": "" if d.connected.is_set() else d.last_error,
    }


def _containers(state: AgentState, rates: Rates, now: float) -> list[dict[str, Any]]:
    out = []
    readers = state.followers.readers
    for cid, info in list(state.inventory.containers.items()):
        reader = readers.get(cid)
        if reader is None and info.state != "running":
            continue  # neither followed nor running: not worth a line
        lines = info.log_lines["stdout"] + info.log_lines["stderr"]
        size = info.log_bytes["stdout"] + info.log_bytes["stderr"]
        lag = None
        if info.last_log_timestamp:
            lag = round(max(0.0, now - float(timestamp_to_unix(info.last_log_timestamp))), 3)
        out.append(
            {
                "id": cid[:12],
                "name": info.meta.name,
                "image": info.meta.image,
                "state": info.state,
                "followed": reader is not None,
                "source": info.log_source,
                "lines": lines,
                "lines_per_second": round(rates.rate(f"lines:{cid}", lines, now), 2),
                "bytes_per_second": round(rates.rate(f"bytes:{cid}", size, now), 1),
                "lag_seconds": lag,
                "read_failures": info.log_read_failures,
                "last_error": reader.last_error if reader is not None else "",
            }
        )
    rates.forget(set(state.inventory.containers) | {r.name for r in state.pipeline.runners})
    out.sort(key=_by_rate)
    return out


def _by_rate(c: dict[str, Any]) -> tuple[float, str]:
    return -float(c["lines_per_second"]), str(c["name"])


def _exporters(state: AgentState, rates: Rates, now: float) -> list[dict[str, Any]]:
    out = []
    for r in state.pipeline.runners:
        exporter = r.exporter
        health = exporter.health()
        counters = exporter.counters() if hasattr(exporter, "counters") else {}
        if not isinstance(counters, dict):  # (the prometheus exporter's are its listener's)
            counters = {}
        drops = dict(r.dropped)
        buffer = r.buffer
        if buffer is not None:
            drops.update(buffer.dropped)
        out.append(
            {
                "name": r.name,
                "type": exporter.type_name,
                "target": exporter.target(),
                "healthy": health.ok and not r.worker_error,
                "detail": r.worker_error or health.detail,
                "received": r.received,
                "exported": r.exported,
                "records_per_second": round(rates.rate(f"exported:{r.name}", r.exported, now), 2),
                "queue_records": r.queue.size,
                "queue_capacity": r.queue.capacity,
                "buffered_records": buffer.records if buffer is not None else 0,
                "buffered_bytes": buffer.size if buffer is not None else 0,
                "retries": counters.get("retries", 0),
                "dropped": {k: v for k, v in drops.items() if v},
                "dead_lettered": r.dead_lettered,
                "failures": r.failures + counters.get("failures", 0),
                "last_error": r.last_error,
            }
        )
    return out
