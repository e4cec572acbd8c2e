"""``format: ndjson``: one record per line, exactly as the file exporter writes them.

For generic HTTP endpoints: Vector's ``http_server`` source (``decoding.codec: json``,
``framing.method: newline_delimited``), Fluent Bit's ``http`` input, anything that splits
a body on newlines. Content type ``application/x-ndjson``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from agent.record import Record
from exporters.http.formats import Encoded


class NdjsonEncoder:
    content_type: ClassVar[str] = "application/x-ndjson"
    default_path: ClassVar[str] = ""

    def encode(self, records: Sequence[Record]) -> Encoded:
        return Encoded(records, [r.json() for r in records])

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        return encoded.lines(indices)
