"""The http exporter: batches of records POSTed to a backend in one of four formats.

``send`` returns once every record of the batch is accepted: answered with a 2xx, or
written to the dead-letter file after a 4xx the backend will never take (``sender``; 401,
403, 404, 405 and 407 are not among them: they mean the agent is misconfigured and are
retried, the exporter unhealthy meanwhile). It never raises for a backend failure: a
batch is split into several requests, and raising would make the pipeline send the
requests already accepted again. While it retries, the pipeline's queue fills and its
``when_full`` policy applies (back-pressure).

Batching: a batch from the pipeline (up to ~2k records) is encoded once and cut into
requests of at most ``batch.max_records`` records and ``batch.max_bytes`` bytes of body
before compression; the next body is compressed while a request is in flight. When
records trickle, a send that carried a single partial request holds the pipeline's worker
for the rest of ``batch.max_seconds`` (counted from when the send began) so that the next
request carries what arrived meanwhile: at most about one request per ``max_seconds``
while the queue stays small. The hold ends early when the queue holds ``max_records``
records, when ``flush()`` is called, or when the pipeline stops accepting records
(shutdown). Records are already delivered when the hold starts.

Secrets are whatever is not known harmless (``agent.secrets``): bearer tokens, passwords,
the value of every header but ``Accept``, ``Accept-Encoding``, ``Content-Type``,
``Content-Encoding``, ``User-Agent`` and ``X-Scope-OrgID``, and a url's password and query
values. They are kept out of logs, metrics, ``target()`` (the url without credentials or
query) and ``check-config`` output, and are scrubbed from the response excerpts and error
texts the exporter logs, reports in ``health()`` (``/readyz``) and dead-letters
(``auth``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from agent import load_deferred_ca
from agent.record import Record
from agent.retry import Backoff
from agent.secrets import Scrubber
from exporters._compress import gzip_bytes
from exporters.base import Exporter, Health, register
from exporters.http.auth import build_headers
from exporters.http.config import HttpConfig
from exporters.http.deadletter import DeadLetters
from exporters.http.formats import Encoded, Encoder, make_encoder
from exporters.http.sender import Sender


@register
class HttpExporter(Exporter):
    type_name = "http"
    config_class = HttpConfig
    config: HttpConfig

    def __init__(self, name: str, config: HttpConfig) -> None:
        super().__init__(name, config)
        self.encoder: Encoder = make_encoder(config)
        self.url = self._endpoint()
        backoff = Backoff(config.retry.initial_backoff_seconds, config.retry.max_backoff_seconds)
        path = Path(config.dead_letter_path or f"./var/state/dead-letter/{name}.ndjson")
        self.sender = Sender(
            name,
            self.url,
            self.target(),
            config.format == "elasticsearch",
            backoff,
            config.retry.max_retry_after_seconds,
            Scrubber(),  # the secrets are known once the headers are built (start)
            self._body,
            DeadLetters(name, path, backoff, self._set_failing, config.dead_letter_max_bytes),
        )
        self._wake = asyncio.Event()
        self._backlog: Callable[[], int] | None = None
        self._in_send = 0  # records of the batch being sent
        self._accepting: Callable[[], bool] = lambda: True

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

    def place(self, state_dir: Path) -> None:
        """The dead-letter file lives under ``state_dir`` unless the config names one; a
        relative path is made absolute now, so that log lines give where it is."""
        configured = self.config.dead_letter_path
        path = Path(configured) if configured else state_dir / "dead-letter" / f"{self.name}.ndjson"
        self.sender.dead_letters.path = path.absolute()

    async def start(self) -> None:
        headers, scrub = build_headers(self.config, self.name, self.encoder.content_type)
        self.sender.scrub = scrub
        context = self._ssl()
        if isinstance(context, bool):
            # aiohttp's own contexts (True: verifying, a redirect to https would use it;
            # False: tls.verify off) are made without the CA store: read it now
            await asyncio.to_thread(load_deferred_ca)
        connector = aiohttp.TCPConnector(ssl=context, limit=4)
        self.sender.session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_seconds),
            headers=headers,
            auto_decompress=True,
        )

    # -- sending -----------------------------------------------------------------------------

    async def send(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        if self.sender.session is None:
            await self.start()
        began = time.monotonic()
        self._in_send = len(batch)
        cfg = self.config.batch
        encoded = self.encoder.encode(batch)
        runs = encoded.split(cfg.max_records, cfg.max_bytes)
        async with contextlib.aclosing(self._payloads(encoded, runs)) as payloads:
            for run in runs:
                await self.sender.deliver(encoded, run, await anext(payloads))
        if encoded.on_delivered is not None:
            encoded.on_delivered()
        if len(runs) == 1 and len(batch) < cfg.max_records:
            await self._linger(began)

    async def _payloads(self, encoded: Encoded, runs: list[range]) -> AsyncGenerator[bytes, None]:
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

    # -- the rest ----------------------------------------------------------------------------

    def _set_failing(self, reason: str) -> None:
        self.sender.set_failing(reason)

    async def flush(self) -> None:
        """Ends a linger at once (nothing is held inside the exporter between sends)."""
        self._wake.set()

    async def close(self) -> None:
        self._wake.set()
        if self.sender.session is not None:
            await self.sender.session.close()
            self.sender.session = None

    def target(self) -> str:
        url = self.url.with_query(None).with_fragment(None)
        return f"{self.config.format}:{url}"

    def health(self) -> Health:
        return Health(not self.sender.failing, self.sender.failing)

    # Counters, for tests, benchmarks and the agent's metrics.
    @property
    def requests(self) -> int:
        return self.sender.requests

    @property
    def retries(self) -> int:
        return self.sender.retries

    @property
    def failures(self) -> int:
        """Failed requests: answers other than 2xx, connection errors and timeouts (each
        retried, split or dead-lettered; the exporter retries inside ``send``, so the
        pipeline's own failure count never sees them)."""
        return self.sender.failures

    @property
    def records_sent(self) -> int:
        return self.sender.records_sent

    @property
    def bytes_sent(self) -> int:
        return self.sender.bytes_sent

    @property
    def already_stored_records(self) -> int:
        """Elasticsearch: records answered 409 (their id exists: sent before), counted as
        delivered."""
        return self.sender.already_stored

    @property
    def last_status(self) -> int | None:
        return self.sender.last_status

    @property
    def dead_lettered_records(self) -> int:
        return self.sender.dead_letters.records

    @property
    def dead_lettered_batches(self) -> int:
        return self.sender.dead_letters.batches

    @property
    def dead_letter_dropped_records(self) -> int:
        """Rejected records dropped because the dead-letter file was at its cap."""
        return self.sender.dead_letters.dropped

    @property
    def rejected_records(self) -> int:
        """Records the backend rejected for good: dead-lettered, or dropped at the
        dead-letter file's cap. ``send`` returned for them, yet they were not exported."""
        return self.dead_lettered_records + self.dead_letter_dropped_records

    @property
    def dead_letter_path(self) -> Path:
        return self.sender.dead_letters.path

    def counters(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failures": self.failures,
            "retries": self.retries,
            "records_sent": self.records_sent,
            "already_stored_records": self.already_stored_records,
            "bytes_sent": self.bytes_sent,
            "dead_lettered_records": self.dead_lettered_records,
            "dead_lettered_batches": self.dead_lettered_batches,
            "dead_letter_dropped_records": self.dead_letter_dropped_records,
            "rejected_records": self.rejected_records,
            "last_status": self.last_status,
        }
