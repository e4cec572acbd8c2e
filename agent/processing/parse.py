"""Parsers: a line's fields (json, logfmt, regex), its level and optionally its time.

``json`` takes lines that are JSON objects (nested values kept as they are); ``logfmt``
lines made only of ``key=value`` pairs (values quoted with ``"`` when they hold spaces; a
bare word makes the line plain text); ``regex`` the named groups of a pattern searched in
the line. Fields go to the record's ``fields``; with ``keep_message: false`` the value of
the message field (``message``, ``msg``) becomes the record's ``message`` and leaves the
fields. A line that does not parse passes through untouched and is counted (``unparsed``).

The level, normalised to ``debug``, ``info``, ``warning``, ``error`` or ``fatal``, comes
from the level field when there is one (``level``, ``lvl``, ``severity``, ``loglevel``,
``log.level``, or ``level_field``; names and pino/bunyan numbers), else from a leading
token of the text (``ERROR``, ``WARN``, ``[info]``, ``error:``, after an optional
timestamp and ANSI colours; a ``Traceback``, ``Exception in thread`` or ``panic:`` line is
an error, and so is a multiline record that starts with one). ``time_field`` sets the
record's ``timestamp`` from the line (``time_format``); the delivered positions still
count the engine's stamp.
"""

from __future__ import annotations

import datetime
import decimal
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from agent.processing.config import ParserConfig
from agent.processing.span import end_of, extra_of
from agent.record import Extra, format_timestamp_ns, normalize_timestamp
from agent.speedups import speedups

# The C loop for the json parser's common line (agent/_speedups.c), when built: the
# records it cannot finish come back for the loop in ``Parse.process``.
_json_fields: Callable[..., tuple[list[Any], int]] | None = (
    speedups.json_fields if speedups is not None else None
)

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

LEVELS = ("debug", "info", "warning", "error", "fatal")
_NAMES = {
    "trace": "debug",
    "debug": "debug",
    "dbug": "debug",
    "dbg": "debug",
    "verbose": "debug",
    "fine": "debug",
    "finer": "debug",
    "finest": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "notice": "info",
    "config": "info",
    "warn": "warning",
    "warning": "warning",
    "wrn": "warning",
    "error": "error",
    "err": "error",
    "eror": "error",
    "severe": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "panic": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "alert": "fatal",
}
# A level field's common spellings, straight to their level (``normalise_level`` for any
# other value): most lines of an application spell theirs one way.
_SPELLED = {
    spelling: level
    for name, level in _NAMES.items()
    for spelling in (name, name.upper(), name.capitalize())
}
_DEFAULT_LEVEL_FIELDS = ("level", "lvl", "severity", "loglevel", "log.level")
_DEFAULT_MESSAGE_FIELDS = ("message", "msg")

_TOKENS = "TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|SEVERE|CRIT|CRITICAL|FATAL|PANIC"
_LEVEL_TEXT = re.compile(
    r"(?:\x1b\[[0-9;]*m)*"  # colours
    r"(?:\d{4}-\d\d-\d\d[T ][0-9:.,]+(?:Z|[+-]\d\d:?\d\d)?\s+)?"  # a leading timestamp
    rf"(?:(?P<upper>{_TOKENS})\b|\[(?P<bracket>(?i:{_TOKENS}))\]|(?P<colon>(?i:{_TOKENS})):)"
    r"|(?P<trace>Traceback \(most recent call last\)|Exception in thread |panic: |fatal error: )"
)


def normalise_level(value: Any) -> str | None:
    """A level field's value as one of ``LEVELS``, or None."""
    if isinstance(value, str):
        return _NAMES.get(value.strip().lower())
    if isinstance(value, int) and not isinstance(value, bool):
        # pino / bunyan: 10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal
        return {10: "debug", 20: "debug", 30: "info", 40: "warning", 50: "error", 60: "fatal"}.get(
            value
        )
    return None


def level_from_text(text: str) -> str | None:
    m = _LEVEL_TEXT.match(text)
    if m is None:
        return None
    if m.lastgroup == "trace":
        return "fatal" if text.startswith(("panic: ", "fatal error: ")) else "error"
    return _NAMES.get((m.group(m.lastgroup or "upper") or "").lower())


def _lookup(fields: dict[str, Any], name: str) -> Any:
    if name in fields:
        return fields[name]
    if "." in name:
        value: Any = fields
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value
    return None


def parse_json(text: str) -> dict[str, Any] | None:
    if text[:1] != "{":
        text = text.strip()
        if text[:1] != "{":
            return None
    try:
        value = _loads(text)
    except _JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


_LOGFMT_PAIR = r'[^\s="]+=(?:"(?:[^"\\]|\\.)*"|[^\s"]*)'
_LOGFMT_LINE = re.compile(rf"\s*{_LOGFMT_PAIR}(?:\s+{_LOGFMT_PAIR})*\s*")
_LOGFMT_PAIRS = re.compile(r'([^\s="]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def _unquote(value: str) -> str:
    try:
        out = _loads(value)
    except _JSONDecodeError:
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return out if isinstance(out, str) else value[1:-1]


def parse_logfmt(text: str) -> dict[str, Any] | None:
    if "=" not in text or _LOGFMT_LINE.fullmatch(text) is None:
        return None
    return {k: _unquote(v) if v[:1] == '"' else v for k, v in _LOGFMT_PAIRS.findall(text)}


def parse_time(value: Any, fmt: str) -> str | None:
    """A parsed time field as an engine-style stamp (UTC, nanoseconds), or None."""
    try:
        if fmt.startswith("unix"):
            scale = {"unix": 10**9, "unix_ms": 10**6, "unix_us": 10**3, "unix_ns": 1}[fmt]
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                return None
            # Decimal: 1767225600.25 s is 250 ms exactly, not what a float makes of it.
            number = decimal.Decimal(value if isinstance(value, str | int) else repr(value))
            if not number.is_finite():
                return None
            return format_timestamp_ns(int(number * scale))
        if not isinstance(value, str):
            return None
        if fmt == "rfc3339":
            return normalize_timestamp(value.replace(" ", "T", 1))
        dt = datetime.datetime.strptime(value, fmt)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=datetime.UTC)
        delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        return format_timestamp_ns(
            (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
        )
    except (ValueError, KeyError, OverflowError, TypeError, decimal.InvalidOperation):
        return None


class Parse:
    """The parse stage of one container (see the module docstring). ``config`` None:
    only the level from the text (``detect_level``)."""

    name = "parse"
    holds = False
    settled = True

    def __init__(self, config: ParserConfig | None, counters: Counter[str] | None = None):
        self.config = config
        self.counters: Counter[str] = counters if counters is not None else Counter()
        kind = config.type if config is not None else None
        self._parse: Callable[[str], dict[str, Any] | None] | None
        if kind == "json":
            self._parse = parse_json
        elif kind == "logfmt":
            self._parse = parse_logfmt
        elif kind == "regex":
            assert config is not None and config.pattern is not None
            search = re.compile(config.pattern).search

            def parse_regex(text: str) -> dict[str, Any] | None:
                m = search(text)
                if m is None:
                    return None
                return {k: v for k, v in m.groupdict().items() if v is not None}

            self._parse = parse_regex
        else:
            self._parse = None
        self.level_fields = (
            (config.level_field,) if config and config.level_field else _DEFAULT_LEVEL_FIELDS
        )
        self.from_text = config.level_from_text if config is not None else True
        self.time_field = config.time_field if config is not None else None
        self.time_format = config.time_format if config is not None else "rfc3339"
        self.drop_message = config is not None and not config.keep_message
        self.message_fields = (
            (config.message_field,)
            if config is not None and config.message_field
            else _DEFAULT_MESSAGE_FIELDS
        )
        # The json parser with neither a time field nor the message replaced: its lines
        # that are one object go through the C loop (the fields and the level only).
        self._fast = (
            _json_fields
            if self._parse is parse_json and self.time_field is None and not self.drop_message
            else None
        )

    def deadline(self) -> float | None:
        return None

    def flush(self, now: float, force: bool) -> list[Any]:
        return []

    def process(self, batch: list[Any]) -> list[Any]:
        fast = self._fast
        if fast is None:
            self._lines(batch)
            return batch
        rest, parsed = fast(
            batch,
            _loads,
            _JSONDecodeError,
            self.level_fields,
            _SPELLED,
            level_from_text if self.from_text else None,
        )
        if parsed:
            self.counters["parsed"] += parsed
        if rest:
            self._lines(rest)
        return batch

    def _lines(self, batch: list[Any]) -> None:
        """Each record of ``batch``, the Python way (every parser, every option)."""
        parse = self._parse
        from_text = self.from_text
        # (name, dotted): a dotted name is also looked up as a path of nested objects
        level_fields = [(name, "." in name) for name in self.level_fields]
        spelled = _SPELLED
        # The json parser on a line that is one object from brace to brace (most lines of
        # a JSON logger): parse_json's own steps, without its call and slices.
        whole_json = parse is parse_json
        parsed = unparsed = bad_time = 0
        for r in batch:
            message = r.message or ""
            if whole_json and message and message[0] == "{" and message[-1] == "}":
                text = message
                try:
                    fields = _loads(message)
                except _JSONDecodeError:
                    fields = None
                if not isinstance(fields, dict):
                    fields = None
            else:
                text = message[:-1] if message[-1:] == "\r" else message
                fields = parse(text) if parse is not None else None
            if fields is None:
                if parse is not None:
                    unparsed += 1
                if from_text:
                    level = level_from_text(text)
                    if level is not None:
                        extra_of(r).level = level
                continue
            parsed += 1
            extra = r.extra
            if extra is None:
                extra = r.extra = Extra()
            level = None
            for name, dotted in level_fields:
                value = fields.get(name)
                if value is None and dotted:
                    value = _lookup(fields, name)
                if value is not None:
                    level = spelled.get(value) if type(value) is str else None
                    if level is None:
                        level = normalise_level(value)
                    break
            if level is None and from_text:
                level = level_from_text(text)
            extra.level = level
            if self.time_field is not None:
                value = _lookup(fields, self.time_field)
                stamp = parse_time(value, self.time_format) if value is not None else None
                if stamp is None:
                    bad_time += 1
                else:
                    if extra.end is None:
                        extra.end = end_of(r)  # positions keep counting the engine's stamp
                    r.timestamp = stamp
            if self.drop_message:
                for name in self.message_fields:
                    if name in fields:
                        value = fields.pop(name)
                        r.message = (
                            value if isinstance(value, str) else orjson.dumps(value).decode()
                        )
                        break
                else:
                    r.message = ""
            extra.fields = fields
        c = self.counters
        if parsed:
            c["parsed"] += parsed
        if unparsed:
            c["unparsed"] += unparsed
        if bad_time:
            c["time_unparsed"] += bad_time
