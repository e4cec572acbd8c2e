"""The prometheus exporter's listener: it cannot starve the agent.

At most ``max_connections`` connections are served (more are answered 503 and closed at
once), a client has ``header_timeout_seconds`` to send a request's head and an idle
kept-alive connection is closed after ``idle_timeout_seconds``, and the listener stops
accepting while the process has fewer than ``reserved_descriptors`` descriptors left under
its limit (log files and streams, checkpoints and exporters need them). It accepts
connections itself instead of through asyncio's server, whose failed ``accept()`` (EMFILE)
writes a traceback to stderr each time; here failures are counted and logged as one JSON
line per interval, and so are aiohttp's request errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from agent.eventloop import urgent
from agent.limits import FdBudget

if TYPE_CHECKING:
    from exporters.prometheus.config import PrometheusConfig

log = structlog.get_logger("exporters.prometheus")

BACKLOG = 128
ACCEPT_BURST = 32  # connections accepted per wake-up before the loop runs other work
ACCEPT_RETRY_SECONDS = 1.0  # accepting pauses this long after accept() failed
RESERVE_POLL_SECONDS = 0.5  # while paused for descriptors, checks again this often
LOG_INTERVAL_SECONDS = 10.0  # a repeating failure is logged at most once per interval
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n"
)


# -- logging without tracebacks ---------------------------------------------------------------


class Throttled:
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

    def __init__(self, throttled: Throttled) -> None:
        super().__init__(logging.WARNING)
        self.throttled = throttled

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        error = f"{type(exc).__name__}: {exc}" if exc is not None else ""
        self.throttled.hit(message=record.getMessage(), error=error)


def server_logger(name: str, throttled: Throttled) -> logging.Logger:
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


def _host_arg(host: str | None) -> str | bytes | None:
    """``listen``'s host as ``getaddrinfo`` takes it: an ASCII one (an address, ``localhost``)
    as bytes. Given a str, ``socket.getaddrinfo`` encodes it with the idna codec, which
    leaves an ASCII name as it is but whose import (``encodings.idna``, ``stringprep``) is
    ~110 kB of resident memory; a name that is not ASCII still goes through it."""
    if host is not None and host.isascii():
        return host.encode("ascii")
    return host


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's request handler behind the listener's timeouts.

    The header timer runs from the connection's start, and again from the first byte of
    each later request, until a blank line ends the request's head. aiohttp's keep-alive
    timer (``idle_timeout_seconds``) closes an idle connection between requests. The
    write timer runs while the transport's buffer is full (the client does not read).
    """

    def __init__(self, listener: Listener, inner: asyncio.Protocol) -> None:
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


class Listener:
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
        self._accept_failed = Throttled("listener_accept_failed", exporter=name)
        self._refusing = Throttled(
            "listener_connections_refused", exporter=name, max_connections=self.max_connections
        )
        self._reserve = Throttled(
            "listener_paused_for_descriptors", exporter=name, reserve=self.budget.reserve
        )

    async def start(self, host: str | None, port: int) -> None:
        infos = await self.loop.getaddrinfo(
            _host_arg(host), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
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
            urgent(self.loop, sock.fileno())  # a scrape waits for no gathered wake-up
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
        urgent(self.loop, conn.fileno())
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
