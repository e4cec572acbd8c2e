"""The file exporter's open files (at most ``max_open_files``, least recently written
closed first), written from a worker thread under one lock, whole records only
(``fsutil.append_whole``), rotated by size or age."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.fsutil import TruncateFailed, append_whole
from exporters.file.config import FileConfig
from exporters.file.rotation import _stamp, prune

log = structlog.get_logger("exporters.file")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

FirstOpen = Callable[[str], list[str]]  # path -> rotated files left to compress


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


class FileSet:
    def __init__(self, exporter: str, config: FileConfig) -> None:
        self.name = exporter
        self.config = config
        self._files: collections.OrderedDict[str, _Open] = collections.OrderedDict()
        self.seen: set[str] = set()  # paths first opened (leftovers, tails) this run
        self.lock = threading.Lock()  # file handles: the writer thread vs flush/close
        self.error: str = ""
        self._cut: dict[str, int] = {}  # path -> size: a failed write not yet cut off
        self.rotations = 0

    def get(self, path: str) -> _Open:
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

    def cut_torn_tail(self, of: _Open) -> None:
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

    def write_plain(self, data: bytes) -> None:
        with self.lock:
            self._append(self.config.path, data, self.config.fsync)

    def write_plain_now(self, data: bytes) -> bool:
        """``write_plain`` for the event loop: only without fsync, when the file is open
        already and no other thread holds the lock (it never waits for any of them);
        False, nothing written, otherwise."""
        if self.config.fsync or not self.lock.acquire(blocking=False):
            return False
        try:
            if self.config.path not in self._files:
                return False  # (re)opening makes a directory, may cut a failed write
            self._append(self.config.path, data, False)
            return True
        finally:
            self.lock.release()

    def _append(self, path: str, data: bytes, fsync: bool) -> None:
        try:
            of = self.get(path)
            append_whole(of.file.fileno(), data, fsync)
            of.size += len(data)
            self.error = ""
        except OSError as exc:
            self.failed(path, exc)
            raise

    def write_groups(
        self,
        groups: dict[str, list[bytes]],
        done: dict[str, int],
        rotated: list[str],
        first_open: FirstOpen,
    ) -> None:
        """Writes each path's records (past the ``done[path]`` first ones), rotating as
        configured; notes progress in ``done`` and rotated files in ``rotated``."""
        with self.lock:
            for path, parts in groups.items():
                if done.get(path, 0) >= len(parts):
                    continue
                try:
                    self._write_parts(path, parts, rotated, done, first_open)
                except OSError as exc:
                    self.failed(path, exc)
                    raise
            self.error = ""

    def _write_parts(
        self,
        path: str,
        parts: list[bytes],
        rotated: list[str],
        done: dict[str, int],
        first_open: FirstOpen,
    ) -> None:
        rot = self.config.rotate
        max_bytes = rot.max_bytes
        if path not in self.seen:
            rotated.extend(first_open(path))
        of = self.get(path)
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
        prune(path, self.config.rotate.max_files)
        return self.get(path)

    def failed(self, path: str, exc: OSError) -> None:
        self.error = f"{path}: {exc.strerror or exc}"
        if isinstance(exc, TruncateFailed):
            self._cut[path] = exc.size  # cut when the file is opened again
        # Reopen on the next try: the file may have been removed or the disk freed.
        of = self._files.pop(path, None)
        if of is not None:
            with contextlib.suppress(OSError):
                of.file.close()

    def flush_all(self) -> None:
        with self.lock:
            for of in self._files.values():
                with contextlib.suppress(OSError):
                    of.file.flush()

    def close_all(self) -> None:
        with self.lock:
            while self._files:
                _, of = self._files.popitem()
                with contextlib.suppress(OSError):
                    of.file.close()
