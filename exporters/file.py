"""The file exporter: appends records as NDJSON, one write (and optionally one fsync) a batch.

Optionally:

* **path template**: ``path`` may contain ``{container_name}`` / ``{container_id}`` and
  strftime fields (``%Y-%m-%d``, ``%H``, …) filled from each record's own timestamp (UTC),
  so records go to per-container and/or per-date files. At most ``max_open_files`` files
  stay open; the least recently written one is closed first.
* **rotation** (``rotate``): before a write would take the current file past
  ``rotate.max_bytes``, or once the file is ``rotate.max_seconds`` old, it is renamed to
  ``<path>.<UTC time>`` (``records.ndjson.20261128T101040.123456Z``) and a new file is
  started; a batch is split between files at record boundaries. ``rotate.compress`` gzips
  rotated files in the background (``….gz``; ``close`` keeps at it for up to 5 s, and
  what is left or was interrupted is compressed at the next start); only the newest
  ``rotate.max_files`` rotated files of each path are kept.

**A full disk** (ENOSPC, or any failed write) never leaves a cut record or a record twice.
Files are written through raw descriptors with ``fsutil.append_whole``: every byte of a
write (one per batch and file: a batch split between files by a template or a rotation is
several) or none, the bytes of a failed write cut off again so the file ends, exactly,
after its last complete record. ``send`` then raises and the pipeline retries the same
batch (the same list) after a back-off: the plain path writes it whole again; for a
template or rotation the exporter remembers, per file path, how many of the batch's
records are written and goes on after them, with the same routing (so a retry neither
writes a record twice nor skips one). A gzip of a rotated file that fails (the disk is
full) leaves the rotated file as it was (``atomic_file`` removes its temp file) and is
tried again ``COMPRESS_RETRY_SECONDS`` later, and at the next start.

**Exactly once after a crash.** The pipeline is at-least-once: after a SIGKILL, the
records accepted after the last checkpoint write are read and sent again. This exporter
drops that overlap where it can see it. The first time a run opens a file (the plain path
at start, a template path when first written to), it cuts a torn last line (a write the
crash interrupted; its records come again), then reads back the file's last
``TAIL_BYTES`` (16 MiB; with the newest rotated file's tail when the file is shorter) and
notes, per container stream, the last log line written (its timestamp, and the lines that
carried that timestamp), and per container the events written. A record sent again is
then skipped while it is at or before that point: a log line with an older timestamp, or
with that timestamp and the message of the line expected there, counted from where the
checkpoint says reading resumes (``bind``); an event written before (container,
timestamp, action), or older than the newest one written. When where reading resumes is
not known (behind a disk buffer), a line with that timestamp is skipped only when exactly
one of the lines written with it carries its message: perhaps a line twice, never one
lost. The first record past that point ends the check of its stream; streams not sent
again stop being checked ``DEDUPE_SECONDS`` after the first batch. Then no per-record work
is left: the check costs nothing on the normal path.

**Which sinks are exactly-once.** The file exporter, across a crash or a SIGKILL, when
what it wrote after the last checkpoint write lies within the last ``TAIL_BYTES`` of its
files (at very high rates the oldest of those records can be written twice) and a
stream's timestamps do not go backwards; across a SIGTERM restart every exporter is (the
pipeline drains, the checkpoint is written last). Sinks that cannot be read back, the
http exporter's backends, are at-least-once: after a crash they receive up to one
checkpoint interval of records again, or, behind a disk buffer, what the buffer sent
after its last cursor write.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import io
import operator
import os
import re
import shutil
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson
import structlog
from pydantic import Field

from agent.fsutil import TruncateFailed, append_whole, atomic_file
from agent.positions import Position
from agent.record import ContainerMeta, Record
from agent.section import Section
from agent.speedups import encode_ndjson
from exporters.base import Exporter, ExporterConfig, Health, register
from exporters.http.formats import ts_seconds_ns

log = structlog.get_logger("exporters.file")

_NAME_FIELDS = ("{container_name}", "{container_id}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
CLOSE_GZIP_SECONDS = 5.0  # how long close() keeps compressing rotated files
COMPRESS_RETRY_SECONDS = 30.0  # after a gzip failed (a full disk): the next try
TAIL_BYTES = 16 * 1024 * 1024  # read back from a file first opened in a run (duplicates)
GZ_TAIL_LIMIT = 256 * 1024 * 1024  # a rotated .gz larger than this is not read back
DEDUPE_SECONDS = 300.0  # after the first batch, streams not sent again stop being checked

_container_id = operator.attrgetter("meta.id")


class RotateConfig(Section):
    max_bytes: int | None = Field(
        None, ge=1024, description="Rotate before a file would grow past this size (bytes)."
    )
    max_seconds: float | None = Field(
        None,
        gt=0,
        description="Rotate a file this long after the agent opened it (or it was last "
        "written, for a file found at start), at its next write.",
    )
    max_files: int | None = Field(
        10, ge=1, description="Rotated files kept per path, newest first (null: all)."
    )
    compress: bool = Field(False, description="gzip rotated files (`.gz`), in the background.")


class FileConfig(ExporterConfig):
    type: Literal["file"] = Field(description="Append NDJSON records to a file.")
    path: str = Field(
        description="File to append to; its directory is created if missing. May contain "
        "`{container_name}`, `{container_id}` and strftime fields (`%Y-%m-%d`) taken from "
        "each record's timestamp (UTC)."
    )
    fsync: bool = Field(False, description="fsync after every batch (durable, slower).")
    rotate: RotateConfig = Field(
        default_factory=RotateConfig, description="Rotation (off unless a limit is set)."
    )
    max_open_files: int = Field(
        64, ge=1, description="Files of a path template kept open at once (least recent closed)."
    )


class _Open:
    __slots__ = ("file", "opened", "path", "size")

    def __init__(self, path: str, file: io.FileIO, size: int, opened: float) -> None:
        self.path = path
        self.file = file
        self.size = size
        self.opened = opened


def _safe(value: str | None) -> str:
    """A container name or id as one path component."""
    if not value:
        return "_"
    value = _UNSAFE.sub("_", value)
    return "_" + value if value.startswith(".") else value


def _stamp(now: float) -> str:
    micros = int(now * 1_000_000) % 1_000_000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{micros:06d}Z"


def _rotated_pattern(path: str) -> re.Pattern[str]:
    base = re.escape(os.path.basename(path))
    return re.compile(base + r"\.(\d{8}T\d{6}\.\d{6}Z)(?:-(\d+))?(\.gz)?(\.tmp)?$")


def rotated_files(path: str) -> list[tuple[str, bool, bool]]:
    """Rotated files of ``path``, oldest first: (file, compressed, unfinished temp file)."""
    directory = os.path.dirname(path) or "."
    pattern = _rotated_pattern(path)
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        m = pattern.match(name)
        if m:
            key = (m[1], int(m[2] or 0))
            found.append((key, os.path.join(directory, name), bool(m[3]), bool(m[4])))
    found.sort()
    return [(p, gz, tmp) for _, p, gz, tmp in found]


def gzip_file(path: str) -> str:
    """``path`` -> ``path.gz`` (through ``path.gz.tmp``, fsynced, then renamed); the
    original is removed. Returns the new name."""
    target = path + ".gz"
    with (
        open(path, "rb") as src,
        atomic_file(target) as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
    ):
        shutil.copyfileobj(src, out, 1024 * 1024)
    os.unlink(path)
    return target


# -- what earlier runs wrote (exactly once after a crash) ----------------------------------


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


@register
class FileExporter(Exporter):
    type_name = "file"
    config_class = FileConfig
    config: FileConfig

    def __init__(self, name: str, config: FileConfig) -> None:
        super().__init__(name, config)
        path = config.path
        self._by_name = any(f in path for f in _NAME_FIELDS)
        self._by_date = "%" in path
        self._templated = self._by_name or self._by_date
        rot = config.rotate
        self._rotating = rot.max_bytes is not None or rot.max_seconds is not None
        self._simple = not self._templated and not self._rotating  # one file, one write
        self._files: collections.OrderedDict[str, _Open] = collections.OrderedDict()
        self._seen: set[str] = set()  # paths first opened (leftovers, tails) this run
        self._paths: dict[tuple[ContainerMeta, str], str] = {}
        self._lock = threading.Lock()  # file handles: the writer thread vs flush/close
        self._error: str = ""
        self._cut: dict[str, int] = {}  # path -> size: a failed write not yet cut off
        self._compress: asyncio.Queue[str] | None = None
        self._compressor: asyncio.Task[None] | None = None
        self._compressing: asyncio.Future[None] | None = None
        self._compress_later: dict[str, asyncio.TimerHandle] = {}
        self._compress_failing: set[str] = set()
        # The last batch whose write failed, as it was to be written: the pipeline sends
        # the same list again, and it is written from where it stopped, routed the same.
        self._retry_batch: Sequence[Record] | None = None
        self._retry_data = b""
        self._retry_groups: dict[str, list[bytes]] = {}
        self._retry_done: dict[str, int] = {}
        self._written: _Written | None = _Written()  # None once the check is over
        self.duplicates_skipped = 0  # records an earlier run had written (after a crash)
        self.rotations = 0

    # -- life cycle --------------------------------------------------------------------------

    def bind(self, state: Any) -> None:
        """Notes where reading resumes after this start (the checkpoint), per container
        stream: records sent again start there (see the module docstring). Behind a disk
        buffer they start at the buffer's cursor instead, which is not known here. Bound
        on a running agent (a reload), these are where the readers are: past everything
        written, so nothing is taken for a record sent again."""
        followers = getattr(state, "followers", None)
        positions = getattr(followers, "positions", None)
        resume: dict[str, dict[str, Position]] = {}
        if isinstance(positions, dict):
            for cid, streams in positions.items():
                resume[cid] = {s: Position(p.timestamp, p.count) for s, p in streams.items()}
        else:
            return
        pipeline = getattr(state, "pipeline", None)
        for runner in getattr(pipeline, "runners", ()):
            if getattr(runner, "exporter", None) is self and getattr(runner, "buffer", None):
                return
        if self._written is not None:
            self._written.resume = resume

    async def start(self) -> None:
        if self.config.rotate.compress:
            self._compress = asyncio.Queue()
            self._compressor = asyncio.create_task(self._compress_loop(), name="file-gzip")
        if not self._templated:
            leftovers = await asyncio.to_thread(self._open_plain)
            self._queue_compress(leftovers)

    def _open_plain(self) -> list[str]:
        with self._lock:
            return self._first_open(self.config.path)

    async def send(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        again = batch is self._retry_batch  # the pipeline retries the batch that failed
        self._retry_batch = None
        if self._simple:
            data = self._retry_data if again else self._encode(batch)
            self._retry_data = b""
            if not data:
                return
            # Encoding stays on the loop (it is CPU, no GIL release); the write goes to a thread.
            try:
                await asyncio.to_thread(self._write_plain, data)
            except OSError:
                self._retry_batch, self._retry_data = batch, data
                raise
            return
        if again:
            groups, done = self._retry_groups, self._retry_done
        else:
            groups, done = await self._groups(batch), {}
        self._retry_groups, self._retry_done = {}, {}
        rotated: list[str] = []
        try:
            await asyncio.to_thread(self._write_groups, groups, done, rotated)
        except OSError:
            self._retry_batch, self._retry_groups, self._retry_done = batch, groups, done
            raise
        finally:
            self._queue_compress(rotated)

    async def flush(self) -> None:
        await asyncio.to_thread(self._flush_all)

    async def close(self) -> None:
        for handle in self._compress_later.values():
            handle.cancel()  # what waits for another try is compressed at the next start
        self._compress_later.clear()
        if self._compressor is not None and self._compress is not None:
            # Compress what is queued for up to CLOSE_GZIP_SECONDS; the file in progress is
            # always finished, the rest is compressed at the next start.
            self._compress.put_nowait("")  # the end
            try:
                await asyncio.wait_for(asyncio.shield(self._compressor), CLOSE_GZIP_SECONDS)
            except TimeoutError:
                self._compressor.cancel()
                await asyncio.gather(self._compressor, return_exceptions=True)
            self._compressor = None
            if self._compressing is not None:
                await asyncio.gather(self._compressing, return_exceptions=True)
        await asyncio.to_thread(self._close_all)

    def target(self) -> str:
        return f"file:{os.path.abspath(self.config.path)}"

    def health(self) -> Health:
        return Health(not self._error, self._error)

    # -- what an earlier run wrote (see the module docstring) -------------------------------

    def _encode(self, batch: Sequence[Record]) -> bytes:
        if self._written is not None:
            batch = self._skip_written(batch)
            if not batch:
                return b""
        return encode_ndjson(batch)

    def _skip_written(self, batch: Sequence[Record]) -> Sequence[Record]:
        """``batch`` without the records an earlier run already wrote."""
        w = self._written
        assert w is not None
        now = time.monotonic()
        if w.until is None:
            w.until = now + DEDUPE_SECONDS
        elif now > w.until:
            self._end_check()
            return batch
        ids = w.ids
        if not ids or ids.isdisjoint(map(_container_id, batch)):  # C speed
            if not ids and not self._templated:  # no other file will be opened: done
                self._end_check()
            return batch
        kept = [r for r in batch if r.meta.id not in ids or not w.written(r)]
        skipped = len(batch) - len(kept)
        if skipped:
            w.skipped += skipped
            self.duplicates_skipped += skipped
        if not ids and not self._templated:
            self._end_check()
        return kept

    def _end_check(self) -> None:
        w = self._written
        self._written = None
        if w is not None and w.skipped:
            log.info("file_duplicates_skipped", exporter=self.name, records=w.skipped)

    def _first_open(self, path: str) -> list[str]:
        """Opens ``path`` for the first time this run (under the lock): cuts a torn last
        line, learns what was written last, and returns the rotated files left to
        compress."""
        of = self._get(path)
        if of.size:
            self._cut_torn_tail(of)
        if self._written is not None:  # (an empty file: its newest rotated file's tail)
            try:
                logs, events = scan_tail(*read_tail(path))
            except OSError as exc:
                log.warning("file_tail_unreadable", exporter=self.name, path=path, error=str(exc))
            else:
                self._written.learn(logs, events)
        self._seen.add(path)
        return self._leftovers(path)

    def _cut_torn_tail(self, of: _Open) -> None:
        """A last line without its newline is a write a crash interrupted: it is cut off
        (the records in it are sent again after the restart)."""
        with open(of.path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            if not end:
                return
            f.seek(end - 1)
            if f.read(1) == b"\n":
                return
            keep = pos = end
            while pos > 0:
                step = min(1 << 20, pos)
                pos -= step
                f.seek(pos)
                nl = f.read(step).rfind(b"\n")
                if nl >= 0:
                    keep = pos + nl + 1
                    break
            else:
                keep = 0
        os.ftruncate(of.file.fileno(), keep)
        of.size = keep
        log.warning("file_torn_tail_cut", exporter=self.name, path=of.path, bytes=end - keep)

    # -- routing records to files ------------------------------------------------------------

    def _path_of(self, rec: Record) -> str:
        ts = rec.timestamp
        key = (rec.meta, ts[:19] if self._by_date else "")
        path = self._paths.get(key)
        if path is None:
            path = self.config.path
            if self._by_date:
                sec, _ = ts_seconds_ns(ts)
                path = time.strftime(path, time.gmtime(sec))
            if self._by_name:
                meta = rec.meta
                path = path.replace("{container_name}", _safe(meta.name))
                path = path.replace("{container_id}", _safe(meta.id))
            if len(self._paths) > 10_000:
                self._paths.clear()
            self._paths[key] = path
        return path

    def _route(self, batch: Sequence[Record]) -> dict[str, list[bytes]]:
        if not self._templated:
            return {self.config.path: [r.json() for r in batch]}
        out: dict[str, list[bytes]] = {}
        for rec in batch:
            path = self._path_of(rec)
            parts = out.get(path)
            if parts is None:
                out[path] = parts = []
            parts.append(rec.json())
        return out

    async def _groups(self, batch: Sequence[Record]) -> dict[str, list[bytes]]:
        """The batch's records by file (files first opened here are looked at first),
        without those an earlier run wrote."""
        groups = self._route(batch)
        new = [p for p in groups if p not in self._seen]
        if new:
            self._queue_compress(await asyncio.to_thread(self._open_new, new))
        if self._written is not None:
            kept = self._skip_written(batch)
            if len(kept) != len(batch):
                groups = self._route(kept) if kept else {}
        return groups

    def _open_new(self, paths: list[str]) -> list[str]:
        leftovers: list[str] = []
        with self._lock:
            for path in paths:
                try:
                    leftovers += self._first_open(path)
                except OSError as exc:
                    self._failed(path, exc)
                    raise
        return leftovers

    # -- writing (in a worker thread) --------------------------------------------------------

    def _get(self, path: str) -> _Open:
        """The open file for ``path`` (opened, its directory made, if needed); LRU-bounded."""
        of = self._files.get(path)
        if of is not None:
            self._files.move_to_end(path)
            return of
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: a write either is all on disk or raises having written nothing.
        f = open(p, "ab", buffering=0)  # noqa: SIM115 - closed by _close / eviction
        try:
            cut = self._cut.get(path)
            if cut is not None:  # a failed write that could not be cut off then
                if os.fstat(f.fileno()).st_size > cut:
                    os.ftruncate(f.fileno(), cut)
                del self._cut[path]
            st = os.fstat(f.fileno())
        except OSError:
            f.close()
            raise
        now = time.time()
        opened = min(now, st.st_mtime) if st.st_size else now
        of = _Open(path, f, st.st_size, opened)
        self._files[path] = of
        while len(self._files) > self.config.max_open_files:
            _, old = self._files.popitem(last=False)
            with contextlib.suppress(OSError):
                old.file.close()
        return of

    def _write_plain(self, data: bytes) -> None:
        with self._lock:
            try:
                of = self._get(self.config.path)
                append_whole(of.file.fileno(), data, self.config.fsync)
                of.size += len(data)
                self._error = ""
            except OSError as exc:
                self._failed(self.config.path, exc)
                raise

    def _write_groups(
        self, groups: dict[str, list[bytes]], done: dict[str, int], rotated: list[str]
    ) -> None:
        """Writes each path's records (past the ``done[path]`` first ones), rotating as
        configured; notes progress in ``done`` and rotated files in ``rotated``."""
        with self._lock:
            for path, parts in groups.items():
                if done.get(path, 0) >= len(parts):
                    continue
                try:
                    self._write_parts(path, parts, rotated, done)
                except OSError as exc:
                    self._failed(path, exc)
                    raise
            self._error = ""

    def _write_parts(
        self, path: str, parts: list[bytes], rotated: list[str], done: dict[str, int]
    ) -> None:
        rot = self.config.rotate
        max_bytes = rot.max_bytes
        if path not in self._seen:
            rotated.extend(self._first_open(path))
        of = self._get(path)
        max_age = rot.max_seconds
        fsync = self.config.fsync
        i, n = done.get(path, 0), len(parts)
        while i < n:
            if of.size and max_age is not None and time.time() - of.opened >= max_age:
                of = self._rotate(of, rotated)
            j = i
            if max_bytes is None:
                j = n
                size = sum(map(len, parts[i:])) + n - i
            else:
                size = 0
                room = max_bytes - of.size
                while j < n and size + len(parts[j]) + 1 <= room:
                    size += len(parts[j]) + 1
                    j += 1
                if j == i:
                    if of.size:  # the next record does not fit: a new file
                        of = self._rotate(of, rotated)
                        continue
                    size = len(parts[i]) + 1  # larger than max_bytes on its own: alone
                    j = i + 1
            chunk = parts[i:j]
            chunk.append(b"")
            # Whole or nothing: after a failure the file ends after its last record, and
            # ``done`` says where the retry of this batch goes on.
            append_whole(of.file.fileno(), b"\n".join(chunk), fsync and j == n)
            of.size += size
            done[path] = i = j

    def _rotate(self, of: _Open, rotated: list[str]) -> _Open:
        """Closes ``of``, renames it to its rotated name, opens a new file at its path."""
        path = of.path
        if self.config.fsync:
            os.fsync(of.file.fileno())
        of.file.close()
        self._files.pop(path, None)
        base = f"{path}.{_stamp(time.time())}"
        target, k = base, 0
        while os.path.exists(target) or os.path.exists(target + ".gz"):
            k += 1
            target = f"{base}-{k}"
        os.rename(path, target)
        self.rotations += 1
        if self.config.rotate.compress:
            rotated.append(target)
        self._prune(path)
        return self._get(path)

    def _prune(self, path: str) -> None:
        keep = self.config.rotate.max_files
        if keep is None:
            return
        # A file being compressed is there twice for a moment (``X.gz`` renamed into
        # place, ``X`` not yet removed): counted once, both removed.
        names = [p[:-3] if gz else p for p, gz, tmp in rotated_files(path) if not tmp]
        done = list(dict.fromkeys(names))
        for old in done[: max(0, len(done) - keep)]:
            for name in (old, old + ".gz"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)

    def _leftovers(self, path: str) -> list[str]:
        """Rotated files a previous run did not compress (and its half-written ``.tmp``)."""
        if not self.config.rotate.compress:
            return []
        out = []
        for p, gz, tmp in rotated_files(path):
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(p)
            elif not gz:
                out.append(p)
        return out

    def _failed(self, path: str, exc: OSError) -> None:
        self._error = f"{path}: {exc.strerror or exc}"
        if isinstance(exc, TruncateFailed):
            self._cut[path] = exc.size  # cut when the file is opened again
        # Reopen on the next try: the file may have been removed or the disk freed.
        of = self._files.pop(path, None)
        if of is not None:
            with contextlib.suppress(OSError):
                of.file.close()

    def _flush_all(self) -> None:
        with self._lock:
            for of in self._files.values():
                with contextlib.suppress(OSError):
                    of.file.flush()

    def _close_all(self) -> None:
        with self._lock:
            while self._files:
                _, of = self._files.popitem()
                with contextlib.suppress(OSError):
                    of.file.close()

    # -- compression of rotated files (a background task, one file at a time) --------------

    def _queue_compress(self, paths: list[str]) -> None:
        if self._compress is not None:
            for p in paths:
                self._compress.put_nowait(p)

    async def _compress_loop(self) -> None:
        assert self._compress is not None
        while True:
            path = await self._compress.get()
            if not path:
                return
            self._compressing = asyncio.ensure_future(asyncio.to_thread(self._compress_one, path))
            try:
                await asyncio.shield(self._compressing)
            except OSError as exc:
                # A full disk: the rotated file stays as it is; tried again later.
                delay = COMPRESS_RETRY_SECONDS
                if path not in self._compress_failing:
                    self._compress_failing.add(path)
                    log.warning(
                        "file_compress_failed",
                        exporter=self.name,
                        path=path,
                        error=str(exc),
                        retry_in=delay,
                    )
                loop = asyncio.get_running_loop()
                self._compress_later[path] = loop.call_later(delay, self._compress_again, path)
            else:
                if path in self._compress_failing:
                    self._compress_failing.discard(path)
                    log.info("file_compress_recovered", exporter=self.name, path=path)

    def _compress_again(self, path: str) -> None:
        self._compress_later.pop(path, None)
        self._queue_compress([path])

    def _compress_one(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
            gzip_file(path)
        m = re.match(r"(.*)\.\d{8}T\d{6}\.\d{6}Z(?:-\d+)?$", path)
        if m:
            self._prune(m[1])
