"""The one wrapper around aiodocker: every Engine API call the agent makes goes through here.

aiodocker's log and stats helpers changed shape between versions, and its log iterator
drops the stdout/stderr distinction and decodes frame by frame; so log streams are read as
raw bytes and decoded by us: straight from the socket (``agent.httpstream``, a third of
the event loop less than through aiohttp) unless the engine is reached over TLS. The
aiodocker version is pinned in pyproject.toml.

The calls, all ``GET`` (``/vX.Y`` is the engine's own API version, read once from
``/version``): ``/version``, ``/vX.Y/info``, ``/vX.Y/containers/json``,
``/vX.Y/containers/{id}/json``, ``/vX.Y/containers/{id}/logs``,
``/vX.Y/containers/{id}/stats``, ``/vX.Y/events``. Nothing else: an engine behind a proxy
that allows only these (tests/readonly_proxy.py) serves every feature.

A ``tcp://`` engine is reached over TLS when ``engine.tls`` says so (``agent.engine.tls``:
the Docker CLI's ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` by default): one
``ssl.SSLContext`` for every call and every log stream; aiodocker's own TLS set-up (and
its reading of ``DOCKER_*`` variables) is never used for ``tcp://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
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
from agent.engine.tls import TlsConfig, TlsError, client_context

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


def _translate(exc: BaseException, what: str, tls: TlsConfig | None = None) -> EngineError:
    """``tls``: the engine is reached over TLS with these settings; a TLS failure then says
    what failed and with which settings, not only that the engine could not be reached."""
    if tls is not None and (problem := _tls_problem(exc)) is not None:
        return EngineError(f"{what}: {problem} (engine.tls: {tls.describe()})")
    answered = isinstance(exc, aiodocker.DockerError) and exc.status != _NO_CONNECTION
    if isinstance(exc, aiodocker.DockerError):
        error = status_error(what, exc.status, exc.message)
    else:
        error = EngineError(f"{what}: {type(exc).__name__}: {exc}")
    if tls is not None and not answered:
        note = f"over TLS: {tls.describe()}"
        if not tls.cert_file:
            # With TLS 1.3 an engine that wants a client certificate closes the connection
            # after the handshake: all the client sees is "Server disconnected".
            note += (
                "; no client certificate (engine.tls.cert_file, key_file): an engine run "
                "with --tlsverify closes the connection without one"
            )
        error = type(error)(f"{error} ({note})", error.status)
    return error


# aiodocker's status for "Cannot connect to Docker Engine via …" (no HTTP answer at all).
_NO_CONNECTION = 900


# How much of a log stream may wait unread before the socket stops being read (the engine
# then waits): for the socket reader and for aiohttp (TLS engines), whose default 64 KiB
# paused and resumed the socket on nearly every chunk of a busy stream (~8 % of the loop).
_READ_BUFSIZE = 1 << 20
# The API calls' pool over a unix socket or plain TCP (see ``_client``): connections at
# once, and how long an idle one is kept.
API_CONNECTIONS = 64
API_KEEPALIVE_SECONDS = 5.0


def _split_tcp(host: str, default_port: int) -> tuple[str, int]:
    """``tcp://host:port/…`` as (host, port); an IPv6 address without its brackets."""
    hostport = host.split("://", 1)[1].split("/", 1)[0]
    name, sep, port = hostport.rpartition(":")
    if sep and port.isdigit() and not name.endswith(":"):
        return name.strip("[]"), int(port)
    return hostport.strip("[]"), default_port


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def _uses_tls(host: str, tls: TlsConfig) -> bool:
    """TLS for ``tcp://`` when the settings ask for it; ``http://`` is always plain."""
    return host.startswith("tcp://") and tls.enabled


def _client(host: str, tls: TlsConfig) -> aiodocker.Docker:
    # Over a unix socket (and plain TCP) the log streams are read straight from sockets of
    # their own (``_plain_address``): the pool only carries the API calls and the event
    # stream. Bounded, with idle connections closed after a few seconds, so that the burst
    # of inspects of 1,000 containers starting does not leave 1,000 sockets open. Over TLS
    # every followed container holds one log stream in the pool: no limit there.
    if host.startswith("unix://"):
        connector = aiohttp.UnixConnector(
            host.removeprefix("unix://"),
            limit=API_CONNECTIONS,
            keepalive_timeout=API_KEEPALIVE_SECONDS,
        )
        session = aiohttp.ClientSession(connector=connector, read_bufsize=_READ_BUFSIZE)
        # "unix://localhost" is the URL base aiodocker itself uses with a unix connector.
        docker = aiodocker.Docker(url="unix://localhost", connector=connector, session=session)
        docker._connection_info = host  # error messages name the real socket
        return docker
    if host.startswith(("tcp://", "http://")):
        secure = _uses_tls(host, tls)
        try:
            context = client_context(tls) if secure else None
        except TlsError as exc:
            raise EngineError(str(exc)) from None
        name, port = _split_tcp(host, 2376 if secure else 2375)
        # ssl=False, not None: plain HTTP, whatever aiohttp's default for https would be.
        tcp = aiohttp.TCPConnector(
            limit=0 if secure else API_CONNECTIONS,
            keepalive_timeout=API_KEEPALIVE_SECONDS,
            ssl=context if context is not None else False,
        )
        session = aiohttp.ClientSession(connector=tcp, read_bufsize=_READ_BUFSIZE)
        url = f"{'https' if secure else 'http'}://{_url_host(name)}:{port}"
        docker = aiodocker.Docker(url=url, connector=tcp, session=session)
        docker._connection_info = host
        return docker
    return aiodocker.Docker(url=host)  # ssh:// and other schemes: aiodocker's own set-up


def _plain_address(host: str, tls: TlsConfig) -> tuple[str, int] | str | None:
    """Where to open a log stream without aiohttp: a unix socket's path, or a plain TCP
    (host, port); None over TLS and for other schemes."""
    if host.startswith("unix://"):
        return host.removeprefix("unix://")
    if host.startswith(("tcp://", "http://")) and not _uses_tls(host, tls):
        return _split_tcp(host, 2375)
    return None


def _tls_problem(exc: BaseException) -> str | None:
    """What went wrong in TLS, when ``exc`` (or what it was raised from) is a TLS error."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, aiohttp.ClientConnectorCertificateError):
            cert_error = cur.certificate_error
            detail = getattr(cert_error, "verify_message", None) or str(cert_error)
            return f"the engine's certificate was not accepted: {detail}"
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"the engine's certificate was not accepted: {cur.verify_message or cur}"
        if isinstance(cur, ssl.SSLError):
            return f"TLS failed: {cur.reason or cur.strerror or cur}"
        if isinstance(cur, aiohttp.ClientSSLError):
            inner = cur.__cause__ or cur.__context__
            if isinstance(inner, ssl.SSLError):
                cur = inner
                continue
            return f"TLS failed: {cur}"
        cur = cur.__cause__ or cur.__context__
    return None


class LogStream:
    """A container's log bytes as they come; ``read_parts()`` returns [] at the end.
    Transport failures are ``EngineError``s."""

    __slots__ = ("_in_place", "_read", "_what")

    def __init__(
        self,
        read_parts: Callable[[], Awaitable[list[bytes]]],
        what: str,
        in_place: Callable[[Callable[[list[bytes]], bool]], None] | None = None,
    ) -> None:
        self._read = read_parts
        self._what = what
        self._in_place = in_place

    def read_in_place(self, take: Callable[[list[bytes]], bool]) -> bool:
        """Hands what arrives while the reader waits to ``take`` where it is received
        (``HttpStream.read_in_place``); False: this stream cannot (aiohttp's)."""
        if self._in_place is None:
            return False
        self._in_place(take)
        return True

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

    def __init__(self, host: str, tls: TlsConfig | None = None) -> None:
        self.host = host
        # None: the Docker CLI's environment (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH).
        self.tls = tls if tls is not None else TlsConfig()
        self.secure = _uses_tls(host, self.tls)  # a tcp:// engine over TLS
        self._docker: aiodocker.Docker | None = None
        self.header_timeout = HEADER_TIMEOUT_SECONDS  # a logs request's answer, at most
        self.bad_events = 0  # event stream lines that were not a JSON object (skipped)

    @property
    def docker(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = _client(self.host, self.tls)
        return self._docker

    async def close(self) -> None:
        if self._docker is not None:
            with contextlib.suppress(*_TRANSPORT_ERRORS, aiodocker.DockerError):
                await self._docker.close()
                if not self._docker._owns_session:  # ours: see _client
                    await self._docker.session.close()
            self._docker = None

    def _error(self, exc: BaseException, what: str) -> EngineError:
        return _translate(exc, what, self.tls if self.secure else None)

    async def _get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        try:
            async with self.docker._query(path, params=params, timeout=_CALL_TIMEOUT) as resp:
                return orjson.loads(await resp.read())
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise self._error(exc, f"GET /{path}") from exc

    async def version(self) -> dict[str, Any]:
        """``GET /version``; also fixes the API version used for every later call (so that
        aiodocker does not ask ``/version`` again for it)."""
        try:
            async with self.docker._query(
                "version", versioned_api=False, timeout=_CALL_TIMEOUT
            ) as resp:
                answer = orjson.loads(await resp.read())
        except (*_TRANSPORT_ERRORS, aiodocker.DockerError) as exc:
            raise self._error(exc, "GET /version") from exc
        api = answer.get("ApiVersion") if isinstance(answer, dict) else None
        if self.docker.api_version == "auto" and isinstance(api, str) and api:
            self.docker.api_version = f"v{api}"
        return answer

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
        address = _plain_address(self.host, self.tls)
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
            raise self._error(exc, what) from exc
        try:
            yield LogStream(raw.read_parts, what, raw.read_in_place)
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
            raise self._error(exc, what) from exc
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
            raise self._error(exc, "GET /events") from exc
