"""A /metrics answer (``exposition.Body``) as aiohttp sends a response body: piece by piece,
each write waiting while the socket's buffer is full, so the transport never holds more
than about one piece of it (one ``write`` of the whole answer made the transport copy all
that the socket did not take at once)."""

from __future__ import annotations

from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from exporters.prometheus.exposition import Body


class BodyPayload(Payload):
    _autoclose = True  # nothing to close: bytes in memory
    _value: Body

    def __init__(self, body: Body, content_type: str, **kwargs: Any) -> None:
        super().__init__(body, content_type=content_type, **kwargs)
        self._size = body.size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._value.join().decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        left = self._value.size if content_length is None else content_length
        for chunk in self._value.chunks:
            if left <= 0:
                break
            await writer.write(chunk if len(chunk) <= left else chunk[:left])
            left -= len(chunk)
