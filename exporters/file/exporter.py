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
import operator
import os
import time
from collections.abc import Sequence
from typing import Any

import structlog

from agent.fsutil import WRITE_SLICE
from agent.positions import Position
from agent.record import ContainerMeta, Record
from agent.speedups import encode_ndjson
from agent.timestamps import ts_seconds_ns
from exporters.base import Exporter, Health, register
from exporters.file.config import FileConfig
from exporters.file.files import FileSet, _safe
from exporters.file.rotation import Compressor, leftovers
from exporters.file.tail import DEDUPE_SECONDS, _Written, read_tail, scan_tail

log = structlog.get_logger("exporters.file")

_NAME_FIELDS = ("{container_name}", "{container_id}")

_container_id = operator.attrgetter("meta.id")

# A batch of up to this many bytes (one ``os.write``), without fsync, is written on the
# event loop: a page-cache append of a few KiB takes tens of µs, a hop to a thread wakes
# the worker and then each thread waits for the other's GIL (~65 µs of CPU a wake on the
# VMs measured): at 100 containers x 1 line/s, 1.20 → 1.10 % of a core (docs/benchmarks.md).
# A loop write that takes longer than LOOP_WRITE_SLOW_SECONDS (a disk under writeback
# pressure) sends every write to the thread for LOOP_WRITE_PAUSE_SECONDS.
LOOP_WRITE_BYTES = WRITE_SLICE
LOOP_WRITE_SLOW_SECONDS = 0.002
LOOP_WRITE_PAUSE_SECONDS = 60.0


@register
class FileExporter(Exporter):
    type_name = "file"
    config_class = FileConfig
    config: FileConfig

    def __init__(self, name: str, config: FileConfig) -> None:
        super().__init__(name, config)
        self.linger_seconds = config.linger_seconds
        path = config.path
        self._by_name = any(f in path for f in _NAME_FIELDS)
        self._by_date = "%" in path
        self._templated = self._by_name or self._by_date
        rot = config.rotate
        self._rotating = rot.max_bytes is not None or rot.max_seconds is not None
        self._simple = not self._templated and not self._rotating  # one file, one write
        self.files = FileSet(name, config)
        self._paths: dict[tuple[ContainerMeta, str], str] = {}
        self._compressor: Compressor | None = None
        # The last batch whose write failed, as it was to be written: the pipeline sends
        # the same list again, and it is written from where it stopped, routed the same.
        self._retry_batch: Sequence[Record] | None = None
        self._retry_data = b""
        self._retry_groups: dict[str, list[bytes]] = {}
        self._retry_done: dict[str, int] = {}
        self._written: _Written | None = _Written()  # None once the check is over
        self.duplicates_skipped = 0  # records an earlier run had written (after a crash)
        self._threads_until = 0.0  # monotonic: writes go to a thread until then
        self.slow_loop_writes = 0

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
            self._compressor = Compressor(self.name, self.config.rotate.max_files)
            self._compressor.start()
        if not self._templated:
            leftovers = await asyncio.to_thread(self._open_plain)
            self._queue_compress(leftovers)

    def _open_plain(self) -> list[str]:
        with self.files.lock:
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
            try:
                await self._write_plain(data)
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
            await asyncio.to_thread(
                self.files.write_groups, groups, done, rotated, self._first_open
            )
        except OSError:
            self._retry_batch, self._retry_groups, self._retry_done = batch, groups, done
            raise
        finally:
            self._queue_compress(rotated)

    async def _write_plain(self, data: bytes) -> None:
        """Encoding stays on the loop (CPU, no GIL release to gain). The write goes to a
        thread, unless it is one small write without fsync (a quiet host's batch) and no
        loop write was slow lately: that one is made right here, which spares the two
        threads' wake-ups of a hop (see ``LOOP_WRITE_BYTES``)."""
        if len(data) <= LOOP_WRITE_BYTES and time.monotonic() >= self._threads_until:
            t0 = time.perf_counter()
            try:
                if self.files.write_plain_now(data):
                    return
            finally:
                took = time.perf_counter() - t0
                if took > LOOP_WRITE_SLOW_SECONDS:
                    self._threads_until = time.monotonic() + LOOP_WRITE_PAUSE_SECONDS
                    self.slow_loop_writes += 1
                    log.info(
                        "file_write_slow",
                        exporter=self.name,
                        ms=round(took * 1000, 1),
                        bytes=len(data),
                        threads_for_s=LOOP_WRITE_PAUSE_SECONDS,
                    )
        await asyncio.to_thread(self.files.write_plain, data)

    async def flush(self) -> None:
        await asyncio.to_thread(self.files.flush_all)

    async def close(self) -> None:
        if self._compressor is not None:
            await self._compressor.close()
            self._compressor = None
        await asyncio.to_thread(self.files.close_all)

    def target(self) -> str:
        return f"file:{os.path.abspath(self.config.path)}"

    def health(self) -> Health:
        return Health(not self.files.error, self.files.error)

    @property
    def rotations(self) -> int:
        return self.files.rotations

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
        of = self.files.get(path)
        if of.size:
            self.files.cut_torn_tail(of)
        if self._written is not None:  # (an empty file: its newest rotated file's tail)
            try:
                logs, events = scan_tail(*read_tail(path))
            except OSError as exc:
                log.warning("file_tail_unreadable", exporter=self.name, path=path, error=str(exc))
            else:
                self._written.learn(logs, events)
        self.files.seen.add(path)
        return leftovers(path) if self.config.rotate.compress else []

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
        new = [p for p in groups if p not in self.files.seen]
        if new:
            self._queue_compress(await asyncio.to_thread(self._open_new, new))
        if self._written is not None:
            kept = self._skip_written(batch)
            if len(kept) != len(batch):
                groups = self._route(kept) if kept else {}
        return groups

    def _open_new(self, paths: list[str]) -> list[str]:
        left: list[str] = []
        with self.files.lock:
            for path in paths:
                try:
                    left += self._first_open(path)
                except OSError as exc:
                    self.files.failed(path, exc)
                    raise
        return left

    def _queue_compress(self, paths: list[str]) -> None:
        if self._compressor is not None:
            self._compressor.queue(paths)
