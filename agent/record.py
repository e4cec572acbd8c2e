"""The one record type that moves through the pipeline, and its NDJSON encoding.

Records are built in batches by the sources and shared, unchanged, by every exporter.
Container metadata is encoded once per container (``ContainerMeta.fragment``) and spliced
into each record's JSON, so the per-line cost is one ``orjson.dumps`` of the message.
"""

from __future__ import annotations

import calendar
import functools
import re
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
# The stream of a logs-API frame, by its header's first byte; 0 (stdin) never appears in
# logs and is taken as stdout. Read by the Python decoder and handed to the C one.
FRAME_STREAMS = ("stdout", "stdout", "stderr")

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class ContainerMeta:
    """What every record of one container carries; immutable once built."""

    __slots__ = (
        "fragment",
        "host",
        "id",
        "image",
        "labels",
        "log_prefixes",
        "name",
        "project",
        "service",
        "tty",
    )

    def __init__(
        self,
        id: str,
        name: str,
        image: str,
        labels: Mapping[str, str] | None,
        host: str,
        tty: bool | None = None,
    ) -> None:
        self.id = id
        self.name = name.lstrip("/")
        self.image = image
        self.labels: dict[str, str] = dict(labels or {})
        self.host = host
        self.tty = tty
        self.log_prefixes: dict[str, bytes] = {}
        self.project = self.labels.get(COMPOSE_PROJECT)
        self.service = self.labels.get(COMPOSE_SERVICE)
        # '"container_id":...,"service":...' without braces, spliced into every record.
        self.fragment: bytes = _dumps(
            {
                "container_id": self.id,
                "container_name": self.name,
                "image": self.image,
                "labels": self.labels,
                "host": self.host,
                "project": self.project,
                "service": self.service,
            }
        )[1:-1]

    @classmethod
    def from_inspect(cls, info: Mapping[str, Any], host: str) -> ContainerMeta:
        """Builds the metadata from a ``GET /containers/{id}/json`` answer."""
        config = info.get("Config") or {}
        return cls(
            id=info["Id"],
            name=info.get("Name") or "",
            image=config.get("Image") or info.get("Image") or "",
            labels=config.get("Labels") or {},
            host=host,
            tty=bool(config.get("Tty")),
        )

    @classmethod
    def from_list(cls, item: Mapping[str, Any], host: str) -> ContainerMeta:
        """Builds the metadata from one ``GET /containers/json`` entry (TTY unknown)."""
        names = item.get("Names") or [""]
        return cls(
            id=item["Id"],
            name=names[0],
            image=item.get("Image") or "",
            labels=item.get("Labels") or {},
            host=host,
        )

    @classmethod
    def from_event(cls, actor: Mapping[str, Any], host: str) -> ContainerMeta:
        """Best-effort metadata for an event of a container the agent does not follow.

        The engine puts the container's labels among the event's attributes, next to
        ``name``, ``image`` and action-specific keys; those are not labels.
        """
        attrs = dict(actor.get("Attributes") or {})
        name = attrs.pop("name", "")
        image = attrs.pop("image", "")
        for key in _EVENT_ONLY_ATTRIBUTES:
            attrs.pop(key, None)
        return cls(id=actor.get("ID", ""), name=name, image=image, labels=attrs, host=host)

    def to_dict(self) -> dict[str, Any]:
        return _loads(b"{" + self.fragment + b"}")


_EVENT_ONLY_ATTRIBUTES = (
    "exitCode",
    "signal",
    "execID",
    "health_status",
    "oldName",
    "container",
)


class Extra:
    """What the processing stages (``agent/processing``) add to a log record; a record
    that went through none of them has none (``Record.extra`` is None).

    ``level``, ``fields`` and ``lines`` are written into the record's JSON (docs/records.md).
    ``end`` is bookkeeping only, for ``agent.positions.advance``: which lines of its stream
    the record accounts for, when that is not just the line stamped ``timestamp``. It is
    ``(stamp, count, whole)``: the stamp of the last line it accounts for, how many of its
    lines at the end carry that stamp, and whether all of them do. A record joined from
    several lines (multiline) ends at its last line although it is stamped with its first;
    one whose time came from the line's text is still at the engine's stamp; one that
    follows lines dropped on purpose (a filter, a rate limit) accounts for them too.
    """

    __slots__ = ("end", "fields", "level", "lines")

    def __init__(self) -> None:
        self.level: str | None = None
        self.fields: dict[str, Any] | None = None
        self.lines = 1
        self.end: tuple[str, int, bool] | None = None

    @property
    def shown(self) -> bool:
        """Whether the record's JSON carries any of it."""
        return self.level is not None or self.fields is not None or self.lines != 1


class Record:
    """One log line, one container event or one stats sample.

    ``timestamp`` is the engine's RFC 3339 stamp with nanoseconds, kept as the engine
    wrote it: it orders records and is the resume position after a reconnect.
    ``extra`` holds what processing stages added (``Extra``), else None; the C NDJSON
    encoder (agent/_speedups.c) writes it as ``json()`` does.
    """

    __slots__ = (
        "_json",
        "action",
        "attributes",
        "extra",
        "kind",
        "mark",
        "message",
        "meta",
        "stats",
        "stream",
        "timestamp",
        "truncated",
    )

    def __init__(
        self,
        kind: str,
        timestamp: str,
        meta: ContainerMeta,
        stream: str | None = None,
        message: str | None = None,
        truncated: bool = False,
        action: str | None = None,
        attributes: dict[str, str] | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        self.kind = kind
        self.timestamp = timestamp
        self.meta = meta
        self.stream = stream
        self.message = message
        self.truncated = truncated
        self.action = action
        self.attributes = attributes
        self.stats = stats
        self._json: bytes | None = None
        self.extra: Extra | None = None
        # File-read log lines: (inode, offset just past this line) on the last record of a
        # batch that ends at a line boundary; what checkpoints by position are made of.
        self.mark: tuple[int, int] | None = None

    @classmethod
    def log(
        cls, timestamp: str, meta: ContainerMeta, stream: str, message: str, truncated: bool
    ) -> Record:
        return cls("log", timestamp, meta, stream, message, truncated)

    @classmethod
    def event(
        cls, timestamp: str, meta: ContainerMeta, action: str, attributes: dict[str, str]
    ) -> Record:
        return cls("event", timestamp, meta, action=action, attributes=attributes)

    @classmethod
    def stats_sample(cls, timestamp: str, meta: ContainerMeta, stats: dict[str, Any]) -> Record:
        return cls("stats", timestamp, meta, stats=stats)

    @property
    def fields(self) -> dict[str, Any] | None:
        """The fields a parser found, else the message's when it is a JSON object, else
        None."""
        extra = self.extra
        if extra is not None and extra.fields is not None:
            return extra.fields
        return _json_fields(self.message) if self.kind == "log" else None

    @property
    def level(self) -> str | None:
        """The normalised level a processing stage found (debug, info, warning, error,
        fatal), else None."""
        extra = self.extra
        return extra.level if extra is not None else None

    @property
    def lines(self) -> int:
        """How many lines the record joins (multiline), 1 for a plain line."""
        extra = self.extra
        return extra.lines if extra is not None else 1

    def json(self) -> bytes:
        """The record as one JSON object (no newline), encoded once and cached."""
        data = self._json
        if data is None:
            data = self._json = self._encode()
        return data

    def _encode(self) -> bytes:
        meta = self.meta
        if self.kind == "log":
            # '{"kind":"log",<metadata>,"stream":"…","timestamp":"' is the same for every
            # line of a container's stream: built once, then one join per record.
            stream = self.stream or "stdout"
            prefix = meta.log_prefixes.get(stream)
            if prefix is None:
                prefix = meta.log_prefixes[stream] = (
                    b'{"kind":"log",'
                    + meta.fragment
                    + b',"stream":"'
                    + stream.encode()
                    + b'","timestamp":"'
                )
            message = self.message or ""
            extra = self.extra
            if extra is not None and extra.shown:
                # The keys from "message" on are one object's, in the order written: one
                # orjson call (its opening brace left out) instead of one per value.
                return b"".join(
                    (
                        prefix,
                        self.timestamp.encode(),
                        b'",',
                        _dumps(_extra_keys(message, self.truncated, extra))[1:],
                    )
                )
            tail = b"}"
            if self.truncated or (message[:1] == "{" and message[-1:] == "}"):
                tail = b',"truncated":true}' if self.truncated else b"}"
                fields = _json_fields(message)
                if fields is not None:
                    tail = tail[:-1] + b',"fields":' + _dumps(fields) + b"}"
            return b"".join(
                (prefix, self.timestamp.encode(), b'","message":', _dumps(message), tail)
            )
        head = (
            b'{"kind":"'
            + self.kind.encode()
            + b'",'
            + meta.fragment
            + b',"timestamp":"'
            + self.timestamp.encode()
            + b'"'
        )
        if self.kind == "stats":
            return head + b',"stats":' + _dumps(self.stats) + b"}"
        return (
            head
            + b',"action":'
            + _dumps(self.action)
            + b',"attributes":'
            + _dumps(self.attributes or {})
            + b"}"
        )

    def to_dict(self) -> dict[str, Any]:
        return _loads(self.json())

    def __repr__(self) -> str:
        return f"Record({self.json().decode()})"


def _extra_keys(message: str, truncated: bool, extra: Extra) -> dict[str, Any]:
    """The keys from ``message`` on of a log record with processing results."""
    out: dict[str, Any] = {"message": message}
    if truncated:
        out["truncated"] = True
    fields = extra.fields if extra.fields is not None else _json_fields(message)
    if fields is not None:
        out["fields"] = fields
    if extra.level is not None:
        out["level"] = extra.level
    if extra.lines != 1:
        out["lines"] = extra.lines
    return out


def _json_fields(message: str | None) -> dict[str, Any] | None:
    # Cheap test first: most lines are not JSON, and a failed parse costs more than this.
    if not message or message[0] != "{" or message[-1] != "}":
        return None
    try:
        value = _loads(message)
    except _JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def encode_ndjson(records: Iterable[Record]) -> bytes:
    """One JSON object per line, newline-terminated: the file exporter's format."""
    parts = [r.json() for r in records]
    if not parts:
        return b""
    parts.append(b"")
    return b"\n".join(parts)


def format_timestamp_ns(ns: int) -> str:
    """RFC 3339 UTC with nine fractional digits, the way the engine stamps log lines."""
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


_BASE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", re.ASCII)  # as the engine writes it


@functools.lru_cache(maxsize=1024)
def _utc_seconds(base: str) -> int:
    """``2024-01-01T00:00:00`` as unix seconds; a stamp's whole seconds recur (every line
    of a second, every scrape's read lags). Read by ``datetime.fromisoformat`` (in C, ~0.3
    us), which checks the ranges as ``time.strptime`` did; strptime's first call imports
    ``_strptime`` and builds its locale's patterns, ~90 kB of resident memory. ValueError
    for anything else (strptime also took one-digit fields; the engine writes two)."""
    if not _BASE.fullmatch(base):
        raise ValueError(f"time data {base!r} does not match format '%Y-%m-%dT%H:%M:%S'")
    return calendar.timegm(datetime.fromisoformat(base).timetuple())


def timestamp_to_unix(ts: str) -> str:
    """The engine's RFC 3339 stamp as ``seconds.nanoseconds``, the form ``since`` takes."""
    base, _, rest = ts.partition(".")
    if not rest:  # no fraction: "2024-01-01T00:00:00Z"
        base = base.rstrip("Z")
        rest = "Z"
    digits = len(rest) - len(rest.lstrip("0123456789"))
    frac, offset = rest[:digits], rest[digits:]
    seconds = _utc_seconds(base)
    if offset and offset != "Z":
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = offset[1:].split(":")
        seconds -= sign * (int(hours) * 3600 + int(minutes) * 60)
    return f"{seconds}.{frac.ljust(9, '0')[:9]}"


def normalize_timestamp(ts: str) -> str:
    """Any RFC 3339 stamp in the engine's log form (UTC, nine digits), so that stamps
    compare as strings (``/info``'s SystemTime trims zeros and may carry an offset)."""
    seconds, frac = timestamp_to_unix(ts).split(".")
    return format_timestamp_ns(int(seconds) * 1_000_000_000 + int(frac))
