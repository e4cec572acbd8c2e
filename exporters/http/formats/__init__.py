"""Request bodies for the http exporter, one module per backend format.

An encoder works in two steps so that a batch is encoded once however it is split:

* ``encode(records)`` turns every record into its own piece of the body (``Encoded.parts``,
  one ``bytes`` per record, plus the group it belongs to: a Loki stream, an OTLP resource);
* ``assemble(encoded, indices)`` joins the pieces of some of those records into one request
  body. The exporter picks the indices (``Encoded.split``) so that a request honours the
  batch limits, and re-assembles a subset when a backend asks for some records again
  (Elasticsearch's per-item errors) or rejects a body as too large.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from agent.record import Record
from agent.timestamps import ts_seconds_ns, ts_to_ns, ts_to_ns_text

__all__ = [  # the stamp helpers stay importable from here (the formats use them)
    "Encoded",
    "Encoder",
    "any_value",
    "grouped",
    "make_encoder",
    "ts_seconds_ns",
    "ts_to_ns",
    "ts_to_ns_text",
]


@dataclass
class Encoded:
    """A batch encoded once: one piece per record, optionally grouped.

    ``groups[i]`` is the group of record ``i`` (None for formats without groups) and
    ``headers[g]`` the bytes that open group ``g`` in a body; with ``envelope`` (bytes around
    the whole body) and ``group_overhead`` (bytes closing a group) they bound a body's size.
    ``keys[i]`` orders the pieces within a group when the format needs it (Loki).
    """

    records: Sequence[Record]
    parts: list[bytes]
    groups: list[Hashable] | None = None
    headers: dict[Hashable, bytes] = field(default_factory=dict)
    keys: list[str] | None = None
    envelope: int = 0
    group_overhead: int = 0
    # Called once every record of the batch is delivered (Elasticsearch: commit the
    # occurrence counts its ids continue from).
    on_delivered: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self.parts)

    def chosen(self, indices: Sequence[int]) -> list[bytes]:
        """The pieces of ``indices``, in that order (a plain slice for a range)."""
        parts = self.parts
        if isinstance(indices, range) and indices.step == 1:
            return parts[indices.start : indices.stop]
        return [parts[i] for i in indices]

    def lines(self, indices: Sequence[int]) -> bytes:
        """The pieces of ``indices`` as newline-terminated lines (NDJSON-style bodies)."""
        chosen = self.chosen(indices)
        if not chosen:
            return b""
        chosen.append(b"")
        return b"\n".join(chosen)

    def size(self, indices: Sequence[int]) -> int:
        """An upper bound of the length of ``assemble(self, indices)``."""
        chosen = self.chosen(indices)
        total = self.envelope + sum(map(len, chosen)) + len(chosen)
        if self.groups is not None:
            groups = self.groups
            for g in {groups[i] for i in indices}:
                total += len(self.headers[g]) + self.group_overhead
        return total

    def split(self, max_records: int, max_bytes: int) -> list[range]:
        """The records in order, cut into runs of at most ``max_records`` records and
        ``max_bytes`` bytes of body (a single record larger than that makes a run alone).

        Runs of ``max_records`` are taken whole when they fit (the usual case: one sum per
        run); a run that does not is cut record by record.
        """
        n = len(self.parts)
        out: list[range] = []
        start = 0
        while start < n:
            run = range(start, min(start + max_records, n))
            if self.size(run) > max_bytes:
                run = self._fill(start, run.stop, max_bytes)
            out.append(run)
            start = run.stop
        return out

    def _fill(self, start: int, stop: int, max_bytes: int) -> range:
        """The longest run from ``start`` (before ``stop``) within ``max_bytes``; at least
        one record."""
        parts = self.parts
        groups = self.groups
        size = self.envelope
        seen: set[Hashable] = set()
        i = start
        while i < stop:
            cost = len(parts[i]) + 1
            if groups is not None:
                g = groups[i]
                if g not in seen:
                    cost += len(self.headers[g]) + self.group_overhead
                    seen.add(g)
            if i > start and size + cost > max_bytes:
                break
            size += cost
            i += 1
        return range(start, i)


class Encoder(Protocol):
    content_type: ClassVar[str]
    default_path: ClassVar[str]  # appended to a url without a path

    def encode(self, records: Sequence[Record]) -> Encoded: ...

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes: ...


def grouped(encoded: Encoded, indices: Sequence[int]) -> dict[Hashable, list[int]]:
    """The indices by group, groups in order of first appearance."""
    groups = encoded.groups
    assert groups is not None
    out: dict[Hashable, list[int]] = {}
    for i in indices:
        g = groups[i]
        bucket = out.get(g)
        if bucket is None:
            out[g] = [i]
        else:
            bucket.append(i)
    return out


def any_value(value: Any) -> dict[str, Any]:
    """A Python value as an OTLP ``AnyValue`` (JSON mapping: int64 as a decimal string)."""
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, dict):
        return {
            "kvlistValue": {
                "values": [{"key": str(k), "value": any_value(v)} for k, v in value.items()]
            }
        }
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def make_encoder(config: Any) -> Encoder:
    """The encoder for an http exporter's ``format`` (and its per-format options)."""
    fmt = config.format
    if fmt == "ndjson":
        from exporters.http.formats.ndjson import NdjsonEncoder

        return NdjsonEncoder()
    if fmt == "loki":
        from exporters.http.formats.loki import LokiEncoder

        return LokiEncoder(config.loki.labels, config.loki.line_format)
    if fmt == "elasticsearch":
        from exporters.http.formats.elasticsearch import ElasticsearchEncoder

        es = config.elasticsearch
        return ElasticsearchEncoder(es.index, es.action, es.id)
    if fmt == "otlp":
        from exporters.http.formats.otlp import OtlpEncoder

        return OtlpEncoder(config.otlp.container_labels)
    raise ValueError(f"unknown format {fmt!r}")
