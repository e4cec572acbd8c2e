"""``format: otlp``: OTLP/HTTP logs in the JSON encoding (``POST /v1/logs``).

    {"resourceLogs": [{
       "resource": {"attributes": [{"key": "container.id", "value": {"stringValue": "…"}}, …]},
       "scopeLogs": [{"scope": {"name": "container-agent", "version": "0.1.0"},
                      "logRecords": [{"timeUnixNano": "…", "observedTimeUnixNano": "…",
                                      "body": {"stringValue": "the line"},
                                      "attributes": [{"key": "log.iostream", …}]}]}]}]}

One ``resourceLogs`` per container, with resource attributes from the OpenTelemetry semantic
conventions: ``container.id``, ``container.name``, ``container.image.name`` and
``container.image.tags`` (the image reference split at its tag; a digest is left out),
``host.name``; compose's project and service as ``docker.compose.project`` and
``docker.compose.service`` (no semantic convention exists for them), and
``container.label.<key>`` for each label listed in ``otlp.container_labels``.

Per the OTLP JSON mapping, 64-bit integers (``timeUnixNano``, ``intValue``) are decimal
strings. ``severityText``/``severityNumber`` are left out: the agent does not know a line's
level. ``observedTimeUnixNano`` is when the agent encoded the record.

* log records: ``body.stringValue`` is the message; attribute ``log.iostream`` is
  ``stdout`` or ``stderr``; ``container_agent.truncated: true`` on truncated lines;
* event records: ``body.stringValue`` is the action (``die``), attribute ``event.name`` is
  ``container.<action>``, and each event attribute is ``docker.event.<key>`` (a string);
* stats records: ``body`` is a ``kvlistValue`` of the stats object (numbers as
  ``intValue``/``doubleValue``, per-interface network counters nested), ``event.name`` is
  ``container.stats``.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import orjson

from agent import __version__
from agent.record import ContainerMeta, Record
from exporters.http.formats import Encoded, any_value, grouped, ts_to_ns_text

_dumps = orjson.dumps
SCOPE = {"name": "container-agent", "version": __version__}


def split_image(image: str) -> tuple[str, str | None]:
    """``registry:5000/app:1.2@sha256:…`` -> (``registry:5000/app``, ``1.2``)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :] or None
    return name, None


def _attr(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": any_value(value)}


def resource_attributes(meta: ContainerMeta, labels: Sequence[str] = ()) -> list[dict[str, Any]]:
    name, tag = split_image(meta.image)
    attrs = [
        _attr("container.id", meta.id),
        _attr("container.name", meta.name),
        _attr("container.image.name", name),
    ]
    if tag:
        attrs.append(_attr("container.image.tags", [tag]))
    attrs.append(_attr("host.name", meta.host))
    if meta.project:
        attrs.append(_attr("docker.compose.project", meta.project))
    if meta.service:
        attrs.append(_attr("docker.compose.service", meta.service))
    for key in labels:
        value = meta.labels.get(key)
        if value is not None:
            attrs.append(_attr(f"container.label.{key}", value))
    return attrs


_STDOUT = [{"key": "log.iostream", "value": {"stringValue": "stdout"}}]
_STDERR = [{"key": "log.iostream", "value": {"stringValue": "stderr"}}]
_TRUNCATED = {"key": "container_agent.truncated", "value": {"boolValue": True}}
_STDOUT_TAIL = b'},"attributes":' + _dumps(_STDOUT) + b"}"
_STDERR_TAIL = b'},"attributes":' + _dumps(_STDERR) + b"}"


# OTLP's SeverityNumber: DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21 (each the first of
# its range of four).
SEVERITY_NUMBER = {"debug": 5, "info": 9, "warning": 13, "error": 17, "fatal": 21}


class OtlpEncoder:
    content_type: ClassVar[str] = "application/json"
    default_path: ClassVar[str] = "/v1/logs"

    def __init__(self, container_labels: Sequence[str] = ()) -> None:
        self.container_labels = list(container_labels)
        self._headers: dict[ContainerMeta, bytes] = {}

    def _header(self, meta: ContainerMeta) -> bytes:
        header = self._headers.get(meta)
        if header is None:
            resource = {"attributes": resource_attributes(meta, self.container_labels)}
            header = (
                b'{"resource":'
                + _dumps(resource)
                + b',"scopeLogs":[{"scope":'
                + _dumps(SCOPE)
                + b',"logRecords":['
            )
            if len(self._headers) > 10_000:
                self._headers.clear()
            self._headers[meta] = header
        return header

    def log_record(self, rec: Record, observed: str, spliced: bytes = b"") -> bytes:
        """One ``logRecord``; ``spliced`` is ``","observedTimeUnixNano":"<observed>"``."""
        ts = ts_to_ns_text(rec.timestamp)
        level = rec.level if rec.kind == "log" else None
        if rec.kind == "log" and not rec.truncated and spliced and level is None:  # by hand
            return (
                b'{"timeUnixNano":"'
                + ts.encode()
                + spliced
                + b',"body":{"stringValue":'
                + _dumps(rec.message or "")
                + (_STDERR_TAIL if rec.stream == "stderr" else _STDOUT_TAIL)
            )
        if rec.kind == "log":
            attrs: list[dict[str, Any]] = _STDERR if rec.stream == "stderr" else _STDOUT
            if rec.truncated:
                attrs = [*attrs, _TRUNCATED]
            body: dict[str, Any] = {"stringValue": rec.message or ""}
        elif rec.kind == "event":
            attrs = [{"key": "event.name", "value": {"stringValue": f"container.{rec.action}"}}]
            attrs += [
                {"key": f"docker.event.{k}", "value": {"stringValue": str(v)}}
                for k, v in (rec.attributes or {}).items()
            ]
            body = {"stringValue": rec.action or ""}
        else:
            attrs = [{"key": "event.name", "value": {"stringValue": f"container.{rec.kind}"}}]
            body = any_value(rec.stats)
        out: dict[str, Any] = {"timeUnixNano": ts, "observedTimeUnixNano": observed}
        if level is not None:  # a level processing found (OTLP's SeverityNumber ranges)
            out["severityNumber"] = SEVERITY_NUMBER[level]
            out["severityText"] = level.upper()
        out["body"] = body
        out["attributes"] = attrs
        return _dumps(out)

    def encode(self, records: Sequence[Record]) -> Encoded:
        observed = str(time.time_ns())
        spliced = b'","observedTimeUnixNano":"' + observed.encode() + b'"'
        parts = []
        groups: list[Hashable] = []
        headers: dict[Hashable, bytes] = {}
        for rec in records:
            meta = rec.meta
            if meta not in headers:
                headers[meta] = self._header(meta)
            parts.append(self.log_record(rec, observed, spliced))
            groups.append(meta)
        return Encoded(records, parts, groups, headers, envelope=20, group_overhead=8)

    def assemble(self, encoded: Encoded, indices: Sequence[int]) -> bytes:
        parts = encoded.parts
        resources = [
            encoded.headers[group] + b",".join([parts[i] for i in idx]) + b"]}]}"
            for group, idx in grouped(encoded, indices).items()
        ]
        return b'{"resourceLogs":[' + b",".join(resources) + b"]}"
