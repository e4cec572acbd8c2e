"""``format: loki``: the JSON body of Loki's push API (``POST /loki/api/v1/push``).

    {"streams": [{"stream": {"container_name": "web", "stream": "stdout", "host": "vm"},
                  "values": [["1764324705589604852", "the line"], ...]}, ...]}

A stream is one set of labels: the record fields listed in ``loki.labels`` (low-cardinality
ones by default; a field without a value, e.g. ``project`` outside compose or ``stream`` on
an event, is left out). Records with the same label set go into one stream, whose entries
are sorted by timestamp (Loki rejects out-of-order entries within a stream unless
``unordered_writes`` is on). Timestamps are nanoseconds since the epoch, as strings.

The line is the message for log records (``line_format: message``, default) or the whole
record as JSON (``line_format: json``); event and stats records are always sent as their JSON.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import orjson

from agent.record import ContainerMeta, Record
from exporters.http.formats import Encoded, grouped, ts_to_ns_text

DEFAULT_LABELS = ["container_name", "stream", "host", "project", "service"]
# Record fields a label can take its value from; ``label.<key>`` takes a container label.
LABEL_FIELDS = ("container_name", "container_id", "image", "host", "project", "service")
RECORD_FIELDS = ("stream", "kind", "level")  # level: set by processing (a log record)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_dumps = orjson.dumps


def label_name(field: str) -> str:
    """The Loki label name of a ``loki.labels`` entry (``label.a.b-c`` -> ``a_b_c``)."""
    if field.startswith("label."):
        name = _INVALID.sub("_", field[len("label.") :])
        return name if not name[:1].isdigit() else "_" + name
    return field


def check_label_field(field: str) -> str:
    """Raises ValueError unless ``field`` can be a Loki label; returns it."""
    if field in LABEL_FIELDS or field in RECORD_FIELDS:
        return field
    if field.startswith("label.") and len(field) > len("label."):
        return field
    known = ", ".join((*LABEL_FIELDS, *RECORD_FIELDS))
    raise ValueError(f"unknown label field {field!r} (known: {known}, or label.<container label>)")


def _meta_value(meta: ContainerMeta, field: str) -> str | None:
    if field == "container_name":
        return meta.name
    if field == "container_id":
        return meta.id
    if field == "image":
        return meta.image
    if field == "host":
        return meta.host
    if field == "project":
        return meta.project
    if field == "service":
        return meta.service
    return meta.labels.get(field[len("label.") :])


class LokiEncoder:
    content_type: ClassVar[str] = "application/json"
    default_path: ClassVar[str] = "/loki/api/v1/push"

    def __init__(self, labels: Sequence[str] = DEFAULT_LABELS, line_format: str = "message"):
        self.fields = [check_label_field(f) for f in labels]
        self.names = [label_name(f) for f in self.fields]
        self.use_stream = "stream" in self.fields
        self.use_kind = "kind" in self.fields
        self.use_level = "level" in self.fields
        self.line_json = line_format == "json"
        # (meta, stream, kind) -> (group key, stream header); metas are shared per container.
        self._cache: dict[tuple[Any, ...], tuple[Hashable, bytes]] = {}

    def _group(self, rec: Record) -> tuple[Hashable, bytes]:
        ck = (
            rec.meta,
            rec.stream if self.use_stream else None,
            rec.kind if self.use_kind else None,
            rec.level if self.use_level else None,
        )
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        labels: dict[str, str] = {}
        for field, name in zip(self.fields, self.names, strict=True):
            if field == "stream":
                value = rec.stream
            elif field == "kind":
                value = rec.kind
            elif field == "level":
                value = rec.level
            else:
                value = _meta_value(rec.meta, field)
            if value:
                labels[name] = value
        key = tuple(labels.items())
        hit = (key, b'{"stream":' + _dumps(labels) + b',"values":[')
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[ck] = hit
        return hit

    def encode(self, records: Sequence[Record]) -> Encoded:
        parts: list[bytes] = []
        groups: list[Hashable] = []
        keys: list[str] = []
        headers: dict[Hashable, bytes] = {}
        line_json = self.line_json
        cache = self._cache
        use_stream, use_kind, use_level = self.use_stream, self.use_kind, self.use_level
        for rec in records:
            hit = cache.get(
                (
                    rec.meta,
                    rec.stream if use_stream else None,
                    rec.kind if use_kind else None,
                    rec.level if use_level else None,
                )
            )
            if hit is None:
                hit = self._group(rec)
            key = hit[0]
            if key not in headers:
                headers[key] = hit[1]
            ns = ts_to_ns_text(rec.timestamp)
            if rec.kind == "log" and not line_json:
                parts.append(_dumps((ns, rec.message or "")))
            else:
                parts.append(_dumps((ns, rec.json().decode())))
            groups.append(key)
            keys.append(ns)
        return Encoded(records, parts, groups, headers, keys, envelope=16, group_overhead=4)

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        parts = encoded.parts
        keys = encoded.keys
        assert keys is not None
        streams = []
        for group, idx in grouped(encoded, indices).items():
            # Stable, so equal stamps keep their order; the nanosecond strings compare as
            # numbers (19 digits from 2001 to 2286).
            idx.sort(key=keys.__getitem__)
            streams.append(encoded.headers[group] + b",".join([parts[i] for i in idx]) + b"]}")
        return b'{"streams":[' + b",".join(streams) + b"]}"
