"""The prometheus exporter: a scrape endpoint (``/metrics``) plus ``/healthz``, ``/readyz``,
``/status`` and ``/tap``.

It takes no records from the pipeline: its collectors read the agent's state at scrape
time. ``/metrics`` answers in OpenMetrics when the scraper asks for it (Accept header),
else in the Prometheus text format; gzipped (``compression: gzip``) when the scraper
accepts it, compressed in the build thread once per answer.

A scrape must not hold up log shipping: the state is copied on the event loop (a few
microseconds per container, ``agent.metrics.collectors``) and the families and the text
are built from that copy in a thread of the exporter's own. One build runs at a time and
scrapes that arrive before its copy is taken share it; every answer is built from a copy
taken after the scrape arrived. After a build the next one waits as long as it took, so
the builder thread (which competes with the loop for the GIL) is busy at most half the
time however many scrapers there are; while it runs, the interpreter's switch interval is
0.5 ms instead of 5, so that each system call of the loop's thread waits at most that long
for the GIL.

The listener (``listener``) cannot starve the agent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from agent.eventloop import flowing
from agent.record import Record
from exporters.base import Exporter, Health, register
from exporters.prometheus import views
from exporters.prometheus.config import PrometheusConfig
from exporters.prometheus.exposition import (
    SWITCH,
    Body,
    Snapshot,
    gzip_body,
    render,
    wants_gzip,
)
from exporters.prometheus.listener import Listener, Throttled, server_logger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiohttp.web_request import BaseRequest
    from aiohttp.web_response import Response, StreamResponse
    from aiohttp.web_server import Server

    from agent.metrics.collectors import AgentCollector, ContainerCollector
    from agent.metrics.text import TextCache
    from agent.state import AgentState

SHUTDOWN_SECONDS = 2.0  # a request in progress at close gets this long to finish


# -- the exporter ------------------------------------------------------------------------------


@register
class PrometheusExporter(Exporter):
    type_name = "prometheus"
    config_class = PrometheusConfig
    accepts_records = False
    config: PrometheusConfig

    def __init__(self, name: str, config: PrometheusConfig) -> None:
        super().__init__(name, config)
        self._state: AgentState | None = None
        self._containers: ContainerCollector | None = None
        self._agent: AgentCollector | None = None
        self._process: Any = None
        self._text_cache: TextCache | None = None  # the build thread's alone
        self._gzip: _Gzip | None = None  # the body being gzipped
        self._server: Server | None = None
        self._routes: dict[str, Callable[[BaseRequest], Awaitable[StreamResponse]]] = {}
        self.listener: Listener | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: dict[bool, asyncio.Future[Body]] = {}  # per format: not yet copied
        self._builds: set[asyncio.Task[None]] = set()
        self._last_end = 0.0
        self.last_build_seconds = 0.0
        self._server_errors: Throttled | None = None
        self.scrapes = 0
        self.builds = 0

    def bind(self, state: AgentState) -> None:
        from prometheus_client import ProcessCollector

        from agent.metrics.collectors import AgentCollector, ContainerCollector
        from agent.metrics.text import TextCache

        self._state = state
        self._containers = ContainerCollector(state, self.config.container_labels)
        self._agent = AgentCollector(state)
        self._process = ProcessCollector(registry=None)
        self._text_cache = TextCache()

    async def start(self) -> None:
        # aiohttp's low-level server (documented as aiohttp.web.Server) and a table of five
        # paths: aiohttp.web's Application, router and runner would bring its websocket,
        # static-file and URL-dispatch modules too (~0.6 MB of resident memory).
        from aiohttp.web_server import Server

        self._routes = {
            "/metrics": self._metrics,
            "/healthz": self._healthz,
            "/readyz": self._readyz,
        }
        if self.config.status:
            self._routes["/status"] = self._status
        if self.config.tap:
            self._routes["/tap"] = self._tap
        self._server_errors = Throttled("http_request_failed", exporter=self.name)
        self._server = Server(
            self._route,
            access_log=None,
            keepalive_timeout=self.config.idle_timeout_seconds,
            logger=server_logger(self.name, self._server_errors),
        )
        host, _, port = self.config.listen.rpartition(":")
        self.listener = Listener(self.name, self._server, self.config)
        try:
            await self.listener.start(host.strip("[]") or None, int(port))
        except OSError as exc:
            self.listener = None
            self._server = None
            raise OSError(
                f"prometheus exporter cannot listen on {self.config.listen}: {exc.strerror or exc}"
            ) from exc
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"metrics-{self.name}")
        self._lock = asyncio.Lock()

    async def _route(self, request: BaseRequest) -> StreamResponse:
        """GET (or HEAD) of a path in the table; else 404, or 405 for another method on
        one of its paths: the answers of aiohttp's router with ``add_get`` routes."""
        from aiohttp import web_exceptions

        handler = self._routes.get(request.path)
        if handler is None:
            raise web_exceptions.HTTPNotFound()
        if request.method not in ("GET", "HEAD"):
            raise web_exceptions.HTTPMethodNotAllowed(request.method, ("GET", "HEAD"))
        return await handler(request)

    async def _metrics(self, request: BaseRequest) -> Response:
        from aiohttp.web_response import Response
        from prometheus_client import exposition as text_format
        from prometheus_client.openmetrics import exposition as om_format

        from exporters.prometheus.payload import BodyPayload

        self.scrapes += 1
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = await self.exposition(openmetrics)
        ctype = om_format.CONTENT_TYPE_LATEST if openmetrics else text_format.CONTENT_TYPE_LATEST
        headers = {"Content-Type": ctype}
        if self.config.compression == "gzip":
            headers["Vary"] = "Accept-Encoding"
        if self.config.compression == "gzip" and wants_gzip(
            request.headers.get("Accept-Encoding", "")
        ):
            body = await self._gzipped(body)
            headers["Content-Encoding"] = "gzip"
        # A big page is written as the socket takes it: each "writable" must not wait for a
        # gathered wake-up (agent/eventloop.py; a 7 MB page took 40 ms more).
        flowing(body.size)
        return Response(body=BodyPayload(body, ctype), headers=headers)

    async def _gzipped(self, body: Body) -> Body:
        """``body`` gzipped in the build thread, once for all the scrapes it answers that
        wait for it together (then it is let go)."""
        last = self._gzip
        if last is None or last.body is not body:
            future = asyncio.get_running_loop().run_in_executor(self._executor, gzip_body, body)
            last = self._gzip = _Gzip(body, future)
        last.waiting += 1
        try:
            return await asyncio.shield(last.future)
        finally:
            last.waiting -= 1
            if not last.waiting and self._gzip is last:
                self._gzip = None

    async def exposition(self, openmetrics: bool = False) -> Body:
        """The /metrics body, from a copy of the state taken after this call began."""
        pending = self._pending.get(openmetrics)
        if pending is None:
            pending = self._pending[openmetrics] = asyncio.get_running_loop().create_future()
            pending.add_done_callback(_retrieved)
            task = asyncio.create_task(self._build(openmetrics, pending), name="metrics-build")
            self._builds.add(task)
            task.add_done_callback(self._builds.discard)
        return await asyncio.shield(pending)

    async def _build(self, openmetrics: bool, done: asyncio.Future[Body]) -> None:
        assert self._lock is not None
        try:
            async with self._lock:  # one build at a time
                # The build thread busy at most half the time: rest as long as it worked.
                rest = self._last_end + self.last_build_seconds - time.monotonic()
                if rest > 0:
                    await asyncio.sleep(rest)
                del self._pending[openmetrics]  # later scrapes wait for a later copy
                t0 = time.monotonic()
                snap = self._snapshot(t0)
                with SWITCH.short():
                    body = await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._render, snap, openmetrics
                    )
                self._last_end = time.monotonic()
                self.last_build_seconds = self._last_end - t0
                self.builds += 1
            done.set_result(body)
        except BaseException as exc:
            if self._pending.get(openmetrics) is done:
                del self._pending[openmetrics]
            if not done.done():
                if isinstance(exc, asyncio.CancelledError):
                    done.cancel()
                else:
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _render(self, snap: Snapshot, openmetrics: bool) -> Body:
        """In the build thread (one build at a time: the cache is its alone)."""
        return render(snap, openmetrics, self._process, self._text_cache)

    def _snapshot(self, t0: float) -> Snapshot:
        """On the event loop: the copy a build works from (``t0``: when it began)."""
        if self._containers is None or self._agent is None or self.listener is None:
            raise RuntimeError("the prometheus exporter is not bound to the agent's state")
        containers = self._containers.snapshot()
        agent = self._agent.snapshot()
        listener = self.listener.counters()
        return Snapshot(
            self.name,
            containers,
            agent,
            listener,
            time.monotonic() - t0,
            self.last_build_seconds,
        )

    async def _healthz(self, request: BaseRequest) -> Response:
        from aiohttp.web_response import Response

        return Response(body=b'{"alive":true}', content_type="application/json")

    async def _readyz(self, request: BaseRequest) -> Response:
        from aiohttp.web_response import Response

        if self._state is None:
            return _starting()
        ok, body = self._state.ready()
        return Response(
            status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json"
        )

    async def _status(self, request: BaseRequest) -> Response:
        if self._state is None:
            return _starting()
        return await views.status(self._state)

    async def _tap(self, request: BaseRequest) -> StreamResponse:
        if self._state is None:
            return _starting()
        return await views.tap(self._state, request)

    async def send(self, batch: Sequence[Record]) -> None:
        return None  # never called: accepts_records is False

    async def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._server is not None:  # what aiohttp's runner did at cleanup
            self._server.pre_shutdown()
            await self._server.shutdown(SHUTDOWN_SECONDS)
            self._server = None
        for task in list(self._builds):
            task.cancel()
        await asyncio.gather(*self._builds, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self._server_errors is not None:
            self._server_errors.close()
        self.listener = None

    def target(self) -> str:
        return f"http://{self.config.listen}/metrics"

    def health(self) -> Health:
        return Health(self._server is not None, "" if self._server else "not serving")


class _Gzip:
    """A body and its gzip under way, for the scrapes waiting for it."""

    def __init__(self, body: Body, future: asyncio.Future[Body]) -> None:
        self.body = body
        self.future = future
        self.waiting = 0


def _starting() -> Response:
    from aiohttp.web_response import Response

    return Response(
        status=503, body=b'{"ready":false,"detail":"starting"}', content_type="application/json"
    )


def _retrieved(future: asyncio.Future[Body]) -> None:
    """A failed build with no scraper left to see it is not "never retrieved"."""
    if not future.cancelled():
        future.exception()
