"""``/status`` and ``/tap``: the operator's view of a running agent, on the prometheus
exporter's listener (``container-agent status``, ``top`` and ``tap`` read them).

``/status`` is the JSON document of ``agent.status``, built on the event loop from plain
counters. ``/tap`` streams the records passing through the pipeline as NDJSON, one record
per line as the exporters receive it, filtered by the query: ``container`` (a regex on the
container's name), ``grep`` (a regex on the message, or an event's action), ``exporter``
(only what that exporter takes: its container filter and its route) and ``limit`` (the
stream ends after that many records). A watcher that reads too slowly loses its own copies,
never slows the pipeline: each loss is said in the stream as ``{"tap_dropped": N}`` and
counted in ``container_agent_tap_dropped_total``. Either endpoint can be turned off
(``status: false``, ``tap: false``): it then answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING

import orjson

from agent.record import Record
from agent.tap import Tap

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest
    from aiohttp.web_response import Response, StreamResponse

    from agent.state import AgentState

CHECK_SECONDS = 1.0  # a tap with nothing to send checks this often that its client is there


async def status(state: AgentState) -> Response:
    from aiohttp.web_response import Response

    return Response(body=orjson.dumps(state.status()), content_type="application/json")


def _bad(status: int, message: str) -> Response:
    from aiohttp.web_response import Response

    return Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


def _regex(request: BaseRequest, key: str) -> re.Pattern[str] | None:
    value = request.query.get(key)
    return None if value is None else re.compile(value)


def _takes(state: AgentState, name: str, batch: list[Record]) -> list[Record]:
    """What exporter ``name`` takes of ``batch``, looked up at each batch (a reload may
    replace or remove it)."""
    for runner in state.pipeline.runners:
        if runner.name == name:
            return runner.takes(batch)
    return []


def tap_request(state: AgentState, request: BaseRequest) -> tuple[Tap, int | None] | str:
    """The tap the query asks for and its record limit, or what is wrong with the query."""
    try:
        container, grep = _regex(request, "container"), _regex(request, "grep")
    except re.error as exc:
        return f"bad regex: {exc}"
    limit = None
    if "limit" in request.query:
        try:
            limit = int(request.query["limit"])
        except ValueError:
            limit = 0
        if limit < 1:
            return "limit: expected a positive integer"
    wants = None
    name = request.query.get("exporter")
    if name is not None:
        if not any(r.name == name for r in state.pipeline.runners):
            return f"no exporter named {name!r}"

        def wants(batch: list[Record]) -> list[Record]:
            return _takes(state, name, batch)

    return Tap(container=container, grep=grep, wants=wants), limit


async def tap(state: AgentState, request: BaseRequest) -> StreamResponse:
    from aiohttp.web_response import StreamResponse

    asked = tap_request(state, request)
    if isinstance(asked, str):
        return _bad(400, asked)
    watcher, limit = asked
    response = StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    hub = state.tap
    hub.subscribe(watcher)
    sent = 0
    try:
        while limit is None or sent < limit:
            try:
                lines, dropped = await asyncio.wait_for(watcher.take(), CHECK_SECONDS)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break  # the client left
                continue
            if limit is not None:
                lines = lines[: limit - sent]
            sent += len(lines)
            out = [b'{"tap_dropped":%d}\n' % dropped] if dropped else []
            out.extend(line + b"\n" for line in lines)
            await response.write(b"".join(out))
    except (ConnectionError, RuntimeError):
        pass  # the client left while we wrote
    finally:
        hub.unsubscribe(watcher)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write_eof()
    return response
