"""A /metrics answer in pieces (``exposition.Body``) and how aiohttp sends it
(``payload.BodyPayload``): the same bytes as one block, its length declared, nothing
for HEAD, and never more than about a piece waiting in the transport for a slow reader.
Served by aiohttp's own server on 127.0.0.1; no engine."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from exporters.prometheus.exposition import CHUNK_BYTES, Body, gzip_body, pieces
from exporters.prometheus.payload import BodyPayload

LINE = b'container_cpu_usage_seconds_total{id="/docker/abc",name="web-%d"} 12.5\n'


def parts(n: int) -> list[bytes]:
    return [LINE.replace(b"%d", str(i).encode()) for i in range(n)]


def test_pieces_keep_the_order_and_are_at_least_the_size_but_the_last() -> None:
    ps = parts(5_000)
    body = pieces(ps, size=1_000)
    assert body.join() == b"".join(ps)
    assert body.size == len(body.join())
    assert all(len(c) >= 1_000 for c in body.chunks[:-1])
    assert all(len(c) < 1_000 + len(LINE) + 8 for c in body.chunks)
    assert len(body.chunks[-1]) > 0
    assert pieces([]) == Body((), 0)
    assert pieces([b"", b""]) == Body((), 0)
    # the default is CHUNK_BYTES
    big = pieces(parts(50_000))
    assert len(big.chunks) > 1 and all(len(c) >= CHUNK_BYTES for c in big.chunks[:-1])


def test_gzip_in_pieces_is_one_member_of_the_whole() -> None:
    ps = parts(50_000)
    body = pieces(ps)
    gz = gzip_body(body)
    assert gz.size == len(gz.join())
    assert gzip.decompress(gz.join()) == b"".join(ps)
    assert len(gz.chunks) >= 1 and all(gz.chunks)
    assert gzip.decompress(gzip_body(pieces([])).join()) == b""


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Body], Any]]:
    """An aiohttp server on 127.0.0.1 answering ``/`` with the body given; yields a
    function that sets the body and returns (port, the buffer sizes seen)."""
    state: dict[str, Any] = {
        "body": Body((), 0),
        "headers": {},
        "small_sndbuf": False,
        "seen": [],
        "watchers": [],
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        if state["small_sndbuf"]:  # what the kernel takes stays small, as for a slow peer
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

        async def watch() -> None:
            while True:
                state["seen"].append(transport.get_write_buffer_size())
                await asyncio.sleep(0.001)

        watcher = asyncio.create_task(watch())
        state["watchers"].append(watcher)
        body = state["body"]
        return web.Response(body=BodyPayload(body, "text/plain"), headers=state["headers"])

    app = web.Application()
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    def set_body(
        body: Body, headers: dict[str, str] | None = None, small_sndbuf: bool = False
    ) -> tuple[int, list[int]]:
        state["body"], state["headers"], state["seen"] = body, headers or {}, []
        state["small_sndbuf"] = small_sndbuf
        return port, state["seen"]

    yield set_body
    for w in state["watchers"]:
        w.cancel()
    await runner.cleanup()


async def _request(port: int, method: str, slow: bool = False) -> tuple[bytes, bytes]:
    """The raw head and body of one request (HTTP/1.0: the body ends at close)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    if slow:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, f"{method} / HTTP/1.0\r\nHost: x\r\n\r\n".encode())
    data = bytearray()
    while True:
        got = await loop.sock_recv(sock, 4096 if slow else 1 << 20)
        if not got:
            break
        data += got
        if slow:
            await asyncio.sleep(0.0005)
    sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return head, body


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError(f"no Content-Length in {head!r}")


async def test_a_body_in_pieces_is_sent_whole_with_its_length(serve: Any) -> None:
    ps = parts(40_000)  # ~2.8 MB, ~44 pieces
    port, _ = serve(pieces(ps))
    head, body = await _request(port, "GET")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert body == b"".join(ps)
    assert _length(head) == len(body)

    gz = gzip_body(pieces(ps))
    port, _ = serve(gz, {"Content-Encoding": "gzip"})
    head, body = await _request(port, "GET")
    assert gzip.decompress(body) == b"".join(ps) and _length(head) == gz.size


async def test_head_gets_the_length_and_no_body(serve: Any) -> None:
    body = pieces(parts(10_000))
    port, _ = serve(body)
    head, got = await _request(port, "HEAD")
    assert got == b"" and _length(head) == body.size


async def test_a_slow_reader_never_has_the_whole_answer_waiting_in_the_transport(
    serve: Any,
) -> None:
    """One ``write`` of a 2.8 MB block leaves nearly all of it in the transport's buffer
    (the socket takes a few hundred kB); in pieces, each write waits for the buffer to
    drain below aiohttp's high-water mark first."""
    ps = parts(40_000)
    port, seen = serve(pieces(ps), small_sndbuf=True)
    _, body = await _request(port, "GET", slow=True)
    assert body == b"".join(ps)
    assert seen, "the watcher saw nothing"
    assert max(seen) <= 4 * CHUNK_BYTES, max(seen)
