"""Rotated files: their names (``<path>.<UTC time>``), which are kept
(``rotate.max_files``), and their gzip, in a background task one file at a time; a gzip
that fails (a full disk) leaves the rotated file as it was and is tried again later."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import re
import shutil
import time

import structlog

from agent.fsutil import atomic_file

log = structlog.get_logger("exporters.file")

CLOSE_GZIP_SECONDS = 5.0  # how long close() keeps compressing rotated files
COMPRESS_RETRY_SECONDS = 30.0  # after a gzip failed (a full disk): the next try
_ROTATED_NAME = re.compile(r"(.*)\.\d{8}T\d{6}\.\d{6}Z(?:-\d+)?$")


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


def prune(path: str, keep: int | None) -> None:
    """Removes the oldest rotated files of ``path`` but ``keep`` (None: keeps all)."""
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


def leftovers(path: str) -> list[str]:
    """Rotated files of ``path`` a previous run did not compress (its half-written
    ``.tmp`` removed)."""
    out = []
    for p, gz, tmp in rotated_files(path):
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(p)
        elif not gz:
            out.append(p)
    return out


class Compressor:
    """gzips rotated files in a background task, one at a time, then prunes their path."""

    def __init__(self, exporter: str, keep: int | None) -> None:
        self.name = exporter
        self.keep = keep
        self._compress: asyncio.Queue[str] = asyncio.Queue()
        self._compressor: asyncio.Task[None] | None = None
        self._compressing: asyncio.Future[None] | None = None
        self._compress_later: dict[str, asyncio.TimerHandle] = {}
        self._compress_failing: set[str] = set()

    def start(self) -> None:
        self._compressor = asyncio.create_task(self._compress_loop(), name="file-gzip")

    def queue(self, paths: list[str]) -> None:
        for p in paths:
            self._compress.put_nowait(p)

    async def _compress_loop(self) -> None:
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
        self.queue([path])

    def _compress_one(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
            gzip_file(path)
        m = _ROTATED_NAME.match(path)
        if m:
            prune(m[1], self.keep)

    async def close(self) -> None:
        """Compresses what is queued for up to CLOSE_GZIP_SECONDS; what waits for another
        try, or is left, is compressed at the next start."""
        for handle in self._compress_later.values():
            handle.cancel()  # what waits for another try is compressed at the next start
        self._compress_later.clear()
        if self._compressor is not None:
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
