"""A fault-injecting proxy in front of the test engine's unix socket.

Each connection's first request is read; when a fault matches its method and path, the
proxy answers in place of the engine (a status with the engine's error body), cuts the
engine's answer after some bytes, or accepts and never answers; otherwise the request goes
to the engine and the bytes are piped both ways (later requests on a kept-alive connection
pass unexamined: the agent reads every log stream on a connection of its own).

    proxy = FaultProxy(engine_socket, tmp_path / "proxy.sock")
    await proxy.start()
    proxy.add(Fault("GET", r"/containers/[0-9a-f]+/logs", status=500))
    ...
    proxy.clear()
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Fault:
    method: str
    path: str  # a regex searched in the request path (after the API version)
    status: int | None = None  # answer this status instead of the engine
    cut_after: int | None = None  # forward, then close the answer after this many bytes
    hang: bool = False  # accept, never answer
    times: int | None = None  # apply this many times, then pass (None: until cleared)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if method != self.method or not re.search(self.path, path):
            return False
        return self.times is None or self.hits < self.times


class FaultProxy:
    def __init__(self, engine_socket: str, path: str | Path) -> None:
        self.engine_socket = engine_socket
        self.path = str(path)
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every first request
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._client, self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target = head.split(b" ", 2)[:2]
        path = target.decode("latin-1")
        self.requests.append((method.decode(), path))
        fault = next((f for f in self.faults if f.matches(method.decode(), path)), None)
        if fault is not None:
            fault.hits += 1
            if fault.hang:
                await asyncio.sleep(3600)
                return
            if fault.status is not None:
                body = b'{"message":"injected fault"}'
                writer.write(
                    b"HTTP/1.1 %d Injected\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (fault.status, len(body), body)
                )
                await writer.drain()
                return
        up_reader, up_writer = await asyncio.open_unix_connection(self.engine_socket)
        try:
            up_writer.write(head)
            limit = fault.cut_after if fault is not None else None
            await asyncio.gather(_pipe(reader, up_writer, None), _pipe(up_reader, writer, limit))
        finally:
            up_writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
    """Copies ``src`` to ``dst`` until the end (or ``limit`` bytes), then closes ``dst``."""
    sent = 0
    try:
        while data := await src.read(65536):
            if limit is not None and sent + len(data) >= limit:
                dst.write(data[: limit - sent])
                await dst.drain()
                return
            dst.write(data)
            sent += len(data)
            await dst.drain()
    finally:
        with contextlib.suppress(Exception):
            dst.close()
