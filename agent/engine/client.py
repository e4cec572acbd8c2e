"""The one wrapper around aiodocker: every Engine API call the agent makes goes through here.

aiodocker's log and stats helpers changed shape between versions, and its log iterator
drops the stdout/stderr distinction and decodes frame by frame; so log streams are read as
raw bytes and decoded by us: straight from the socket (``agent.httpstream``, a third of
the event loop less than through aiohttp) unless the engine is reached over TLS. The
aiodocker version is pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiodocker
import aiohttp
import orjson
import structlog

from agent.engine.httpstream import (
    HEADER_TIMEOUT_SECONDS,
    HttpStatusError,
    HttpStreamError,
    open_stream,
)

log = structlog.get_logger("agent.engine")

DEFAULT_HOST = "unix:///var/run/docker.sock"

# Long-lived streams (logs, events) must not time out while idle.
_STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
_CALL_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_connect=10)


class EngineError(Exception):
    """The engine cannot be reached or answered a call with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(EngineError):
    """The container (or other object) does not exist (anymore)."""


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def status_error(what: str, status: int, message: str) -> EngineError:
    """The engine's error answer as ours: 404, and 409 on logs ("dead or marked for
    removal"), mean the container is gone for our purposes."""
    cls = NotFound if status in (404, 409) else EngineError
    return cls(f"{what}: {status} {message}", status)


def _translate(exc: BaseException, what: str) -> EngineError:
    if isinstance(exc, aiodocker.DockerError):
        return status_error(what, exc.status, exc.message)
    return EngineError(f"{what}: {type(exc).__name__}: {exc}")


# How much of a log stream may wait unread before the socket stops being read (the engine
# then waits): for the socket reader and for aiohttp (TLS engines), whose default 64 KiB
# paused and resumed the socket on nearly every chunk of a busy stream (~8 % of the loop).
_READ_BUFSIZE = 1 << 20


def _client(host: str) -> aiodocker.Docker:
    # No connection limit: every followed container holds one log stream open, and
    # aiohttp's default of 100 would leave inspect and stats calls waiting behind them.
    if host.startswith("unix://"):
        connector = aiohttp.UnixConnector(host.removeprefix("unix://"), limit=0)
        session = aiohttp.ClientSession(connector=connector, read_bufsize=_READ_BUFSIZE)
        # "unix://localhost" is the URL base aiodocker itself uses with a unix connector.
        docker = aiodocker.Docker(url="unix://localhost", connector=connector, session=session)
        docker._connection_info = host  # error messages name the real socket
        return docker
    if host.startswith(("tcp://", "http://")) and os.environ.get("DOCKER_TLS_VERIFY") != "1":
        tcp = aiohttp.TCPConnector(limit=0)
        session = aiohttp.ClientSession(connector=tcp, read_bufsize=_READ_BUFSIZE)
        url = "http://" + host.split("://", 1)[1]
        return aiodocker.Docker(url=url, connector=tcp, session=session)
    return aiodocker.Docker(url=host)  # TLS and other schemes: aiodocker's own set-up


def _plain_address(host: str) -> tuple[str, int] | str | None:
    """Where to open a log stream without aiohttp: a unix socket's path, or a plain TCP
    (host, port); None for TLS (``DOCKER_TLS_VERIFY``) and other schemes."""
    if host.startswith("unix://"):
        return host.removeprefix("unix://")
    if host.startswith(("tcp://", "http://")) and os.environ.get("DOCKER_TLS_VERIFY") != "1":
        hostport = host.split("://", 1)[1].split("/", 1)[0]
        name, sep, port = hostport.rpartition(":")
        if sep and port.isdigit():
            return name.strip("[]"), int(port)
        return hostport.strip("[]"), 2375
    return None


class LogStream:
    """A container's log bytes as they come; ``read_parts()`` returns [] at the end.
    Transport failures are ``EngineError``s."""

    __slots__ = ("_read", "_what")

    def __init__(self, read_parts: Callable[[], Awaitable[list[bytes]]], what: str) -> None:
        self._read = read_parts
        self._what = what

    async def read_parts(self) -> list[bytes]:
        """The next bytes, as the pieces they came in (one per message from the engine's
        own HTTP chunks, when read from the socket)."""
        try:
            return await self._read()
        except (HttpStreamError, OSError, asyncio.IncompleteReadError) as exc:
            raise EngineError(f"{self._what}: {exc}") from exc
        except Exception as exc:
            # aiohttp's payload errors when the engine goes away mid-stream.
            if type(exc).__module__.startswith("aiohttp"):
                raise EngineError(f"{self._what}: {exc}") from exc
            raise


class Engine:
    """A client of one Docker engine, shared by discovery and every reader."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._docker: aiodocker.Docker | None = None
        self.header_timeout = HEADER_TIMEOUT_SECONDS  # a logs request's answer, at most
        self.bad_events = 0  # event stream lines that were not a JSON object (skipped)

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = _client(self.host)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            with contextlib.suppress(*_TRANSPORT_ERRORS, aiodocker.DockerError):
                await self._docker.close()
                if not self._docker._owns_session:  # ours: see _client
                    await self._docker.session.close()
            self._docker = None

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            async with self.docker._query(path, params=params, timeout=_CALL_TIMEOUT) as resp:
                return orjson.loads(await resp.read())
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise _translate(exc, f"GET /{path}") from exc

    async def version(self) -> dict[str, Any]:
        """``GET /version``; also fixes the API version used for every later call."""
        try:
            async with self.docker._query(
                "version", versioned_api=False, timeout=_CALL_TIMEOUT
            ) as resp:
                return orjson.loads(await resp.read())
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise _translate(exc, "GET /version") from exc

    async def info(self) -> dict[str, Any]:
        return await self._get("info")

    async def list_containers(self, all: bool = False) -> list[dict[str, Any]]:
        return await self._get("containers/json", {"all": "1" if all else "0"})

    async def inspect(self, container_id: str) -> dict[str, Any]:
        return await self._get(f"containers/{container_id}/json")

    async def stats(self, container_id: str) -> dict[str, Any]:
        """One stats reading: ``one-shot`` skips the engine's one-second pre-sample wait."""
        return await self._get(f"containers/{container_id}/stats", {"stream": "0", "one-shot": "1"})

    @contextlib.asynccontextmanager
    async def logs(
        self,
        container_id: str,
        since: str | None = None,
        follow: bool = True,
        tail: int | None = None,
    ) -> AsyncIterator[LogStream]:
        """The raw logs stream of one container, with timestamps, both streams; ``tail``:
        only the last lines."""
        params = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "1" if follow else "0"}
        if since:
            params["since"] = since
        if tail is not None:
            params["tail"] = str(tail)
        what = f"GET /containers/{container_id[:12]}/logs"
        address = _plain_address(self.host)
        if address is None:  # TLS and other schemes: through aiodocker's session
            async with self._logs_aiohttp(container_id, params, what) as stream:
                yield stream
            return
        try:
            await self.docker._check_version()
            path = f"/{self.docker.api_version}/containers/{container_id}/logs"
            raw = await open_stream(
                address, path, params, limit=_READ_BUFSIZE, header_timeout=self.header_timeout
            )
        except HttpStatusError as exc:
            raise status_error(what, exc.status, exc.message) from exc
        except HttpStreamError as exc:
            raise EngineError(f"{what}: {exc}") from exc
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise _translate(exc, what) from exc
        try:
            yield LogStream(raw.read_parts, what)
        finally:
            raw.close()

    @contextlib.asynccontextmanager
    async def _logs_aiohttp(
        self, container_id: str, params: dict[str, str], what: str
    ) -> AsyncIterator[LogStream]:
        try:
            cm = self.docker._query(
                f"containers/{container_id}/logs", params=params, timeout=_STREAM_TIMEOUT
            )
            resp = await cm.__aenter__()
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise _translate(exc, what) from exc
        try:

            async def read_parts() -> list[bytes]:
                data = await resp.content.readany()
                return [data] if data else []

            yield LogStream(read_parts, what)
        finally:
            # Close rather than release: a followed stream never ends on its own.
            resp.close()
            with contextlib.suppress(*_TRANSPORT_ERRORS, aiodocker.DockerError):
                await cm.__aexit__(None, None, None)

    async def events(
        self, since: str | None = None, filters: Mapping[str, list[str]] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Decoded ``GET /events`` messages until the engine ends the stream."""
        params: dict[str, str] = {}
        if since:
            params["since"] = since
        if filters:
            params["filters"] = orjson.dumps(filters).decode()
        try:
            async with self.docker._query("events", params=params, timeout=_STREAM_TIMEOUT) as resp:
                buf = b""
                async for chunk in resp.content.iter_any():
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        try:
                            event = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            event = None
                        if not isinstance(event, dict):
                            self.bad_events += 1
                            if self.bad_events & (self.bad_events - 1) == 0:  # 1, 2, 4, …
                                log.warning(
                                    "engine_event_unreadable",
                                    line=line[:200].decode("utf-8", "replace"),
                                    count=self.bad_events,
                                )
                            continue
                        yield event
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise _translate(exc, "GET /events") from exc
