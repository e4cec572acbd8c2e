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
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import structlog

from agent.fsutil import atomic_write
from agent.record import ContainerMeta, Record
from agent.speedups import encode_ndjson

log = structlog.get_logger("agent.delivery.buffer")

SEGMENT_SUFFIX = ".seg"
CURSOR = "cursor.json"


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
        self.records = 0  # unsent records (estimated at start-up by counting lines)
        self.dropped: dict[str, int] = {}
        self.appended = 0
        self.corrupt_bytes = 0
        self._segments: list[int] = []
        self._write_fd: int | None = None
        self._write_size = 0
        self._read_seg = 0
        self._read_off = 0
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
        self._read_seg, self._read_off = seg, off
        last = self._segments[-1]
        self._write_size = self._path(last).stat().st_size
        self._write_fd = os.open(self._path(last), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = sum(self._path(s).stat().st_size for s in self._segments) - off
        self.records = self._count_lines()
        if self.size:
            self._not_empty.set()
            log.info("buffer_resumed", path=str(self.dir), bytes=self.size, records=self.records)
        self._update_room()

    def _count_lines(self) -> int:
        n = 0
        for s in self._segments:
            with open(self._path(s), "rb") as f:
                if s == self._read_seg:
                    f.seek(self._read_off)
                while chunk := f.read(1 << 20):
                    n += chunk.count(b"\n")
        return n

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
        self._path(seg).unlink(missing_ok=True)

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
        """Writes a batch to disk (in a thread); applies ``when_full`` at the size cap."""
        if not batch:
            return
        if not self.has_room():
            if self.when_full == "drop_newest":
                self.dropped["buffer_full"] = self.dropped.get("buffer_full", 0) + len(batch)
                return
            if self.when_full == "drop_oldest":
                await asyncio.to_thread(self._drop_oldest)
            while not self.has_room():
                await self._room.wait()
        data = encode_ndjson(batch)
        await asyncio.to_thread(self._write, data)
        self.size += len(data)
        self.records += len(batch)
        self.appended += len(batch)
        self._not_empty.set()
        self._update_room()

    def _write(self, data: bytes) -> None:
        assert self._write_fd is not None
        if self._write_size and self._write_size + len(data) > self.segment_bytes:
            os.close(self._write_fd)
            seg = self._segments[-1] + 1
            self._segments.append(seg)
            self._write_fd = os.open(self._path(seg), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._write_size = 0
        view = memoryview(data)
        while view:
            n = os.write(self._write_fd, view)
            view = view[n:]
        self._write_size += len(data)
        if self.fsync:
            os.fsync(self._write_fd)

    def _drop_oldest(self) -> None:
        # Drop whole unsent segments, oldest first, never the one being written.
        while not self.has_room() and len(self._segments) > 1:
            seg = self._segments[0]
            path = self._path(seg)
            with open(path, "rb") as f:
                if seg == self._read_seg:
                    f.seek(self._read_off)
                data = f.read()
            lines = data.count(b"\n")
            self._unlink(seg)
            self._segments.pop(0)
            self.size -= len(data)
            self.records -= lines
            self.dropped["buffer_full"] = self.dropped.get("buffer_full", 0) + lines
            self._read_seg, self._read_off = self._segments[0], 0
            log.warning("buffer_dropped_oldest", path=str(path), records=lines)
        self._save_cursor()

    # -- taking -----------------------------------------------------------------------------

    async def read(self, max_records: int) -> tuple[list[Record], tuple[int, int, int, int]]:
        """The next records after the cursor (waits while empty) and the cursor after them;
        pass that to ``commit`` once the exporter accepted them."""
        while not self.size:
            self._not_empty.clear()
            await self._not_empty.wait()
        return await asyncio.to_thread(self._read, max_records)

    def _read(self, max_records: int) -> tuple[list[Record], tuple[int, int, int, int]]:
        seg, off = self._read_seg, self._read_off
        out: list[Record] = []
        consumed = lines = 0
        chunk = 4 << 20
        while len(out) < max_records:
            with open(self._path(seg), "rb") as f:
                f.seek(off)
                data = f.read(chunk)
            end = data.rfind(b"\n")
            if end >= 0:
                for line in data[: end + 1].split(b"\n")[:-1]:
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
                continue
            if len(data) == chunk:  # one line longer than the chunk: read more at once
                chunk *= 4
                continue
            if seg == self._segments[-1]:
                break  # the segment being written: nothing more yet
            seg, off = next(s for s in self._segments if s > seg), 0
        return out, (seg, off, consumed, lines)

    async def commit(self, cursor: tuple[int, int, int, int]) -> None:
        seg, off, consumed, lines = cursor
        self._read_seg, self._read_off = seg, off
        self.size -= consumed
        self.records -= lines
        await asyncio.to_thread(self._commit_disk, seg)
        self._update_room()

    def _commit_disk(self, seg: int) -> None:
        for old in [s for s in self._segments if s < seg]:
            self._unlink(old)
        self._segments = [s for s in self._segments if s >= seg]
        self._save_cursor()

    def _save_cursor(self) -> None:
        body = orjson.dumps({"segment": self._read_seg, "offset": self._read_off})
        atomic_write(self.dir / CURSOR, body, self.fsync)

    def close(self) -> None:
        if self._write_fd is not None:
            if self.fsync:
                os.fsync(self._write_fd)
            os.close(self._write_fd)
            self._write_fd = None
