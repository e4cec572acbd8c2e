"""json-file lines → the same records as the logs API gives for them.

The json-file driver writes one JSON object per line::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-28T10:21:02.258843177Z"}

and the engine's logs API serves exactly these lines, re-framed. ``JsonFileDecoder``
produces the same records as the API source for the same lines:

* ``time`` is RFC3339Nano, which trims trailing zeros (``…33.39940479Z``, ``…33Z``); the API
  prints nine digits, so the stamp is padded the same way;
* a ``log`` value without a trailing ``\\n`` is a partial message (lines over 16 KiB, or the
  last bytes before the container stopped) and is joined with the following ones;
* TTY containers' lines end in ``\\r\\n``: the ``\\r`` is dropped, as the API source does;
* messages are capped at ``max_message_bytes`` and marked truncated; invalid UTF-8 was
  already replaced by U+FFFD when the engine wrote the file.

Joining, capping and resuming are ``LineAssembler``'s (``agent.sources.lines``), shared with
the API decoder, so they cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from agent.positions import Position
from agent.record import ContainerMeta, Record, normalize_timestamp
from agent.sources.lines import LineAssembler

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def normalize_time(ts: str) -> str:
    """json-file's RFC3339Nano stamp in the logs API's form: UTC, nine fractional digits.

    ``2026-11-28T10:21:33.39940479Z`` → ``2026-11-28T10:21:33.399404790Z``;
    ``2026-11-28T10:21:33Z`` → ``2026-11-28T10:21:33.000000000Z``.
    """
    if ts[-1:] == "Z" and len(ts) <= 30:
        if len(ts) == 20:
            return ts[:19] + ".000000000Z"
        if ts[19:20] == ".":
            return ts[:-1].ljust(29, "0") + "Z"
    return normalize_timestamp(ts)  # an offset, a five-digit year, …: the general path


def _loads_lenient(line: bytes) -> Any:
    """One line that orjson refused: the standard library also takes lone surrogates
    (``\\ud800``), which Go's decoder turns into U+FFFD, as done here."""
    value = json.loads(line.decode("utf-8", "replace"))
    if isinstance(value, dict) and isinstance(value.get("log"), str):
        value["log"] = value["log"].encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


class JsonFileDecoder(LineAssembler):
    """json-file lines → records. The slow path (partial lines, caps, resume) is
    ``LogDecoder``'s, fed the message's bytes, so both sources join, cap and skip alike.

    ``since`` mirrors the API's ``since`` parameter: lines stamped before it are dropped
    whatever their stream (the API source asks with the oldest per-stream position).
    """

    def __init__(
        self,
        meta: ContainerMeta,
        max_bytes: int,
        resume: dict[str, Position] | None = None,
        since: str | None = None,
        tty: bool | None = None,
    ) -> None:
        super().__init__(meta, max_bytes, resume)
        self.tty = tty  # None: told from the first whole line ("\r\n" ends TTY lines)
        self.since = since
        # A message of at most this many characters fits in max_bytes (≤ 4 bytes each).
        self._quick = max_bytes // 4

    def feed_lines(self, data: bytes) -> list[Record]:
        """Decodes ``data``, whole json-file lines each ending in ``\\n``."""
        if not data:
            return []
        try:
            objs = _loads(b"[" + data[:-1].replace(b"\n", b",") + b"]")
        except _JSONDecodeError:
            objs = self._each(data)
        out: list[Record] = []
        append = out.append
        meta = self.meta
        pending = self._pending
        resume = self._resume
        since = self.since
        quick = self._quick
        tty = self.tty
        if tty is None and objs:
            first = objs[0].get("log") if isinstance(objs[0], dict) else None
            tty = self.tty = isinstance(first, str) and first.endswith("\r\n")
        for d in objs:
            try:
                msg = d["log"]
                ts = d["time"]
                stream = d["stream"]
            except (KeyError, TypeError, IndexError):
                self.malformed += 1
                continue
            if len(ts) != 30 or ts[-1] != "Z":
                ts = normalize_time(ts)
            if since is not None:
                if ts < since:
                    self.skipped += 1
                    continue
                # Stamps grow through the file: past ``since`` once, the test is done. (The
                # API applies it to every line; a line of the other stream written a few
                # microseconds late is then delivered here, where the API would drop it.)
                self.since = since = None
            if msg[-1:] == "\n" and not pending and not resume and len(msg) <= quick:
                # Fast path: one whole line, nothing to join, cut or skip.
                if tty and msg[-2:-1] == "\r":
                    append(Record("log", ts, meta, stream, msg[:-2]))
                else:
                    append(Record("log", ts, meta, stream, msg[:-1]))
                continue
            if type(stream) is not str or type(msg) is not str:
                self.malformed += 1
                continue
            complete = msg[-1:] == "\n"
            if complete:
                msg = msg[:-2] if tty and msg[-2:-1] == "\r" else msg[:-1]
            self._piece(stream, ts, msg.encode("utf-8", "surrogatepass"), complete, out)
            pending = self._pending
        return out

    def _each(self, data: bytes) -> list[Any]:
        objs = []
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                objs.append(_loads(line))
            except _JSONDecodeError:
                try:
                    objs.append(_loads_lenient(line))
                except ValueError:
                    self.malformed += 1
        return objs

    def finish(self) -> list[Record]:
        if self.tty:
            # A TTY line cut off by the container's end loses its "\r" as in the API source.
            for pending in self._pending.values():
                if pending.parts and pending.parts[-1].endswith(b"\r"):
                    pending.parts[-1] = pending.parts[-1][:-1]
                    pending.length -= 1
        return super().finish()
