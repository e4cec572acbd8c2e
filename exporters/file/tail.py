"""What earlier runs wrote, read back from the tails of the files, so that records sent
again after a crash are not written twice (see the package docstring)."""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import orjson

from agent.positions import Position
from agent.record import Record
from exporters.file.rotation import rotated_files

TAIL_BYTES = 16 * 1024 * 1024  # read back from a file first opened in a run (duplicates)
GZ_TAIL_LIMIT = 256 * 1024 * 1024  # a rotated .gz larger than this is not read back
DEDUPE_SECONDS = 300.0  # after the first batch, streams not sent again stop being checked


def _rotated_tail(path: str, gz: bool, n: int) -> bytes | None:
    """The last ``n`` bytes of a rotated file (decompressed); None when unreadable or too
    large a ``.gz``."""
    try:
        if not gz:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - n))
                return f.read()
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") > GZ_TAIL_LIMIT:  # ISIZE
                return None
        with gzip.open(path, "rb") as g:
            return g.read()[-n:]
    except (OSError, EOFError, zlib.error):
        return None


def read_tail(path: str, budget: int = TAIL_BYTES) -> tuple[bytes, bool]:
    """The last ``budget`` bytes of what was written to ``path`` (preceded by its newest
    rotated file's when the file is shorter), cut to whole lines; True when that is all
    there is."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        take = min(size, budget)
        f.seek(size - take)
        data = f.read()
    everything = take == size
    if everything and take < budget:
        older = [(p, gz) for p, gz, tmp in rotated_files(path) if not tmp]
        if older:
            before = _rotated_tail(*older[-1], budget - take)
            if before is None:
                everything = False
            else:
                data = before + data
                everything = len(older) == 1 and len(before) < budget - take
    if not everything:
        data = data[data.find(b"\n") + 1 :]  # the first line may be cut
    return data, everything


# Per container stream: (timestamp, messages of the lines that carried it oldest first, all
# of them known); per container: (newest event stamp, {(stamp, action)}).
TailLogs = dict[tuple[str, str], tuple[str, list[Any], bool]]
TailEvents = dict[str, tuple[str, set[tuple[str, Any]]]]


_STAMP = b',"timestamp":"'  # what precedes a record's timestamp in its JSON


def _prefix_of(d: dict[str, Any], line: bytes, at: int) -> tuple[str, str, str] | None:
    """(kind, container id, stream) of every line starting like ``line``, whose timestamp
    starts at ``at``; None when it does not (then such lines are parsed whole)."""
    ts, cid, kind, stream = (
        d.get("timestamp"),
        d.get("container_id"),
        d.get("kind"),
        d.get("stream"),
    )
    if not isinstance(ts, str) or not isinstance(cid, str) or not isinstance(kind, str):
        return None
    stamp = ts.encode()
    if line[at : at + len(stamp) + 1] != stamp + b'"':
        return None
    return kind, cid, stream if isinstance(stream, str) else ""


def scan_tail(data: bytes, everything: bool) -> tuple[TailLogs, TailEvents]:
    """The last log line of each container stream in ``data`` (whole NDJSON lines) with
    every line that shares its timestamp, and the events.

    Lines are read newest first. Every line of one container stream starts with the same
    bytes up to its timestamp (``Record.json``): one line per such prefix is parsed (and
    the timestamp checked to be where it is expected); of the others only the timestamp
    is sliced out, until a line that must be kept (the last lines of a stream, events)."""
    logs: dict[tuple[str, str], list[Any]] = {}
    closed: set[tuple[str, str]] = set()
    events: dict[str, tuple[str, set[tuple[str, Any]]]] = {}
    # prefix -> (kind, container id, stream), or None: parse every such line
    prefixes: dict[bytes, tuple[str, str, str] | None] = {}
    mark = len(_STAMP)
    lines = data.split(b"\n")
    lines.reverse()
    for line in lines:
        k = line.find(_STAMP)
        if k < 0:
            continue  # not a record
        prefix = line[:k]
        if prefix in prefixes:
            known = prefixes[prefix]
            if known is not None:
                kind_of, id_of, stream_of = known
                stamp_end = line.find(b'"', k + mark)
                stamp = line[k + mark : stamp_end].decode("ascii", "replace")
                if kind_of == "log":
                    key = (id_of, stream_of)
                    if key in closed:
                        continue
                    last = logs.get(key)
                    if last is not None and last[0] != stamp:
                        closed.add(key)
                        continue
                elif kind_of != "event":
                    continue
        # A line to keep (or the first of its prefix): parsed whole.
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(d, dict):
            continue
        if prefix not in prefixes:
            prefixes[prefix] = _prefix_of(d, line, k + mark)
        cid, ts = d.get("container_id"), d.get("timestamp")
        if not isinstance(cid, str) or not isinstance(ts, str):
            continue
        kind = d.get("kind")
        if kind == "log":
            stream = d.get("stream")
            if not isinstance(stream, str):
                continue
            key = (cid, stream)
            if key in closed:
                continue
            last = logs.get(key)
            if last is None:
                logs[key] = [ts, [d.get("message")]]
            elif last[0] == ts:
                last[1].append(d.get("message"))
            else:
                closed.add(key)
        elif kind == "event":
            newest, seen = events.setdefault(cid, (ts, set()))
            seen.add((ts, d.get("action")))
            if ts > newest:
                events[cid] = (ts, seen)
    out: TailLogs = {}
    for key, (ts, messages) in logs.items():
        messages.reverse()
        out[key] = (ts, messages, everything or key in closed)
    return out, events


class _Last:
    """The last log line an earlier run wrote of one container stream: its timestamp and
    the messages of the lines that carried it, oldest first. ``pos``: the index of the
    next one a record sent again should be, when known (``aligned``)."""

    __slots__ = ("aligned", "messages", "pos", "timestamp")

    def __init__(self, timestamp: str, messages: list[Any], pos: int, aligned: bool) -> None:
        self.timestamp = timestamp
        self.messages = messages
        self.pos = pos
        self.aligned = aligned


class _Written:
    """What earlier runs wrote last, learnt from the tails of the files; says which records
    sent again after a restart are already there (see the module docstring)."""

    def __init__(self) -> None:
        self.logs: dict[tuple[str, str], _Last] = {}
        self.events: dict[str, tuple[str, set[tuple[str, Any]]]] = {}
        self.ids: set[str] = set()  # containers with a stream still being checked
        self.passed: set[tuple[str, str]] = set()  # streams ("event": events) past it
        # Where reading resumes after the restart (the checkpoint), per container stream
        # (a container without one: from its beginning); None when not known.
        self.resume: dict[str, dict[str, Position]] | None = None
        self.until: float | None = None  # the check ends then (set at the first batch)
        self.skipped = 0

    def learn(self, logs: TailLogs, events: TailEvents) -> None:
        for key, (ts, messages, whole) in logs.items():
            if key in self.passed:
                continue
            known = self.logs.get(key)
            if known is not None and known.timestamp >= ts:
                continue
            # Reading resumes after the checkpoint's line: with the same timestamp, after
            # its count of lines that carried it (when the file holds them all).
            # Reading resumes after the checkpoint's line of the stream: with the same
            # timestamp, after its count of lines that carried it; a container without a
            # checkpoint is read from its start. A stream without a position beside one
            # with a position resumes at the other's timestamp: not known where.
            streams = self.resume.get(key[0]) if self.resume is not None else None
            at = streams.get(key[1]) if streams else None
            if at is not None and (
                at.timestamp > ts or (whole and at.timestamp == ts and at.count >= len(messages))
            ):
                # Reading resumes past the last line written (or, on a running agent, is
                # past it): nothing of this stream comes again.
                self.passed.add(key)
                continue
            if whole and self.resume is not None and (at is not None or not streams):
                pos = at.count if at is not None and at.timestamp == ts else 0
                self.logs[key] = _Last(ts, messages, min(pos, len(messages)), True)
            else:
                self.logs[key] = _Last(ts, messages, 0, False)
            self.ids.add(key[0])
        for cid, (newest, seen) in events.items():
            if (cid, "event") in self.passed:
                continue
            known_events = self.events.get(cid)
            if known_events is not None:
                newest, seen = max(newest, known_events[0]), seen | known_events[1]
            self.events[cid] = (newest, seen)
            self.ids.add(cid)

    def written(self, rec: Record) -> bool:
        """True when ``rec`` (of a container in ``ids``) is already in the files."""
        cid = rec.meta.id
        ts = rec.timestamp
        if rec.kind == "log":
            key = (cid, rec.stream or "stdout")
            last = self.logs.get(key)
            if last is None:
                return False
            if ts < last.timestamp:
                return True
            if ts == last.timestamp:
                messages = last.messages
                if last.aligned:
                    if last.pos < len(messages) and messages[last.pos] == rec.message:
                        last.pos += 1
                        return True
                elif messages.count(rec.message) == 1:
                    # Where reading resumed in these lines is not known: only a message
                    # that one of them carries says it (when several do, the record is
                    # taken as new: perhaps a line twice, never one lost); the next
                    # records must follow it.
                    last.pos = messages.index(rec.message) + 1
                    last.aligned = True
                    return True
            del self.logs[key]  # the first record past the last one written
            self._passed(key)
            return False
        if rec.kind == "event":
            events = self.events.get(cid)
            if events is None:
                return False
            if ts < events[0] or (ts, rec.action) in events[1]:
                return True  # older than the newest written, or that very event
            if ts > events[0]:
                del self.events[cid]
                self._passed((cid, "event"))
        return False

    def _passed(self, key: tuple[str, str]) -> None:
        self.passed.add(key)
        cid = key[0]
        logs = self.logs
        if cid not in self.events and (cid, "stdout") not in logs and (cid, "stderr") not in logs:
            self.ids.discard(cid)
