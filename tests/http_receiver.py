"""A scriptable HTTP backend for the http exporter's tests, on 127.0.0.1 only.

It records every request (headers, raw and decompressed body), answers from a script
(a queue of answers, then a default), and can stop listening and come back on the same
port to simulate a backend that refuses connections.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Got:
    """One request the receiver got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    wire_bytes: int  # Content-Length: the body as sent (compressed)
    body: bytes  # decompressed (aiohttp's server decodes Content-Encoding itself)
    at: float
    status: int = 0  # what the receiver answered

    def json(self) -> Any:
        return orjson.loads(self.body)

    def ndjson(self) -> list[Any]:
        return [orjson.loads(line) for line in self.body.splitlines() if line]


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[Got], Answer | None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bulk_items(got: Got, status_of: Callable[[dict[str, Any]], int] | None = None) -> Answer:
    """An Elasticsearch ``_bulk`` answer: one item per action/source pair of the request,
    each with the status ``status_of(source)`` (201 by default)."""
    lines = got.ndjson()
    items = []
    errors = False
    for action, source in zip(lines[0::2], lines[1::2], strict=True):
        op = next(iter(action))
        status = status_of(source) if status_of else 201
        item: dict[str, Any] = {"_index": action[op].get("_index"), "status": status}
        if status >= 300:
            errors = True
            item["error"] = {"type": "mapper_parsing_exception", "reason": f"status {status}"}
        items.append({op: item})
    body = orjson.dumps({"took": 1, "errors": errors, "items": items})
    return Answer(200, body, {"Content-Type": "application/json"})


class Receiver:
    def __init__(self, default: Responder | None = None) -> None:
        self.got: list[Got] = []
        self.script: collections.deque[Answer] = collections.deque()
        self.default = default
        self.port = free_port()
        self._runner: web.AppRunner | None = None
        self.delay = 0.0  # seconds before answering

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> list[Got]:
        return [g for g in self.got if 200 <= g.status < 300]

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        return self

    async def stop(self) -> None:
        """Stops listening and closes every connection: clients get connection errors."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # still gzip (a server that does not decode it itself)
            body = gzip.decompress(body)
        got = Got(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            request.content_length or 0,
            body,
            time.monotonic(),
        )
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = None
        if self.script:
            answer = self.script.popleft()
        elif self.default is not None:
            answer = self.default(got)
        if answer is None:
            answer = Answer(200, b"{}", {"Content-Type": "application/json"})
        got.status = answer.status
        self.got.append(got)
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
