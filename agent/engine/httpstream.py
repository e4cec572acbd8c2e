"""A long HTTP/1.1 response body read straight from the socket: the engine's log streams.

The engine writes a followed log stream one message at a time, flushing each, so that every
log line arrives as its own HTTP chunk (``<size>\\r\\n<frame>\\r\\n``). aiohttp hands each
chunk to a Python ``StreamReader.feed_data`` call and joins them again on read: profiled,
that was a third of the agent's event loop when reading logs through the API. Here the
socket's bytes are taken as they come (one ``data_received`` per receive, ~30 KiB when
busy, not per chunk) and the chunked framing is removed for everything received at once:
in C when the extension is built (``agent/_speedups.c``), else with C-level ``split``,
``map`` and ``join``; data that itself holds ``\\r\\n`` (a TTY's lines) and the last
chunk take a sequential parser. Only ``GET`` and the responses the engine gives
(chunked, sized or closed at the end) are handled: it is not a general HTTP client.

Reading the socket only when the reader asks (``loop.sock_recv``) was measured too: fewer
receives, but the engine then blocks on a full socket more often and spends more CPU
(dockerd +13 %, the whole run 6 % slower), so the transport keeps draining the socket.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable
from urllib.parse import urlencode

import orjson
import structlog

from agent.eventloop import flowing
from agent.speedups import speedups

log = structlog.get_logger("agent.engine")

_CRLF = b"\r\n"
_HEAD_LIMIT = 64 << 10  # response headers larger than this are not the engine's
_ERROR_BODY_LIMIT = 64 << 10
# The largest chunk accepted. The engine sends one log message per chunk (16 KiB of line
# at most, or what a TTY container wrote at once); a larger size is not the engine's.
MAX_CHUNK_BYTES = 16 << 20
HEADER_TIMEOUT_SECONDS = 30.0  # the engine answers a logs request's headers at once
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HttpStreamError(Exception):
    """The connection failed or the response is not a well-formed HTTP/1.1 answer."""


class HttpStatusError(HttpStreamError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message


_RECV_BYTES = 256 << 10
_local = threading.local()


def _recv_buffer() -> memoryview:
    """This thread's receive buffer, shared by every stream read on its event loop: each
    receive is copied out at once (``buffer_updated``), so one is enough. A plain
    ``Protocol`` would have the transport allocate 256 KiB per receive (above glibc's mmap
    threshold: ~20 µs each, measured, against ~3 µs for receiving into this one)."""
    view = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(_RECV_BYTES))
    return view


class _Receiver(asyncio.BufferedProtocol):
    """Collects what the socket delivers; stops reading above ``limit`` unread bytes (the
    engine then waits), so that a reader held back by the pipeline holds little."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.transport: asyncio.Transport | None = None
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        # Takes what arrives while the reader waits, where it arrives (``HttpStream``).
        self.in_place: Callable[[bytes], bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _recv_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        flowing(nbytes)  # a flood: the loop must not gather its wake-ups
        self.data_received(_recv_buffer()[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is not None and self.in_place is not None and not waiter.done():
            try:
                if self.in_place(data):
                    return  # taken here: the reader sleeps on
            except Exception as exc:  # the reader takes it instead
                log.warning("log_read_in_place_failed", error=repr(exc))
        self.parts.append(data)
        self.size += len(data)
        if self.size >= self.limit and not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.eof = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> bytes:
        """Everything received since the last call; b"" once the peer closed."""
        while not self.parts and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        parts, self.parts, self.size = self.parts, [], 0
        if self._paused and self.transport is not None and not self.eof:
            self._paused = False
            self.transport.resume_reading()
        if not parts and self.error is not None:
            raise HttpStreamError(f"connection lost: {self.error}")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def dechunk(raw: bytes) -> tuple[list[bytes], int, bool]:
    """(the data of the complete chunks at the start of ``raw``, bytes consumed, whether the
    last chunk was seen). Raises HttpStreamError on a malformed size line."""
    if speedups is None:
        return _dechunk_py(raw)
    datas, consumed, unusual = speedups.dechunk(raw)  # the plain chunks, in C
    if not unusual:
        return datas, consumed, False
    more, used, last = _dechunk_each(raw[consumed:])
    return datas + more, consumed + used, last


def _dechunk_py(raw: bytes) -> tuple[list[bytes], int, bool]:
    """``dechunk`` without the extension: split at every CRLF and check the sizes in bulk
    (hex digits only, as ``_chunk_size`` takes them)."""
    pieces = raw.split(_CRLF)
    complete = pieces[:-1]  # each was followed by CRLF
    waiting = complete.pop() if len(complete) % 2 else None  # a size line, its data to come
    if complete and (waiting is None or _HEX.issuperset(waiting)):
        size_lines = complete[0::2]
        datas = complete[1::2]
        if all(size_lines) and _HEX.issuperset(b"".join(size_lines)):
            sizes = list(map(int, size_lines, itertools.repeat(16)))
            if 0 not in sizes and sizes == list(map(len, datas)):
                consumed = sum(map(len, complete)) + 2 * len(complete)
                return datas, consumed, False
    return _dechunk_each(raw)


def _dechunk_each(raw: bytes) -> tuple[list[bytes], int, bool]:
    """``dechunk`` one chunk at a time: data that holds CRLF, extensions, the last chunk."""
    out: list[bytes] = []
    pos = 0
    while True:
        nl = raw.find(_CRLF, pos)
        if nl < 0:
            if len(raw) - pos > 64:
                raise HttpStreamError("malformed chunked body: no chunk size line")
            return out, pos, False
        size = _chunk_size(raw[pos:nl])
        start = nl + 2
        if size == 0:
            # The last chunk; trailers (never sent by the engine) end with an empty line.
            end = raw.find(b"\r\n\r\n", nl)
            if end < 0:
                return out, pos, True
            return out, end + 4, True
        end = start + size
        if end + 2 > len(raw):
            return out, pos, False
        if raw[end : end + 2] != _CRLF:
            raise HttpStreamError("malformed chunked body: no CRLF after a chunk")
        out.append(raw[start:end])
        pos = end + 2


def _chunk_size(line: bytes) -> int:
    """A chunk size line's size (hex digits, then an optional ``;extension``). Anything
    else, a negative size among them, is a malformed response: never a loop."""
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 16 or not _HEX.issuperset(digits):
        raise HttpStreamError(f"malformed chunk size {digits[:20]!r}")
    size = int(digits, 16)
    if size > MAX_CHUNK_BYTES:
        raise HttpStreamError(f"chunk of {size} bytes: larger than {MAX_CHUNK_BYTES}")
    return size


def _chunk_need(raw: bytes) -> int:
    """How many bytes ``raw`` must hold before its first chunk is complete (0: unknown
    until more of the size line arrives)."""
    nl = raw.find(_CRLF)
    if nl < 0:
        return 0
    return nl + 2 + _chunk_size(raw[:nl]) + 2


class HttpStream:
    """One ``GET`` whose body is read as it arrives; ``read()`` until it returns b""."""

    def __init__(self, conn: _Receiver, rest: bytes, headers: dict[str, str]) -> None:
        self._conn = conn
        self._raw = rest
        self.headers = headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left = int(length) if length and length.isdigit() and not self._chunked else None
        self._done = False
        self._more: list[bytes] = []  # receives not yet joined to ``_raw``
        self._more_size = 0
        self._take: Callable[[list[bytes]], bool] | None = None

    def read_in_place(self, take: Callable[[list[bytes]], bool]) -> None:
        """From now on, while the reader waits in ``read_parts`` with nothing unread,
        whole chunks that arrive are handed to ``take`` where they are received (in the
        protocol, on the loop: no wake-up of the reader), when it takes them (True); else
        they wait for ``read_parts`` as before. For a followed log of a quiet container,
        one message (one chunk) now and then."""
        self._take = take
        self._conn.in_place = self._in_place

    def _in_place(self, data: bytes) -> bool:
        take = self._take
        if take is None or not self._chunked or self._raw or self._more or self._done:
            return False
        datas, consumed, last = dechunk(data)
        if last or consumed != len(data) or not datas:
            return False  # the body's end, or a chunk not whole yet: read_parts's
        return take(datas)

    async def read(self) -> bytes:
        """The next part of the body (at least one byte), b"" at its end. Raises
        HttpStreamError when the connection ends in the middle of the body."""
        parts = await self.read_parts()
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_parts(self) -> list[bytes]:
        """``read()`` as the pieces it came in: one per HTTP chunk of a chunked body (the
        engine sends one log message per chunk); [] at the end."""
        while not self._done:
            if self._chunked:
                if self._raw:
                    datas, consumed, last = dechunk(self._raw)
                    self._raw = self._raw[consumed:]
                    if last:
                        self._done = True
                    if datas:
                        return datas
                    if last:
                        break
            elif self._raw:
                data, self._raw = self._raw, b""
                if self._left is not None:
                    data = data[: self._left]
                    self._left -= len(data)
                    self._done = self._left <= 0
                return [data]
            elif self._left == 0:
                break
            more = await self._conn.recv()
            if not more:
                if self._chunked or self._left:
                    raise HttpStreamError("connection closed in the middle of the response")
                break  # a body delimited by the end of the connection
            if self._chunked and self._raw:
                # An incomplete chunk waits: gather receives until it can be whole, so that
                # a large chunk is joined once, not again at every receive.
                self._more.append(more)
                self._more_size += len(more)
                if len(self._raw) + self._more_size < _chunk_need(self._raw):
                    continue
                more = b"".join(self._more)
                self._more, self._more_size = [], 0
            self._raw = self._raw + more if self._raw else more
        self._done = True
        return []

    def close(self) -> None:
        self._conn.close()


def _request(host_header: str, path: str, params: dict[str, str]) -> bytes:
    query = f"?{urlencode(params)}" if params else ""
    return (
        f"GET {path}{query} HTTP/1.1\r\nHost: {host_header}\r\n"
        "User-Agent: container-agent\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def open_stream(
    address: tuple[str, int] | str,
    path: str,
    params: dict[str, str],
    limit: int = 1 << 20,
    connect_timeout: float = 10.0,
    header_timeout: float = HEADER_TIMEOUT_SECONDS,
) -> HttpStream:
    """Sends ``GET path?params`` to a unix socket (a path) or a TCP (host, port) and returns
    once the response's headers are in (within ``header_timeout``: an engine, or a proxy,
    that accepts and never answers must not hang a reader). A status other than 2xx raises
    HttpStatusError with the engine's message."""
    loop = asyncio.get_running_loop()
    conn = _Receiver(limit)
    try:
        async with asyncio.timeout(connect_timeout):
            if isinstance(address, str):
                await loop.create_unix_connection(lambda: conn, address)
                host_header = "localhost"
            else:
                await loop.create_connection(lambda: conn, *address)
                host_header = f"{address[0]}:{address[1]}"
    except TimeoutError:
        raise HttpStreamError(f"connecting: no answer within {connect_timeout} s") from None
    except OSError as exc:
        raise HttpStreamError(f"connecting: {exc.strerror or exc}") from exc
    assert conn.transport is not None
    try:
        conn.transport.write(_request(host_header, path, params))
        buf = b""
        try:
            async with asyncio.timeout(header_timeout):
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    more = await conn.recv()
                    if not more:
                        raise HttpStreamError("connection closed before the response")
                    buf += more
                    if len(buf) > _HEAD_LIMIT and buf.find(b"\r\n\r\n") < 0:
                        raise HttpStreamError("response headers too large")
        except TimeoutError:
            raise HttpStreamError(f"no response within {header_timeout} s") from None
        status_line, *lines = buf[:end].decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpStreamError(f"not an HTTP/1.1 response: {status_line[:60]!r}")
        status = int(parts[1])
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        stream = HttpStream(conn, buf[end + 4 :], headers)
        if not 200 <= status < 300:
            body = b""
            while len(body) < _ERROR_BODY_LIMIT and (more := await stream.read()):
                body += more
            raise HttpStatusError(status, _error_message(body, parts[2] if len(parts) > 2 else ""))
        return stream
    except BaseException:
        conn.close()
        raise


def _error_message(body: bytes, reason: str) -> str:
    """The engine's ``{"message": "..."}``, else the body's text, else the reason phrase."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return doc["message"]
    text = body.decode("utf-8", "replace").strip()
    return text[:200] or reason
