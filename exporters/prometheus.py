"""The prometheus exporter: a scrape endpoint (``/metrics``) plus ``/healthz`` and ``/readyz``.

It takes no records from the pipeline: its collectors read the agent's state at scrape
time. ``/metrics`` answers in OpenMetrics when the scraper asks for it (Accept header),
else in the Prometheus text format.

A scrape must not hold up log shipping: the state is copied on the event loop (a few
microseconds per container, ``agent.metrics.collectors``) and the families and the text
are built from that copy in a thread of the exporter's own. One build runs at a time and
scrapes that arrive before its copy is taken share it; every answer is built from a copy
taken after the scrape arrived. After a build the next one waits as long as it took, so
the builder thread (which competes with the loop for the GIL) is busy at most half the
time however many scrapers there are; while it runs, the interpreter's switch interval is
0.5 ms instead of 5, so that each system call of the loop's thread waits at most that long
for the GIL.

The listener cannot starve the agent: at most ``max_connections`` connections are served
(more are answered 503 and closed at once), a client has ``header_timeout_seconds`` to
send a request's head and an idle kept-alive connection is closed after
``idle_timeout_seconds``, and the listener stops accepting while the process has fewer
than ``reserved_descriptors`` descriptors left under its limit (log files and streams,
checkpoints and exporters need them). It accepts connections itself instead of through
asyncio's server, whose failed ``accept()`` (EMFILE) writes a traceback to stderr each
time; here failures are counted and logged as one JSON line per interval, and so are
aiohttp's request errors.

prometheus-client, aiohttp's server and the collectors are imported when an exporter of
this type is built, not when the module is: an agent without one never loads them (4 MB
of its resident memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson
import structlog
from pydantic import Field, field_validator

from agent.limits import FdBudget
from agent.record import Record
from exporters.base import Exporter, ExporterConfig, Health, register

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.core import Metric

    from agent.metrics.collectors import (
        AgentCollector,
        AgentSnapshot,
        ContainerCollector,
        ContainersSnapshot,
    )
    from agent.state import AgentState

log = structlog.get_logger("exporters.prometheus")

BACKLOG = 128
ACCEPT_BURST = 32  # connections accepted per wake-up before the loop runs other work
ACCEPT_RETRY_SECONDS = 1.0  # accepting pauses this long after accept() failed
RESERVE_POLL_SECONDS = 0.5  # while paused for descriptors, checks again this often
LOG_INTERVAL_SECONDS = 10.0  # a repeating failure is logged at most once per interval
SHUTDOWN_SECONDS = 2.0  # a request in progress at close gets this long to finish
# While the build thread runs, the event loop's thread waits for the GIL after each of its
# system calls until the builder gives it up: up to the switch interval (5 ms by default),
# so every read and write of the loop would wait that long. Builds run with a shorter one.
BUILD_SWITCH_SECONDS = 0.0005
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


class PrometheusConfig(ExporterConfig):
    type: Literal["prometheus"] = Field(description="Serve metrics for Prometheus to scrape.")
    listen: str = Field("127.0.0.1:9811", description="`host:port` to serve on.")
    container_labels: list[str] = Field(
        default_factory=list,
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

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
        return value


# -- logging without tracebacks ---------------------------------------------------------------


class _Throttled:
    """A warning for a failure that may repeat fast: the first one is logged at once, then
    at most one line per interval, ``count`` saying how many happened since the last line
    (the fields are those of the latest)."""

    def __init__(self, event: str, interval: float = LOG_INTERVAL_SECONDS, **fields: Any) -> None:
        self.event = event
        self.interval = interval
        self.static = fields
        self.total = 0
        self._pending = 0
        self._fields: dict[str, Any] = {}
        self._handle: asyncio.TimerHandle | None = None

    def hit(self, **fields: Any) -> None:
        self.total += 1
        self._fields = fields
        if self._handle is not None:
            self._pending += 1
            return
        log.warning(self.event, count=1, **self.static, **fields)
        try:
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._flush)
        except RuntimeError:  # no loop (a test's stray call): every hit is a line
            self._handle = None

    def _flush(self) -> None:
        self._handle = None
        if self._pending:
            count, self._pending = self._pending, 0
            log.warning(self.event, count=count, **self.static, **self._fields)
            self._handle = asyncio.get_running_loop().call_later(self.interval, self._flush)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._pending:
            count, self._pending = self._pending, 0
            log.warning(self.event, count=count, **self.static, **self._fields)


class _ServerLog(logging.Handler):
    """aiohttp's server logger (``exception("Error handling request")``, a traceback per
    bad request) as throttled JSON lines: ``http_request_failed`` with the error."""

    def __init__(self, throttled: _Throttled) -> None:
        super().__init__(logging.WARNING)
        self.throttled = throttled

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        error = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        self.throttled.hit(message=record.getMessage(), error=error)


def _server_logger(name: str, throttled: _Throttled) -> logging.Logger:
    logger = logging.getLogger(f"exporters.prometheus.server.{name}")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(_ServerLog(throttled))
    return logger


def _error_text(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0, "")
    return f"{code}: {exc.strerror}" if code and exc.strerror else str(exc)


# -- the listener -----------------------------------------------------------------------------


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's request handler behind the listener's timeouts.

    The header timer runs from the connection's start, and again from the first byte of
    each later request, until a blank line ends the request's head. aiohttp's keep-alive
    timer (``idle_timeout_seconds``) closes an idle connection between requests. The
    write timer runs while the transport's buffer is full (the client does not read).
    """

    def __init__(self, listener: _Listener, inner: asyncio.Protocol) -> None:
        self.listener = listener
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.made = False
        self._head = True  # reading a request's head
        self._tail = b""  # the last bytes of the head so far (the blank line may straddle)
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made = True
        self.transport = transport  # type: ignore[assignment]
        self._header_timer = self.listener.loop.call_later(
            self.listener.header_timeout, self._timed_out, "header"
        )
        self.inner.connection_made(transport)

    def _timed_out(self, kind: str) -> None:
        if kind == "header":
            self._header_timer = None
        else:
            self._write_timer = None
        self.listener.timeouts[kind] += 1
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._head:  # the first byte of the next request
            self._head = True
            self._tail = b""
            if self._header_timer is None:
                self._header_timer = self.listener.loop.call_later(
                    self.listener.header_timeout, self._timed_out, "header"
                )
        buf = self._tail + data
        if b"\r\n\r\n" in buf:
            self._head = False
            self._tail = b""
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
        else:
            self._tail = buf[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self._write_timer is None:
            self._write_timer = self.listener.loop.call_later(
                self.listener.idle_timeout, self._timed_out, "write"
            )
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = None
        self.listener.release(self)
        self.inner.connection_lost(exc)


@dataclass(frozen=True, slots=True)
class ListenerCounters:
    connections: int
    refused: tuple[tuple[str, int], ...]
    timeouts: tuple[tuple[str, int], ...]
    accept_errors: int
    reserve_pauses: int


class _Listener:
    """Accepts connections for aiohttp's request handler: capped, timed out, and never
    into the descriptors reserved for the agent's own work."""

    def __init__(
        self, name: str, factory: Callable[[], asyncio.Protocol], config: PrometheusConfig
    ) -> None:
        self.name = name
        self.factory = factory
        self.max_connections = config.max_connections
        self.header_timeout = config.header_timeout_seconds
        self.idle_timeout = config.idle_timeout_seconds
        self.budget = FdBudget(config.reserved_descriptors)
        self.loop = asyncio.get_running_loop()
        self.sockets: list[socket.socket] = []
        self.connections: set[_Connection] = set()
        self.refused = {"max_connections": 0, "descriptors": 0}
        self.timeouts = {"header": 0, "write": 0}
        self.accept_errors = 0
        self.reserve_pauses = 0
        self._paused = False
        self._resume: asyncio.TimerHandle | None = None
        self._setups: set[asyncio.Task[Any]] = set()
        self._accept_failed = _Throttled("listener_accept_failed", exporter=name)
        self._refusing = _Throttled(
            "listener_connections_refused", exporter=name, max_connections=self.max_connections
        )
        self._reserve = _Throttled(
            "listener_paused_for_descriptors", exporter=name, reserve=self.budget.reserve
        )

    async def start(self, host: str | None, port: int) -> None:
        infos = await self.loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        try:
            for family, kind, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                try:
                    sock = socket.socket(family, kind, proto)
                except OSError:  # a family this host does not have (IPv6)
                    continue
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(BACKLOG)
                sock.setblocking(False)
            if not self.sockets:
                raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {host}")
        except OSError:
            self.close()
            raise
        self._watch()

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    def _watch(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)
        self._paused = False

    def _pause(self, seconds: float) -> None:
        if not self._paused:
            for sock in self.sockets:
                self.loop.remove_reader(sock.fileno())
            self._paused = True
        if self._resume is None:
            self._resume = self.loop.call_later(seconds, self._try_resume)

    def _try_resume(self) -> None:
        self._resume = None
        if self.budget.exhausted():
            self._resume = self.loop.call_later(RESERVE_POLL_SECONDS, self._try_resume)
            return
        self._watch()

    def _out_of_descriptors(self, fd: int | None = None) -> bool:
        if not (self.budget.exhausted() or (fd is not None and self.budget.reserved(fd))):
            return False
        self.reserve_pauses += 1
        self._reserve.hit(open=self.budget.in_use(), limit=self.budget.limit())
        self._pause(RESERVE_POLL_SECONDS)
        return True

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            if self._out_of_descriptors():
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM, …
                self.accept_errors += 1
                self._accept_failed.hit(error=_error_text(exc))
                self._pause(ACCEPT_RETRY_SECONDS)
                return
            self.budget.opened()
            if self._out_of_descriptors(conn.fileno()):
                self.refused["descriptors"] += 1
                self._refuse(conn)
                return
            if len(self.connections) >= self.max_connections:
                self.refused["max_connections"] += 1
                self._refusing.hit()
                self._refuse(conn)
                continue
            self._serve(conn)

    def _refuse(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.send(_BUSY)
        conn.close()
        self.budget.closed()

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        protocol = _Connection(self, self.factory())
        self.connections.add(protocol)
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: protocol, conn))
        self._setups.add(task)
        task.add_done_callback(lambda t: self._set_up(t, protocol, conn))

    def _set_up(self, task: asyncio.Task[Any], protocol: _Connection, conn: socket.socket) -> None:
        self._setups.discard(task)
        failed = task.cancelled() or task.exception() is not None
        if failed and not protocol.made:  # no transport: nothing will call connection_lost
            conn.close()
            self.release(protocol)

    def release(self, protocol: _Connection) -> None:
        if protocol in self.connections:
            self.connections.discard(protocol)
            self.budget.closed()

    def counters(self) -> ListenerCounters:
        return ListenerCounters(
            len(self.connections),
            tuple(self.refused.items()),
            tuple(self.timeouts.items()),
            self.accept_errors,
            self.reserve_pauses,
        )

    def close(self) -> None:
        """Stops accepting (the connections are aiohttp's to close)."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for sock in self.sockets:
            if not self._paused:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []
        self._paused = True
        for task in self._setups:
            task.cancel()
        for throttled in (self._accept_failed, self._refusing, self._reserve):
            throttled.close()


# -- the scrape --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
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


def _listener_families(snap: _Snapshot) -> Iterator[Metric]:
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


_SWITCH = _SwitchInterval()


def _render(snap: _Snapshot, openmetrics: bool, process: Any) -> bytes:
    """The exposition of a snapshot: runs in the exporter's build thread."""
    from prometheus_client import exposition as text_format
    from prometheus_client.openmetrics import exposition as om_format

    from agent.metrics.collectors import agent_families, container_families

    metrics = [
        *container_families(snap.containers),
        *agent_families(snap.agent),
        *_listener_families(snap),
        *process.collect(),
    ]
    if openmetrics:
        return bytes(om_format.generate_latest(_Families(metrics)))
    return bytes(text_format.generate_latest(_Families(metrics)))


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
        self._runner: web.AppRunner | None = None
        self.listener: _Listener | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: dict[bool, asyncio.Future[bytes]] = {}  # per format: not yet copied
        self._builds: set[asyncio.Task[None]] = set()
        self._last_end = 0.0
        self.last_build_seconds = 0.0
        self._server_errors: _Throttled | None = None
        self.scrapes = 0
        self.builds = 0

    def bind(self, state: AgentState) -> None:
        from prometheus_client import ProcessCollector

        from agent.metrics.collectors import AgentCollector, ContainerCollector

        self._state = state
        self._containers = ContainerCollector(state, self.config.container_labels)
        self._agent = AgentCollector(state)
        self._process = ProcessCollector(registry=None)

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._server_errors = _Throttled("http_request_failed", exporter=self.name)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.config.idle_timeout_seconds,
            shutdown_timeout=SHUTDOWN_SECONDS,
            logger=_server_logger(self.name, self._server_errors),
        )
        await self._runner.setup()
        assert self._runner.server is not None
        host, _, port = self.config.listen.rpartition(":")
        self.listener = _Listener(self.name, self._runner.server, self.config)
        try:
            await self.listener.start(host.strip("[]") or None, int(port))
        except OSError as exc:
            self.listener = None
            await self._runner.cleanup()
            self._runner = None
            raise OSError(
                f"prometheus exporter cannot listen on {self.config.listen}: {exc.strerror or exc}"
            ) from exc
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"metrics-{self.name}")
        self._lock = asyncio.Lock()

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from prometheus_client import exposition as text_format
        from prometheus_client.openmetrics import exposition as om_format

        self.scrapes += 1
        openmetrics = "application/openmetrics-text" in request.headers.get("Accept", "")
        body = await self.exposition(openmetrics)
        ctype = om_format.CONTENT_TYPE_LATEST if openmetrics else text_format.CONTENT_TYPE_LATEST
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def exposition(self, openmetrics: bool = False) -> bytes:
        """The /metrics body, from a copy of the state taken after this call began."""
        pending = self._pending.get(openmetrics)
        if pending is None:
            pending = self._pending[openmetrics] = asyncio.get_running_loop().create_future()
            pending.add_done_callback(_retrieved)
            task = asyncio.create_task(self._build(openmetrics, pending), name="metrics-build")
            self._builds.add(task)
            task.add_done_callback(self._builds.discard)
        return await asyncio.shield(pending)

    async def _build(self, openmetrics: bool, done: asyncio.Future[bytes]) -> None:
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
                with _SWITCH.short():
                    body = await asyncio.get_running_loop().run_in_executor(
                        self._executor, _render, snap, openmetrics, self._process
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

    def _snapshot(self, t0: float) -> _Snapshot:
        """On the event loop: the copy a build works from (``t0``: when it began)."""
        if self._containers is None or self._agent is None or self.listener is None:
            raise RuntimeError("the prometheus exporter is not bound to the agent's state")
        containers = self._containers.snapshot()
        agent = self._agent.snapshot()
        listener = self.listener.counters()
        return _Snapshot(
            self.name,
            containers,
            agent,
            listener,
            time.monotonic() - t0,
            self.last_build_seconds,
        )

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
        if self.listener is not None:
            self.listener.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
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
        return Health(self._runner is not None, "" if self._runner else "not serving")


def _retrieved(future: asyncio.Future[bytes]) -> None:
    """A failed build with no scraper left to see it is not "never retrieved"."""
    if not future.cancelled():
        future.exception()
