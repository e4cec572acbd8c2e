"""The prometheus exporter's settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from agent.section import empty_list
from exporters.base import ExporterConfig


class PrometheusConfig(ExporterConfig):
    type: Literal["prometheus"] = Field(description="Serve metrics for Prometheus to scrape.")
    listen: str = Field("127.0.0.1:9811", description="`host:port` to serve on.")
    container_labels: list[str] = Field(
        default_factory=empty_list,
        description="Container labels to add to container metrics, as "
        "`container_label_<name>` (none by default: labels can be unbounded).",
    )
    max_connections: int = Field(
        32,
        ge=1,
        description="Connections served at once; a connection beyond them is answered 503 "
        "and closed at once.",
    )
    header_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Time a client has to send a request's head, from connecting (or from "
        "the first byte of its next request); then the connection is closed.",
    )
    idle_timeout_seconds: float = Field(
        15.0,
        gt=0,
        description="An idle kept-alive connection is closed after this long; so is one "
        "whose client stops reading a response for this long.",
    )
    reserved_descriptors: int = Field(
        64,
        ge=0,
        description="Descriptors kept for the agent's own work (log files and streams, "
        "checkpoints, exporters): the listener accepts no connection while fewer remain "
        "under the process's RLIMIT_NOFILE.",
    )

    compression: Literal["none", "gzip"] = Field(
        "none",
        description="`gzip`: answer /metrics gzipped to a scraper that accepts it (Prometheus "
        "asks by default): about 7 x fewer bytes (1.3 MB instead of 7.4 for 1,000 "
        "containers) for ~5 ms of CPU here and the scraper's inflating; `none`: always "
        "plain, which on one host answers sooner (benchmarks.md).",
    )
    status: bool = Field(
        True,
        description="Serve `/status`: what the agent is doing, as JSON (`container-agent "
        "status` and `top` read it).",
    )
    tap: bool = Field(
        True,
        description="Serve `/tap`: the records passing through the agent, as they pass "
        "(`container-agent tap`). They may hold what an application printed: turn it off "
        "when the listener is reachable by anyone who may not read the logs.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value
