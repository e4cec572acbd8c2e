"""A read-only proxy in front of the test engine's unix socket: it passes only the Engine
API calls the agent makes and refuses everything else with 403.

The calls it passes, all ``GET`` (``/v1.NN`` is the API version the engine announced):

    version   /version, /v1.NN/version
    info      /v1.NN/info
    list      /v1.NN/containers/json
    inspect   /v1.NN/containers/{id}/json
    logs      /v1.NN/containers/{id}/logs
    stats     /v1.NN/containers/{id}/stats
    events    /v1.NN/events

Every request of a connection is examined, kept-alive ones too (aiohttp sends several on
one connection, one after the other). A request with a body or an ``Upgrade`` is refused,
whatever its path. Each answer of the engine is passed back as it comes, streams too.

    proxy = ReadOnlyProxy(engine_socket, tmp_path / "ro.sock")
    await proxy.start()
    ...                 # proxy.host is the agent's engine.host
    proxy.passed        # [(call, method, target)] of every request passed
    proxy.refused       # [(method, target)] of every request refused
    await proxy.close() # cuts every connection, as a restarting proxy would
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import orjson

_V = r"/v1\.\d+"
_ID = r"[0-9A-Za-z][0-9A-Za-z_.-]*"  # a container's id (or name)
CALLS: dict[str, re.Pattern[str]] = {
    "version": re.compile(rf"(?:{_V})?/version"),
    "info": re.compile(rf"{_V}/info"),
    "list": re.compile(rf"{_V}/containers/json"),
    "inspect": re.compile(rf"{_V}/containers/{_ID}/json"),
    "logs": re.compile(rf"{_V}/containers/{_ID}/logs"),
    "stats": re.compile(rf"{_V}/containers/{_ID}/stats"),
    "events": re.compile(rf"{_V}/events"),
}
_HEAD_LIMIT = 64 << 10


def allowed(method: str, target: str, headers: dict[str, str]) -> str | None:
    """The call's name when the proxy passes the request, else None."""
    if method != "GET" or "upgrade" in headers or "transfer-encoding" in headers:
        return None
    if headers.get("content-length", "0").strip() not in ("", "0"):
        return None
    path = target.split("?", 1)[0]
    for name, pattern in CALLS.items():
        if pattern.fullmatch(path):
            return name
    return None


class ReadOnlyProxy:
    def __init__(self, engine_socket: str, path: str | Path) -> None:
        self.engine_socket = engine_socket
        self.path = str(path)
        self.passed: list[tuple[str, str, str]] = []
        self.refused: list[tuple[str, str]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def calls(self) -> set[str]:
        return {name for name, _, _ in self.passed}

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, self.path)

    async def close(self) -> None:
        """Stops listening and cuts every connection (a restart: ``start()`` again)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ReadOnlyProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pump: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return  # the client closed the connection (or sent no HTTP)
                if len(head) > _HEAD_LIMIT:
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    return
                method, target, _ = parts
                headers = {}
                for line in lines:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                call = allowed(method, target, headers)
                if call is None:
                    self.refused.append((method, target))
                    await _refuse(writer, method, target)
                    return
                self.passed.append((call, method, target))
                if upstream is None:
                    upstream = await asyncio.open_unix_connection(self.engine_socket)
                    pump = asyncio.create_task(_pipe(upstream[0], writer))
                upstream[1].write(head)
                await upstream[1].drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            if upstream is not None:
                upstream[1].close()
            writer.close()


async def _refuse(writer: asyncio.StreamWriter, method: str, target: str) -> None:
    body = orjson.dumps({"message": f"read-only proxy: {method} {target} is not allowed"})
    writer.write(
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (len(body), b"" if method == "HEAD" else body)
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """The engine's answers to the client until the engine closes; then the client's
    connection is closed too."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            dst.close()
