"""``format: elasticsearch``: the ``_bulk`` API (Elasticsearch and OpenSearch).

The body is NDJSON, an action line then a source line per record::

    {"create":{"_index":"container-logs-2026.11.28"}}
    {"@timestamp":"2026-11-28T10:11:45.589604852Z","kind":"log","timestamp":"…",…}

The index is ``elasticsearch.index`` with strftime fields filled from each record's own
timestamp (UTC), so a batch that spans midnight goes to two daily indices. The action is
``create`` by default (the only one data streams accept; with auto-generated ids it also
works for plain indices) or ``index``. The source is the record's JSON (the same fields as
the file exporter writes) with ``@timestamp`` first, which data streams require.

The answer is read item by item (``errors``, then each item's ``status``): items with 429
or 5xx are sent again, items with another 4xx are dead-lettered one by one
(``bulk_outcome``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import orjson

from agent.record import Record
from exporters.http.formats import Encoded, ts_seconds_ns

_dumps = orjson.dumps


class ElasticsearchEncoder:
    content_type: ClassVar[str] = "application/x-ndjson"
    default_path: ClassVar[str] = "/_bulk"

    def __init__(self, index: str = "container-logs-%Y.%m.%d", action: str = "create") -> None:
        self.index = index
        self.action = action
        self._dated = "%" in index
        self._static = self._line(index) if not self._dated else b""
        self._by_second: dict[str, bytes] = {}

    def _line(self, index: str) -> bytes:
        return _dumps({self.action: {"_index": index}}) + b"\n"

    def action_line(self, timestamp: str) -> bytes:
        """The action line of a record stamped ``timestamp`` (its index from the pattern)."""
        if not self._dated:
            return self._static
        head = timestamp[:19]
        line = self._by_second.get(head)
        if line is None:
            sec, _ = ts_seconds_ns(timestamp)
            line = self._line(time.strftime(self.index, time.gmtime(sec)))
            if len(self._by_second) > 4096:
                self._by_second.clear()
            self._by_second[head] = line
        return line

    def encode(self, records: Sequence[Record]) -> Encoded:
        parts = []
        action_line = self.action_line
        for rec in records:
            ts = rec.timestamp
            # '{"@timestamp":"…",' + the record's JSON without its opening brace.
            source = b'{"@timestamp":"' + ts.encode() + b'",' + rec.json()[1:]
            parts.append(action_line(ts) + source)
        return Encoded(records, parts)

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        return encoded.lines(indices)


def bulk_outcome(
    body: bytes, indices: Sequence[int]
) -> tuple[list[int], list[tuple[int, int, str]]] | None:
    """Reads a ``_bulk`` answer to a request carrying ``indices`` (in that order).

    Returns (indices to send again, [(index, status, error) to dead-letter]), or None when
    the answer cannot be read item by item (then the caller treats the request as a whole).
    """
    try:
        answer: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if answer.get("errors") is False:
        return [], []
    items = answer.get("items")
    if not isinstance(items, list) or len(items) != len(indices):
        return None
    retry: list[int] = []
    dead: list[tuple[int, int, str]] = []
    for i, item in zip(indices, items, strict=True):
        result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
        if not isinstance(result, dict):
            return None
        status = result.get("status")
        if not isinstance(status, int):
            return None
        if 200 <= status < 300:
            continue
        if status == 429 or status >= 500:
            retry.append(i)
        else:
            error = result.get("error")
            text = _dumps(error).decode() if error is not None else ""
            dead.append((i, status, text))
    return retry, dead
