"""The http exporter: batches of records POSTed to a backend in one of four formats.

``send`` returns once every record of the batch is accepted: answered with a 2xx, or
written to the dead-letter file after a 4xx the backend will never take. Until then it
retries, with capped exponential back-off and full jitter, 5xx answers, 429, 408, timeouts
and connection errors, and waits as long as ``Retry-After`` asks on 429 and 503. It never
raises for a backend failure: a batch is split into several requests, and raising would
make the pipeline send the requests already accepted again. While it retries, the
pipeline's queue fills and its ``when_full`` policy applies (back-pressure).

Batching: a batch from the pipeline (up to ~8k records) is encoded once and cut into
requests of at most ``batch.max_records`` records and ``batch.max_bytes`` bytes of body
before compression. When records trickle, a send that carried a single partial request
holds the pipeline's worker for the rest of ``batch.max_seconds`` (counted from when the
send began) so that the next request carries what arrived meanwhile: at most about one
request per ``max_seconds`` while the queue stays small. The hold ends early when the
queue holds ``max_records`` records, when ``flush()`` is called, or when the pipeline
stops accepting records (shutdown). Records are already delivered when the hold starts.

Secrets (bearer tokens, passwords, values of headers whose name looks sensitive, a
password in the url) are kept out of logs, metrics, ``target()`` and ``check-config``
output, and are scrubbed from the response excerpts the exporter logs and dead-letters.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.utils
import os
import re
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import orjson
import structlog
from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from yarl import URL

from agent import __version__
from agent.record import Record, format_timestamp_ns
from agent.retry import Backoff
from agent.section import Section
from exporters.base import Exporter, ExporterConfig, Health, register
from exporters.formats import Encoded, Encoder, make_encoder
from exporters.formats.elasticsearch import bulk_outcome
from exporters.formats.loki import DEFAULT_LABELS, check_label_field

log = structlog.get_logger("exporters.http")

MASK = "**********"
# Header names whose values are treated as secrets (masked, scrubbed, never logged).
SENSITIVE_HEADER = re.compile(r"auth|token|secret|passw|cookie|api[-_]?key|signature", re.I)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXCERPT = 512  # characters of a response body kept in logs and dead letters


class BatchConfig(Section):
    max_records: int = Field(1000, ge=1, description="Most records in one request.")
    max_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description="Most bytes in one request body, before compression (a single larger "
        "record still goes, alone).",
    )
    max_seconds: float = Field(
        1.0,
        ge=0,
        description="While records trickle, the longest a record waits for others to share "
        "its request (0: send at once).",
    )


class RetryConfig(Section):
    initial_backoff_seconds: float = Field(
        0.5, gt=0, description="Back-off ceiling after the first failure (doubles each retry)."
    )
    max_backoff_seconds: float = Field(
        30.0, gt=0, description="Cap of the back-off (full jitter) between retries."
    )
    max_retry_after_seconds: float = Field(
        300.0,
        ge=0,
        description="Longest wait a `Retry-After` header (429, 503) is honoured for.",
    )


class BasicAuthConfig(Section):
    user: str | None = Field(None, description="User name for HTTP basic auth.")
    password: SecretStr | None = Field(None, description="Its password (prefer `password_env`).")
    password_env: str | None = Field(None, description="Environment variable holding the password.")


class AuthConfig(Section):
    bearer_token: SecretStr | None = Field(
        None, description="Sends `Authorization: Bearer <token>` (prefer `bearer_token_env`)."
    )
    bearer_token_env: str | None = Field(
        None, description="Environment variable holding the bearer token."
    )
    basic: BasicAuthConfig = Field(
        default_factory=BasicAuthConfig, description="HTTP basic auth (set `user` to use it)."
    )

    @model_validator(mode="after")
    def _one_method(self) -> AuthConfig:
        bearer = self.bearer_token is not None or self.bearer_token_env is not None
        if self.bearer_token is not None and self.bearer_token_env is not None:
            raise ValueError("set bearer_token or bearer_token_env, not both")
        basic = self.basic
        if basic.user is None and (basic.password is not None or basic.password_env is not None):
            raise ValueError("basic: a password needs a user")
        if basic.user is not None:
            if bearer:
                raise ValueError("set a bearer token or basic auth, not both")
            if (basic.password is None) == (basic.password_env is None):
                raise ValueError("basic: set exactly one of password and password_env")
        return self


class TlsConfig(Section):
    verify: bool = Field(True, description="Verify the server's certificate and host name.")
    ca_file: str | None = Field(
        None, description="PEM bundle of CAs to trust instead of the system's."
    )


class LokiConfig(Section):
    labels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LABELS),
        description="Record fields that become stream labels (`container_name`, "
        "`container_id`, `image`, `host`, `project`, `service`, `stream`, `kind`, or "
        "`label.<container label>`); keep them low-cardinality. Default: `container_name`, "
        "`stream`, `host`, `project`, `service`.",
    )
    line_format: Literal["message", "json"] = Field(
        "message",
        description="Log line of a log record: its message, or the whole record as JSON "
        "(events and stats are always JSON).",
    )

    @field_validator("labels")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return [check_label_field(v) for v in value]


class ElasticsearchConfig(Section):
    index: str = Field(
        "container-logs-%Y.%m.%d",
        description="Index or data stream; strftime fields take each record's timestamp (UTC).",
    )
    action: Literal["create", "index"] = Field(
        "create", description="Bulk action (data streams take only `create`)."
    )
    pipeline: str | None = Field(None, description="Ingest pipeline (`?pipeline=`).")


class OtlpConfig(Section):
    container_labels: list[str] = Field(
        default_factory=list,
        description="Container labels to add as resource attributes `container.label.<key>`.",
    )


class HttpConfig(ExporterConfig):
    type: Literal["http"] = Field(description="POST records to an HTTP backend.")
    url: str = Field(
        description="Endpoint. Without a path, the format's is used: `/loki/api/v1/push`, "
        "`/_bulk`, `/v1/logs`."
    )
    format: Literal["ndjson", "loki", "elasticsearch", "otlp"] = Field(
        "ndjson", description="Request body: NDJSON records, Loki push, `_bulk`, OTLP/JSON logs."
    )
    compression: Literal["gzip", "none"] = Field(
        "gzip", description="Request body compression (`Content-Encoding`)."
    )
    compression_level: int = Field(
        1, ge=1, le=9, description="gzip level: 1 is fastest, 9 smallest."
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="Request size and time.")
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Retries (forever).")
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra request headers; `${VAR}` in a value is replaced by the environment "
        "variable (values of auth/token/key-like headers are masked in `check-config`).",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS for `https://` urls.")
    timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one request.")
    dead_letter_path: str | None = Field(
        None,
        description="NDJSON file for records a backend rejects for good (4xx); default "
        "`./var/dead-letter/<exporter name>.ndjson`.",
    )
    loki: LokiConfig = Field(default_factory=LokiConfig, description="`format: loki` options.")
    elasticsearch: ElasticsearchConfig = Field(
        default_factory=ElasticsearchConfig, description="`format: elasticsearch` options."
    )
    otlp: OtlpConfig = Field(default_factory=OtlpConfig, description="`format: otlp` options.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = URL(value)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a url: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected http://host[:port][/path] or https://…")
        return value

    @model_validator(mode="after")
    def _no_double_auth(self) -> HttpConfig:
        auth = self.auth
        configured = (
            auth.bearer_token is not None
            or auth.bearer_token_env is not None
            or auth.basic.user is not None
        )
        if URL(self.url).user is not None and configured:
            raise ValueError("credentials in the url and in auth: use one")
        if configured and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError("an Authorization header and auth: use one")
        return self

    @field_serializer("url")
    def _mask_url(self, value: str) -> str:
        return masked_url(value)

    @field_serializer("headers")
    def _mask_headers(self, value: dict[str, str]) -> dict[str, str]:
        return {k: MASK if SENSITIVE_HEADER.search(k) else v for k, v in value.items()}


def masked_url(value: str | URL) -> str:
    url = URL(value) if isinstance(value, str) else value
    if url.password is not None:
        url = url.with_password(MASK)
    return str(url)


def expand_env(value: str, what: str) -> str:
    """Replaces every ``${VAR}`` in ``value``; an unset variable is an error naming it."""

    def one(match: re.Match[str]) -> str:
        found = os.environ.get(match[1])
        if found is None:
            raise ValueError(f"{what}: environment variable {match[1]} is not set")
        return found

    return _ENV_REF.sub(one, value)


def _env_secret(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"{what}: environment variable {name} is not set or empty")
    return value


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


try:  # ISA-L's deflate: the same gzip, 4-5x faster than zlib's at the same ratio
    from isal import isal_zlib as _fast_zlib
except ImportError:  # pragma: no cover - depends on the installation
    _fast_zlib = None


def gzip_bytes(body: bytes, level: int, fast: bool = True) -> bytes:
    """``body`` as one gzip member: with ISA-L when installed (``isal``; its levels 1-3
    stand for zlib's 1-3, 4-6 and 7-9), else with zlib."""
    if fast and _fast_zlib is not None:
        c = _fast_zlib.compressobj((level + 2) // 3, _fast_zlib.DEFLATED, 31)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(body) + c.flush()


@dataclass
class _Answer:
    status: int | None  # None: no HTTP answer (connection error, timeout)
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""
    location: str | None = None


_RETRY_STATUS = frozenset({408, 429})


@register
class HttpExporter(Exporter):
    type_name = "http"
    config_class = HttpConfig
    config: HttpConfig

    def __init__(self, name: str, config: HttpConfig) -> None:
        super().__init__(name, config)
        self.encoder: Encoder = make_encoder(config)
        self.url = self._endpoint()
        self.dead_letter_path = Path(config.dead_letter_path or f"./var/dead-letter/{name}.ndjson")
        self._backoff = Backoff(
            config.retry.initial_backoff_seconds, config.retry.max_backoff_seconds
        )
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {}
        self._secrets: list[str] = []
        self._failing = ""
        self._failing_since = 0.0
        self._wake = asyncio.Event()
        self._backlog: Callable[[], int] | None = None
        self._in_send = 0  # records of the batch being sent
        self._accepting: Callable[[], bool] = lambda: True
        # Counters (read by tests, benchmarks, and whoever wants to export them).
        self.requests = 0
        self.retries = 0
        self.records_sent = 0
        self.bytes_sent = 0
        self.dead_lettered_records = 0
        self.dead_lettered_batches = 0
        self.last_status: int | None = None

    # -- set-up ------------------------------------------------------------------------------

    def _endpoint(self) -> URL:
        url = URL(self.config.url)
        if url.user is not None:
            url = url.with_user(None)  # the credentials go into an Authorization header
        if url.path in ("", "/") and self.encoder.default_path:
            url = url.with_path(self.encoder.default_path)
        if self.config.format == "elasticsearch" and self.config.elasticsearch.pipeline:
            url = url.update_query(pipeline=self.config.elasticsearch.pipeline)
        return url

    def bind(self, state: Any) -> None:
        """Finds this exporter's queue in the pipeline, to end a linger when it fills."""
        pipeline = getattr(state, "pipeline", None)
        mine = [r for r in getattr(pipeline, "runners", ()) if getattr(r, "exporter", None) is self]
        queue = getattr(mine[0], "queue", None) if mine else None
        if queue is None or not hasattr(queue, "size"):
            return  # an unknown pipeline: no linger
        buffer = getattr(mine[0], "buffer", None)
        if buffer is not None and hasattr(buffer, "records"):
            # A disk buffer's count includes the batch being sent (uncommitted).
            self._backlog = lambda: int(queue.size) + max(0, buffer.records - self._in_send)
        else:
            self._backlog = lambda: int(queue.size)
        self._accepting = lambda: bool(getattr(pipeline, "accepting", True))

    def _build_headers(self) -> dict[str, str]:
        cfg = self.config
        headers = {"User-Agent": f"container-agent/{__version__}"}
        headers["Content-Type"] = self.encoder.content_type
        if cfg.compression == "gzip":
            headers["Content-Encoding"] = "gzip"
        secrets: list[str] = []
        for key, raw in cfg.headers.items():
            value = expand_env(raw, f"exporters.{self.name}.headers.{key}")
            headers[key] = value
            if SENSITIVE_HEADER.search(key):
                secrets.append(value)
        auth = cfg.auth
        token = None
        if auth.bearer_token is not None:
            token = auth.bearer_token.get_secret_value()
        elif auth.bearer_token_env is not None:
            token = _env_secret(auth.bearer_token_env, f"exporters.{self.name}.auth")
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            secrets.append(token)
        user, password = None, None
        if auth.basic.user is not None:
            user = auth.basic.user
            if auth.basic.password is not None:
                password = auth.basic.password.get_secret_value()
            else:
                assert auth.basic.password_env is not None
                password = _env_secret(auth.basic.password_env, f"exporters.{self.name}.auth")
        else:
            url = URL(cfg.url)
            if url.user is not None:
                user, password = url.user, url.password or ""
        if user is not None:
            creds = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {creds}"
            secrets += [s for s in (password, creds) if s]
        self._secrets = sorted(set(secrets), key=len, reverse=True)
        return headers

    def _ssl(self) -> ssl.SSLContext | bool:
        tls = self.config.tls
        if self.url.scheme != "https":
            return True
        if not tls.verify:
            return False
        try:
            return ssl.create_default_context(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"exporters.{self.name}.tls.ca_file: cannot load {tls.ca_file}: {exc}"
            ) from None

    async def start(self) -> None:
        self._headers = self._build_headers()
        connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=4)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            headers=self._headers,
            auto_decompress=True,
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        began = time.monotonic()
        self._in_send = len(batch)
        cfg = self.config.batch
        encoded = self.encoder.encode(batch)
        runs = encoded.split(cfg.max_records, cfg.max_bytes)
        async with contextlib.aclosing(self._payloads(encoded, runs)) as payloads:
            for run in runs:
                await self._deliver(encoded, run, await anext(payloads))
        if len(runs) == 1 and len(batch) < cfg.max_records:
            await self._linger(began)

    async def _payloads(self, encoded: Encoded, runs: list[range]) -> AsyncIterator[bytes]:
        """Compressed bodies of ``runs`` in order, each one prepared while the previous
        request is in flight."""
        ahead: asyncio.Task[bytes] | None = None
        try:
            for i in range(len(runs)):
                current = ahead or asyncio.ensure_future(self._body(encoded, runs[i]))
                ahead = None
                if i + 1 < len(runs):
                    ahead = asyncio.ensure_future(self._body(encoded, runs[i + 1]))
                yield await current
        finally:
            if ahead is not None:
                ahead.cancel()

    async def _body(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        body = self.encoder.assemble(encoded, indices)
        if self.config.compression != "gzip":
            return body
        # gzip level 1 takes a few ms per MiB: on the loop it costs less CPU than a thread
        # hop (and on 2 cores there is rarely a core to spare); only huge bodies go out.
        if len(body) > 4 * 1024 * 1024:
            return await asyncio.to_thread(self._gzip, body)
        return self._gzip(body)

    def _gzip(self, body: bytes) -> bytes:
        return gzip_bytes(body, self.config.compression_level)

    async def _post(self, payload: bytes) -> _Answer:
        if self._session is None:
            await self.start()
        assert self._session is not None
        self.requests += 1
        try:
            async with self._session.post(self.url, data=payload, allow_redirects=False) as resp:
                body = await resp.read()
                self.last_status = resp.status
                return _Answer(
                    resp.status,
                    body,
                    resp.headers.get("Retry-After"),
                    location=resp.headers.get("Location"),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            return _Answer(None, error=self._scrub(f"{type(exc).__name__}: {text}"))

    async def _deliver(self, encoded: Encoded, indices: Sequence[int], payload: bytes) -> None:
        """Delivers the records at ``indices``: returns once each is accepted or
        dead-lettered; retries everything else forever."""
        todo: collections.deque[tuple[Sequence[int], bytes | None]] = collections.deque()
        todo.append((indices, payload))
        while todo:
            current, body = todo.popleft()
            if body is None:
                body = await self._body(encoded, current)
            attempt = 0
            while True:
                answer = await self._post(body)
                status = answer.status
                if status is not None and 200 <= status < 300:
                    retry = await self._accepted(encoded, current, answer, len(body))
                    if not retry:
                        self._recovered(attempt)
                        break
                    # Elasticsearch items answered 429/5xx: only those go again.
                    current = retry
                    body = await self._body(encoded, current)
                    reason = f"{len(retry)} bulk item(s) answered 429/5xx"
                    await self._wait(attempt, reason, len(current), None)
                    attempt += 1
                    continue
                if status is None or status in _RETRY_STATUS or status >= 500:
                    reason = answer.error or f"HTTP {status}: {self._excerpt(answer.body)}"
                    hint = answer.retry_after if status in (429, 503) else None
                    await self._wait(attempt, reason, len(current), hint)
                    attempt += 1
                    continue
                if status == 413 and len(current) > 1:
                    half = len(current) // 2
                    todo.appendleft((current[half:], None))
                    todo.appendleft((current[:half], None))
                    log.info(
                        "http_request_too_large",
                        exporter=self.name,
                        records=len(current),
                        bytes=len(body),
                        action="split in two",
                    )
                    break
                # Any other answer (4xx, or a redirect, not followed): never taken. Park it.
                excerpt = self._excerpt(answer.body)
                if answer.location:
                    excerpt = self._scrub(f"redirected to {answer.location}")
                self._set_failing(f"HTTP {status} from {self.target()}: {excerpt}")
                await self._dead_letter(
                    [(encoded.records[i], status, excerpt) for i in current], batch=True
                )
                break

    async def _accepted(
        self, encoded: Encoded, indices: Sequence[int], answer: _Answer, size: int
    ) -> list[int]:
        """Books a 2xx; for ``_bulk`` reads the items: returns the indices to send again
        and dead-letters the rejected ones."""
        self.bytes_sent += size
        if self.config.format != "elasticsearch":
            self.records_sent += len(indices)
            return []
        outcome = bulk_outcome(answer.body, indices)
        if outcome is None:
            log.warning(
                "http_bulk_answer_unreadable",
                exporter=self.name,
                status=answer.status,
                response=self._excerpt(answer.body),
                records=len(indices),
            )
            self.records_sent += len(indices)
            return []
        retry, dead = outcome
        self.records_sent += len(indices) - len(retry) - len(dead)
        if dead:
            items = [(encoded.records[i], st, self._scrub(err)[:_EXCERPT]) for i, st, err in dead]
            await self._dead_letter(items, batch=False)
        return retry

    async def _wait(self, attempt: int, reason: str, records: int, retry_after: str | None) -> None:
        """Sleeps before retry number ``attempt + 1``; logs on attempts 1, 2, 4, 8, …"""
        self.retries += 1
        delay = self._backoff.delay(attempt)
        hinted = retry_after_seconds(retry_after)
        if hinted is not None:
            delay = min(hinted, self.config.retry.max_retry_after_seconds)
        self._set_failing(f"{reason} (from {self.target()}, retrying)")
        n = attempt + 1
        if n & (n - 1) == 0:
            log.warning(
                "http_send_failed",
                exporter=self.name,
                url=self.target(),
                error=reason,
                records=records,
                attempt=n,
                retry_in=round(delay, 3),
                retry_after=retry_after if hinted is not None else None,
            )
        await asyncio.sleep(delay)

    def _set_failing(self, reason: str) -> None:
        if not self._failing:
            self._failing_since = time.monotonic()
        self._failing = reason

    def _recovered(self, attempts: int) -> None:
        if self._failing and attempts:
            log.info(
                "http_recovered",
                exporter=self.name,
                attempts=attempts,
                failing_seconds=round(time.monotonic() - self._failing_since, 3),
            )
        self._failing = ""

    async def _linger(self, began: float) -> None:
        """Holds the worker until ``began + max_seconds`` while the queue stays small."""
        backlog = self._backlog
        if backlog is None or self.config.batch.max_seconds <= 0:
            return
        self._wake.clear()
        limit = self.config.batch.max_records
        deadline = began + self.config.batch.max_seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._wake.is_set() or backlog() >= limit or not self._accepting():
                return
            await asyncio.sleep(min(left, 0.02))

    # -- dead letters ------------------------------------------------------------------------

    async def _dead_letter(self, items: list[tuple[Record, int | None, str]], batch: bool) -> None:
        """Appends records with why they were rejected; retries the write until it works
        (the records count as accepted only once they are on disk)."""
        now = format_timestamp_ns(time.time_ns())
        url = self.target()
        lines = []
        for rec, status, error in items:
            info = {"time": now, "exporter": self.name, "url": url, "status": status}
            info["response"] = error
            lines.append(rec.json()[:-1] + b',"dead_letter":' + orjson.dumps(info) + b"}\n")
        data = b"".join(lines)
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._append, data)
                break
            except OSError as exc:
                reason = f"dead-letter file {self.dead_letter_path}: {exc.strerror or exc}"
                self._set_failing(reason)
                delay = self._backoff.delay(attempt)
                log.error(
                    "http_dead_letter_write_failed",
                    exporter=self.name,
                    error=reason,
                    records=len(items),
                    retry_in=round(delay, 3),
                )
                attempt += 1
                await asyncio.sleep(delay)
        self.dead_lettered_records += len(items)
        self.dead_lettered_batches += 1
        statuses = sorted({s for _, s, _ in items if s is not None})
        log.error(
            "http_dead_lettered",
            exporter=self.name,
            url=url,
            status=statuses[0] if len(statuses) == 1 else statuses,
            records=len(items),
            whole_request=batch,
            path=str(self.dead_letter_path),
            response=items[0][2][:200] if items else "",
        )

    def _append(self, data: bytes) -> None:
        path = self.dead_letter_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    # -- the rest ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def _excerpt(self, body: bytes) -> str:
        text = body[: _EXCERPT * 4].decode("utf-8", "replace")
        return self._scrub(text)[:_EXCERPT]

    async def flush(self) -> None:
        """Ends a linger at once (nothing is held inside the exporter between sends)."""
        self._wake.set()

    async def close(self) -> None:
        self._wake.set()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def target(self) -> str:
        url = self.url.with_query(None).with_fragment(None)
        return f"{self.config.format}:{url}"

    def health(self) -> Health:
        return Health(not self._failing, self._failing)

    def counters(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "retries": self.retries,
            "records_sent": self.records_sent,
            "bytes_sent": self.bytes_sent,
            "dead_lettered_records": self.dead_lettered_records,
            "dead_lettered_batches": self.dead_lettered_batches,
            "last_status": self.last_status,
        }
