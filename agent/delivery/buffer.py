"""A disk-backed queue of records between an exporter's memory queue and the exporter.

Records are appended as NDJSON to numbered segment files (``00000001.seg`` …) in the
exporter's buffer directory; a cursor file says how far the exporter has taken them
(segment and byte offset). Appending counts as accepted (checkpoints advance past it), so a
backend that is down holds back neither the readers nor the other exporters until the size
cap is reached; then ``when_full`` applies: ``block`` (back-pressure), ``drop_newest`` or
``drop_oldest`` (whole oldest segments), every dropped record counted.

After a restart the exporter resumes at the cursor: records sent after the last cursor
write are sent again (at-least-once). A torn last line (a crash mid-append) is cut off at
start-up and counted; an unreadable cursor restarts from the oldest segment.

**A full disk.** An append is whole or nothing (``fsutil.append_whole``): when the disk
fills mid-write, the bytes it wrote are cut off again and ``append`` raises the OSError
with the segment exactly as it was, so the caller retries the same batch after a back-off
and nothing is torn, lost or stored twice. A cursor that cannot be saved is logged once
(``buffer_cursor_save_failed``) and saved at the next commit; a restart meanwhile resends
from the previous cursor (at-least-once, as after a crash). A read that fails is retried.

**Reading and dropping.** The exporter reads a batch, sends it, then commits it; until
then the batch is in flight. ``drop_oldest`` never deletes a segment a batch in flight
was read from: it drops the oldest whole segments after it (with nothing in flight, the
oldest unsent ones, the read position moving to the next segment), never the segment
being written, until the incoming batch fits under ``max_bytes``; when that cannot free
enough (everything else is in flight), the incoming batch is dropped instead. Every
dropped record is counted (``buffer_full``). A segment removed behind the buffer's back is
logged (``buffer_segment_missing``), its records counted (``segment_missing``), and
reading goes on with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path

import orjson
import structlog

from agent.fsutil import TruncateFailed, append_whole, atomic_write
from agent.record import ContainerMeta, Extra, Record
from agent.speedups import encode_ndjson

log = structlog.get_logger("agent.delivery.buffer")

SEGMENT_SUFFIX = ".seg"
CURSOR = "cursor.json"
READ_RETRY_SECONDS = 1.0  # after a read of a segment failed (EIO, EMFILE)

# A cursor: the (segment, offset) after a batch read, the bytes and lines it took, and the
# lines of that segment before the offset; opaque to the caller.
Cursor = tuple[int, int, int, int, int]


def record_from_json(line: bytes, metas: dict[tuple[str, str], ContainerMeta]) -> Record:
    """Rebuilds a record from its own JSON line (kept as its encoding: no re-encode)."""
    d = orjson.loads(line)
    key = (d["container_id"], d["container_name"])
    meta = metas.get(key)
    if meta is None or meta.labels != d.get("labels"):
        meta = metas[key] = ContainerMeta(
            d["container_id"],
            d["container_name"],
            d.get("image", ""),
            d.get("labels"),
            d.get("host", ""),
        )
    rec = Record(
        d["kind"],
        d["timestamp"],
        meta,
        d.get("stream"),
        d.get("message"),
        bool(d.get("truncated", False)),
        d.get("action"),
        d.get("attributes"),
        d.get("stats"),
    )
    if "level" in d or "lines" in d or "fields" in d:  # what processing added
        extra = Extra()
        extra.level = d.get("level")
        extra.fields = d.get("fields")
        extra.lines = d.get("lines", 1)
        rec.extra = extra
    rec._json = line
    return rec


class DiskBuffer:
    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        when_full: str = "block",
        fsync: bool = True,
        segment_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.fsync = fsync
        self.segment_bytes = min(segment_bytes, max(4096, max_bytes // 4))
        self.size = 0  # unsent bytes
        self.records = 0  # unsent records
        self.dropped: dict[str, int] = {}
        self.appended = 0
        self.corrupt_bytes = 0
        self._segments: list[int] = []
        # Per segment, the bytes and lines of complete appends: reads never go past them.
        self._seg_bytes: dict[int, int] = {}
        self._seg_lines: dict[int, int] = {}
        self._write_fd: int | None = None
        self._write_size = 0
        self._roll = False  # the segment being written vanished: start a new one
        self._cut: int | None = None  # cut the segment being written back to this first
        self._read_seg = 0
        self._read_off = 0
        self._read_lines = 0  # lines of the read segment before the read offset
        self._inflight: tuple[int, int] | None = None  # where a batch read and not committed ends
        # Segments, sizes and positions are shared by the writer, the reader and the
        # dropper, each in a thread of its own; cursor saves go one at a time.
        self._lock = threading.Lock()
        self._cursor_lock = threading.Lock()
        self._cursor_error = ""
        self._read_error = ""
        self._not_empty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._metas: dict[tuple[str, str], ContainerMeta] = {}

    # -- start-up ---------------------------------------------------------------------------

    def open(self) -> None:
        """Scans the directory (blocking: call in a thread once at start)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segments = sorted(
            int(p.stem) for p in self.dir.glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()
        )
        seg, off = self._load_cursor()
        if self._segments:
            if seg not in self._segments:
                seg, off = self._segments[0], 0
            # Segments before the cursor were fully sent: remove them.
            for old in [s for s in self._segments if s < seg]:
                self._unlink(old)
            self._segments = [s for s in self._segments if s >= seg]
            self._repair_tail(self._segments[-1])
            off = min(off, self._path(seg).stat().st_size)
        else:
            seg, off = 1, 0
            self._segments = [1]
            self._path(1).touch()
        for s in self._segments:
            self._seg_bytes[s], self._seg_lines[s] = self._count(s)
        self._read_seg, self._read_off = seg, off
        self._read_lines = self._count(seg, off)[1]
        last = self._segments[-1]
        self._write_size = self._seg_bytes[last]
        self._write_fd = os.open(self._path(last), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = sum(self._seg_bytes.values()) - off
        self.records = sum(self._seg_lines.values()) - self._read_lines
        if self.size:
            self._not_empty.set()
            log.info("buffer_resumed", path=str(self.dir), bytes=self.size, records=self.records)
        self._update_room()

    def _count(self, seg: int, end: int | None = None) -> tuple[int, int]:
        """Bytes and lines of a segment (up to ``end``)."""
        size = lines = 0
        with open(self._path(seg), "rb") as f:
            while chunk := f.read(1 << 20 if end is None else min(1 << 20, end - size)):
                size += len(chunk)
                lines += chunk.count(b"\n")
        return size, lines

    def _repair_tail(self, seg: int) -> None:
        path = self._path(seg)
        size = path.stat().st_size
        if not size:
            return
        with open(path, "rb+") as f:
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
            if tail.endswith(b"\n"):
                return
            cut = tail.rfind(b"\n")
            keep = size - len(tail) + cut + 1 if cut >= 0 else size - len(tail)
            f.truncate(keep)
        self.corrupt_bytes += size - keep
        log.warning("buffer_torn_tail_cut", path=str(path), bytes=size - keep)

    def _load_cursor(self) -> tuple[int, int]:
        try:
            doc = orjson.loads((self.dir / CURSOR).read_bytes())
            return int(doc["segment"]), int(doc["offset"])
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError) as exc:
            log.error(
                "buffer_cursor_unreadable",
                path=str(self.dir / CURSOR),
                error=str(exc),
                policy="resend from the oldest segment",
            )
            return 0, 0

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}{SEGMENT_SUFFIX}"

    def _unlink(self, seg: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(seg).unlink()

    def _forget(self, seg: int) -> None:
        """Takes a segment out of the bookkeeping (under the lock)."""
        self._segments.remove(seg)
        self._seg_bytes.pop(seg, None)
        self._seg_lines.pop(seg, None)

    def _count_dropped(self, reason: str, records: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + records

    # -- appending --------------------------------------------------------------------------

    def has_room(self) -> bool:
        return self.size < self.max_bytes

    def _update_room(self) -> None:
        if self.has_room():
            self._room.set()
        else:
            self._room.clear()
        if self.size:
            self._empty.clear()
        else:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    async def append(self, batch: list[Record]) -> None:
        """Writes a batch to disk (in a thread); applies ``when_full`` at the size cap.

        Raises OSError (a full disk) having stored nothing of the batch: the caller backs
        off and appends the same batch again."""
        if not batch:
            return
        if not self.has_room():
            if self.when_full == "drop_newest":
                self._count_dropped("buffer_full", len(batch))
                return
            if self.when_full == "block":
                while not self.has_room():
                    await self._room.wait()
        data = encode_ndjson(batch)
        if self.when_full == "drop_oldest" and self.size + len(data) > self.max_bytes:
            fits = await asyncio.to_thread(self._drop_oldest, len(data))
            self._update_room()
            if not fits:
                self._count_dropped("buffer_full", len(batch))
                log.warning("buffer_dropped_newest", path=str(self.dir), records=len(batch))
                return
        await asyncio.to_thread(self._write, data, len(batch))
        self._not_empty.set()
        self._update_room()

    def _write(self, data: bytes, lines: int) -> None:
        assert self._write_fd is not None
        if self._cut is not None:  # a failed append could not be undone: now
            os.ftruncate(self._write_fd, self._cut)
            self._cut = None
        if self._roll or (self._write_size and self._write_size + len(data) > self.segment_bytes):
            seg = self._segments[-1] + 1
            # The new segment is opened before the old one is closed: a failure leaves the
            # buffer writing where it was.
            fd = os.open(self._path(seg), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            old = self._write_fd
            with self._lock:
                self._segments.append(seg)
                self._seg_bytes[seg] = self._seg_lines[seg] = 0
                self._write_fd, self._write_size, self._roll = fd, 0, False
            with contextlib.suppress(OSError):
                os.close(old)
        try:
            append_whole(self._write_fd, data, self.fsync)
        except TruncateFailed as exc:
            self._cut = exc.size
            raise
        with self._lock:
            seg = self._segments[-1]
            self._write_size += len(data)
            self._seg_bytes[seg] += len(data)
            self._seg_lines[seg] += lines
            self.size += len(data)
            self.records += lines
            self.appended += lines

    def _drop_oldest(self, need: int) -> bool:
        """Drops whole unsent segments, oldest first, until ``need`` more bytes fit under
        the cap: never one a batch in flight was read from, never the one being written.
        True when the incoming batch may be written."""
        moved = False
        with self._lock:
            last = self._segments[-1]
            after = self._inflight[0] if self._inflight is not None else 0
            while self.size + need > self.max_bytes:
                seg = next((s for s in self._segments if s > after and s != last), None)
                if seg is None:
                    break
                size, lines = self._seg_bytes[seg], self._seg_lines[seg]
                if seg == self._read_seg:  # nothing in flight: the read position moves on
                    size -= self._read_off
                    lines -= self._read_lines
                    nxt = next(s for s in self._segments if s > seg)
                    self._read_seg, self._read_off, self._read_lines = nxt, 0, 0
                    moved = True
                self._forget(seg)
                self._unlink(seg)
                self.size -= size
                self.records -= lines
                self._count_dropped("buffer_full", lines)
                log.warning("buffer_dropped_oldest", path=str(self._path(seg)), records=lines)
            fits = self.size + need <= self.max_bytes or not self.size
        if moved:
            self._save_cursor()
        return fits

    # -- taking -----------------------------------------------------------------------------

    async def read(self, max_records: int) -> tuple[list[Record], Cursor]:
        """The next records after the cursor (waits while empty) and the cursor after them;
        pass that to ``commit`` once the exporter accepted them."""
        while True:
            while not self.size:
                self._not_empty.clear()
                await self._not_empty.wait()
            try:
                records, cursor = await asyncio.to_thread(self._read, max_records)
            except OSError as exc:  # the worker must live on: try again a little later
                if not self._read_error:
                    log.error("buffer_read_failed", path=str(self.dir), error=str(exc))
                self._read_error = str(exc)
                await asyncio.sleep(READ_RETRY_SECONDS)
                continue
            self._read_error = ""
            self._update_room()
            return records, cursor

    def _read(self, max_records: int) -> tuple[list[Record], Cursor]:
        with self._lock:
            seg, off, seg_lines = self._read_seg, self._read_off, self._read_lines
            out: list[Record] = []
            consumed = lines = 0
            chunk = 4 << 20
            while len(out) < max_records:
                end = self._seg_bytes.get(seg, 0)  # complete appends only
                if off < end:
                    want = min(chunk, end - off)
                    try:
                        with open(self._path(seg), "rb") as f:
                            f.seek(off)
                            data = f.read(want)
                    except FileNotFoundError:
                        if consumed:
                            break  # hand out what was read; the next read meets it again
                        seg, off, seg_lines = self._lost(seg, off, seg_lines)
                        continue
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        if len(data) == chunk:  # one line longer than the chunk: read more
                            chunk *= 4
                            continue
                        # Shorter than appended (cut behind the buffer's back): skip it.
                        self.corrupt_bytes += end - off
                        consumed += end - off
                        off = end
                        continue
                    for line in data[: cut + 1].split(b"\n")[:-1]:
                        if len(out) >= max_records:
                            break
                        try:
                            out.append(record_from_json(line, self._metas))
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            self.corrupt_bytes += len(line) + 1
                            log.warning("buffer_record_unreadable", segment=seg, bytes=len(line))
                        off += len(line) + 1
                        consumed += len(line) + 1
                        lines += 1
                        seg_lines += 1
                    continue
                if seg == self._segments[-1]:
                    break  # the segment being written: nothing more yet
                seg, off, seg_lines = next(s for s in self._segments if s > seg), 0, 0
            self._inflight = (seg, off)
            return out, (seg, off, consumed, lines, seg_lines)

    def _lost(self, seg: int, off: int, seg_lines: int) -> tuple[int, int, int]:
        """A segment vanished (under the lock, nothing of it in flight): its unsent records
        are counted and logged; returns where reading goes on."""
        size = self._seg_bytes.get(seg, 0) - off
        lines = self._seg_lines.get(seg, 0) - seg_lines
        self.size -= size
        self.records -= lines
        self._count_dropped("segment_missing", lines)
        log.error("buffer_segment_missing", path=str(self._path(seg)), records=lines, bytes=size)
        if seg == self._segments[-1]:
            # The segment being written: what is in it is gone; the next append starts a
            # new one, and reading goes on from its end meanwhile.
            self._roll = True
            at = (seg, self._seg_bytes.get(seg, 0), self._seg_lines.get(seg, 0))
        else:
            nxt = next(s for s in self._segments if s > seg)
            self._forget(seg)
            at = (nxt, 0, 0)
        if seg == self._read_seg or self._read_seg not in self._segments:
            self._read_seg, self._read_off, self._read_lines = at
        return at

    async def commit(self, cursor: Cursor) -> None:
        """The batch read with ``cursor`` was accepted: the read position moves past it.
        Never raises for a cursor that cannot be saved (see the module docstring)."""
        await asyncio.to_thread(self._commit, cursor)
        self._update_room()

    def _commit(self, cursor: Cursor) -> None:
        seg, off, consumed, lines, seg_lines = cursor
        with self._lock:
            self._inflight = None
            self._read_seg, self._read_off, self._read_lines = seg, off, seg_lines
            self.size -= consumed
            self.records -= lines
            old = [s for s in self._segments if s < seg]
            for s in old:
                self._forget(s)
        for s in old:
            with contextlib.suppress(OSError):
                self._unlink(s)
        self._save_cursor()

    def _save_cursor(self) -> None:
        with self._cursor_lock:
            with self._lock:
                body = orjson.dumps({"segment": self._read_seg, "offset": self._read_off})
            try:
                atomic_write(self.dir / CURSOR, body, self.fsync)
            except OSError as exc:
                if not self._cursor_error:
                    log.error(
                        "buffer_cursor_save_failed",
                        path=str(self.dir / CURSOR),
                        error=str(exc),
                        policy="saved at the next commit; a restart meanwhile resends "
                        "from the previous cursor",
                    )
                self._cursor_error = str(exc)
                return
            if self._cursor_error:
                log.info("buffer_cursor_saved", path=str(self.dir / CURSOR))
                self._cursor_error = ""

    def close(self) -> None:
        if self._write_fd is not None:
            if self.fsync:
                try:
                    os.fsync(self._write_fd)
                except OSError as exc:
                    log.error("buffer_fsync_failed", path=str(self.dir), error=str(exc))
            os.close(self._write_fd)
            self._write_fd = None
