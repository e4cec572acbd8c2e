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
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import structlog
from pydantic import Field

from agent.fsutil import atomic_file
from agent.record import ContainerMeta, Record
from agent.section import Section
from agent.speedups import encode_ndjson
from exporters.base import Exporter, ExporterConfig, Health, register
from exporters.http.formats import ts_seconds_ns

log = structlog.get_logger("exporters.file")

_NAME_FIELDS = ("{container_name}", "{container_id}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
CLOSE_GZIP_SECONDS = 5.0  # how long close() keeps compressing rotated files


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

    def __init__(self, path: str, file: BinaryIO, size: int, opened: float) -> None:
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
        self._files: collections.OrderedDict[str, _Open] = collections.OrderedDict()
        self._seen: set[str] = set()  # paths whose leftovers were looked at this run
        self._paths: dict[tuple[ContainerMeta, str], str] = {}
        self._lock = threading.Lock()  # file handles: the writer thread vs flush/close
        self._error: str = ""
        self._compress: asyncio.Queue[str] | None = None
        self._compressor: asyncio.Task[None] | None = None
        self._compressing: asyncio.Future[None] | None = None
        # (batch, records written per path) of the last batch whose write failed.
        self._partial: tuple[Sequence[Record], dict[str, int]] | None = None
        self.rotations = 0

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.config.rotate.compress:
            self._compress = asyncio.Queue()
            self._compressor = asyncio.create_task(self._compress_loop(), name="file-gzip")
        if not self._templated:
            leftovers = await asyncio.to_thread(self._open_plain)
            self._queue_compress(leftovers)

    def _open_plain(self) -> list[str]:
        with self._lock:
            self._get(self.config.path)
            self._seen.add(self.config.path)
            return self._leftovers(self.config.path)

    async def send(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        if not self._templated and not self._rotating:
            data = encode_ndjson(batch)
            # Encoding stays on the loop (it is CPU, no GIL release); the write goes to a thread.
            await asyncio.to_thread(self._write_plain, data)
            return
        groups = self._route(batch)
        # Records already written by a failed attempt at this very batch (the pipeline
        # retries the same list) are not written again.
        retried = self._partial is not None and self._partial[0] is batch
        done = self._partial[1] if retried and self._partial is not None else {}
        self._partial = None
        rotated: list[str] = []
        try:
            await asyncio.to_thread(self._write_groups, groups, done, rotated)
        except OSError:
            self._partial = (batch, done)
            raise
        finally:
            self._queue_compress(rotated)

    async def flush(self) -> None:
        await asyncio.to_thread(self._flush_all)

    async def close(self) -> None:
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

    # -- writing (in a worker thread) --------------------------------------------------------

    def _get(self, path: str) -> _Open:
        """The open file for ``path`` (opened, its directory made, if needed); LRU-bounded."""
        of = self._files.get(path)
        if of is not None:
            self._files.move_to_end(path)
            return of
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        f = open(p, "ab")  # noqa: SIM115 - closed by _close / eviction
        st = os.fstat(f.fileno())
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
                of.file.write(data)
                of.size += len(data)
                of.file.flush()
                if self.config.fsync:
                    os.fsync(of.file.fileno())
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
        of = self._get(path)
        if path not in self._seen:
            self._seen.add(path)
            rotated.extend(self._leftovers(path))
        max_age = rot.max_seconds
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
            of.file.write(b"\n".join(chunk))
            of.file.flush()
            of.size += size
            done[path] = i = j
        if self.config.fsync:
            os.fsync(of.file.fileno())

    def _rotate(self, of: _Open, rotated: list[str]) -> _Open:
        """Closes ``of``, renames it to its rotated name, opens a new file at its path."""
        path = of.path
        of.file.flush()
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
        done = [p for p, _, tmp in rotated_files(path) if not tmp]
        for old in done[: max(0, len(done) - keep)]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)

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
                log.warning("file_compress_failed", exporter=self.name, path=path, error=str(exc))

    def _compress_one(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
            gzip_file(path)
        m = re.match(r"(.*)\.\d{8}T\d{6}\.\d{6}Z(?:-\d+)?$", path)
        if m:
            self._prune(m[1])
