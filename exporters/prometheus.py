"""The prometheus exporter: a scrape endpoint (``/metrics``) plus ``/healthz`` and ``/readyz``.

It takes no records from the pipeline: its collectors read the agent's state at scrape
time. ``/metrics`` answers in OpenMetrics when the scraper asks for it (Accept header),
else in the Prometheus text format.

prometheus-client, aiohttp's server and the collectors are imported when an exporter of
this type is built, not when the module is: an agent without one never loads them (4 MB
of its resident memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import orjson
from pydantic import Field, field_validator

from agent.record import Record
from exporters.base import Exporter, ExporterConfig, Health, register

if TYPE_CHECKING:
    from aiohttp import web

    from agent.state import AgentState


class PrometheusConfig(ExporterConfig):
    type: Literal["prometheus"] = Field(description="Serve metrics for Prometheus to scrape.")
    listen: str = Field("127.0.0.1:9811", description="`host:port` to serve on.")
    container_labels: list[str] = Field(
        default_factory=list,
        description="Container labels to add to container metrics, as "
        "`container_label_<name>` (none by default: labels can be unbounded).",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value


@register
class PrometheusExporter(Exporter):
    type_name = "prometheus"
    config_class = PrometheusConfig
    accepts_records = False
    config: PrometheusConfig

    def __init__(self, name: str, config: PrometheusConfig) -> None:
        from prometheus_client import CollectorRegistry

        super().__init__(name, config)
        self.registry = CollectorRegistry(auto_describe=False)
        self._state: AgentState | None = None
        self._runner: web.AppRunner | None = None
        self.scrapes = 0

    def bind(self, state: AgentState) -> None:
        from prometheus_client import ProcessCollector

        from agent.metrics.collectors import AgentCollector, ContainerCollector

        self._state = state
        self.registry.register(ContainerCollector(state, self.config.container_labels))
        self.registry.register(AgentCollector(state))
        self.registry.register(ProcessCollector(registry=None))

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, _, port = self.config.listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]") or None, int(port))
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(
                f"prometheus exporter cannot listen on {self.config.listen}: {exc.strerror or exc}"
            ) from exc

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import exposition as text_format
        from prometheus_client.openmetrics import exposition as openmetrics

        self.scrapes += 1
        accept = request.headers.get("Accept", "")
        if "application/openmetrics-text" in accept:
            body = openmetrics.generate_latest(self.registry)
            ctype = openmetrics.CONTENT_TYPE_LATEST
        else:
            body = text_format.generate_latest(self.registry)
            ctype = text_format.CONTENT_TYPE_LATEST
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def _healthz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(body=b'{"alive":true}', content_type="application/json")

    async def _readyz(self, request: web.Request) -> web.Response:
        from aiohttp import web

        if self._state is None:
            return web.Response(
                status=503,
                body=b'{"ready":false,"detail":"starting"}',
                content_type="application/json",
            )
        ok, body = self._state.ready()
        return web.Response(
            status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json"
        )

    async def send(self, batch: Sequence[Record]) -> None:
        return None  # never called: accepts_records is False

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def target(self) -> str:
        return f"http://{self.config.listen}/metrics"

    def health(self) -> Health:
        return Health(self._runner is not None, "" if self._runner else "not serving")
