"""One container's chain of json-file logs: the files on disk, tracked by inode, opened
as soon as they appear, and what a rotation took away before it could be read.

Rotation (``max-size``/``max-file``): ``-json.log`` is renamed to ``-json.log.1`` (and so on)
and a new ``-json.log`` is created. Files are tracked by inode and opened as soon as they
appear (inotify ``IN_CREATE``, handled in the watcher thread so that a busy event loop does
not delay it), so that a rotated file is finished, from its open descriptor, before the
next one, even once it has been deleted. A file rotated away before the reader ever opened
it (rotation faster than reading) is counted (inotify counts the creations) and logged as
``log_lines_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import threading
from typing import TYPE_CHECKING

import structlog

from agent.engine.client import NotFound
from agent.sources.jsonfile.inotify import (
    _DIR_MASK,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MODIFY,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_ONESHOT,
    IN_Q_OVERFLOW,
    Inotify,
)

if TYPE_CHECKING:
    from agent.sources.jsonfile.source import JsonFileLogSource
    from agent.sources.reader import ContainerReader

log = structlog.get_logger("agent.sources.jsonfile")


class _File:
    __slots__ = ("bytes", "fd", "ino", "lines", "offset", "seen", "seq", "tail")

    def __init__(self, fd: int, ino: int, seq: int) -> None:
        self.fd = fd
        self.ino = ino
        self.seq = seq  # rotation order: the n-th -json.log created (may be negative)
        self.offset = 0  # next byte to read; always a line start
        self.seen = 0  # largest size known, to tell how much a truncation took away
        self.tail = b""  # the bytes just before ``offset``: still there unless truncated
        self.lines = 0
        self.bytes = 0


_ROTATED = re.compile(r"\.(\d+)\Z")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def _parse_size(text: str | None) -> int | None:
    """Docker's ``max-size`` (``100k``, ``10m``: binary units)."""
    m = _SIZE.match(text or "")
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


class FileChain:
    """One container's log files (``files[0]`` is being read), their watches and
    losses; ``_Tail`` reads them."""

    def __init__(self, source: JsonFileLogSource, reader: ContainerReader) -> None:
        self.source = source
        self.reader = reader
        self.cid = reader.meta.id
        self.dir = os.path.join(source.containers_dir, self.cid)
        self.base = f"{self.cid}-json.log"
        self.path = os.path.join(self.dir, self.base)
        self.files: list[_File] = []  # files[0] is being read; later ones are newer
        self.lock = threading.Lock()  # the watcher thread appends to files, the loop pops
        self.closed = False
        self.wake = asyncio.Event()
        self.inotify: Inotify | None = None
        self.dir_wd = -1
        self.created = 0  # -json.log creations seen by inotify since the watch began
        self.counted = False  # whether ``created`` is exact (inotify, no overflow)
        self.closed_by_writer = False
        self.gone = False  # the container's directory was removed
        self.max_size: int | None = None
        self.lost_files = 0
        self._names: dict[int, str] = {}
        # The watch on the file the reader waits for (``FileWatches``), -1 when none; the
        # (inode, ``created``) it was set for; and whether it stays between writes
        # (``IN_MODIFY``: a slow writer, see ``_Tail._wait``) or goes once fired.
        self.file_wd = -1
        self.file_watched = (0, -1)
        self.file_steady = False

    # -- set-up and tear-down --------------------------------------------------------------

    def _watch(self) -> None:
        try:
            self.inotify = self.source._acquire_inotify()
        except OSError as exc:
            self.source._inotify_failed(exc)
            return
        try:
            self.dir_wd = self.inotify.add(self.dir, _DIR_MASK, self._on_dir)
            self.counted = True
        except OSError as exc:
            self.source._release_inotify()
            self.inotify = None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NotFound(f"no log directory {self.dir}") from None
            self.source._inotify_failed(exc)

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.remove(self.dir_wd, self._on_dir)
            self.inotify.files.remove_all(self._on_file)
            self.inotify.unsleep(self.wake)
            self.source._release_inotify()
            self.inotify = None
        with self.lock:
            self.closed = True
            for f in self.files:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self.files = []

    # -- inotify handlers ------------------------------------------------------------------

    def _on_dir(self, mask: int, name: str) -> None:
        inotify = self.inotify
        if inotify is None:
            return  # closed meanwhile
        if mask & IN_Q_OVERFLOW:
            self.counted = False
            self.closed_by_writer = True  # anything may have happened: ask the engine
        elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            self.gone = True
        elif name == self.base:
            if mask & (IN_CREATE | IN_MOVED_TO):
                self.created += 1
                # Open the new file right after this batch of events: once open, rotation
                # cannot take it away.
                inotify.dirty.add(self)
            if mask & IN_CLOSE_WRITE:
                self.closed_by_writer = True
        else:
            return
        inotify.to_loop(self.wake.set)

    def _on_file(self, mask: int, name: str) -> None:
        """The file being read changed (on the event loop: ``FileWatches``): its new
        lines are read here when they can be (``read_in_place``), else the reader wakes."""
        if mask & IN_IGNORED:
            self.file_wd = -1  # a one-shot watch fired, or the file was removed
        else:
            try:
                if self.read_in_place():
                    return
            except Exception as exc:  # the reader reads it instead
                log.warning("log_read_in_place_failed", container=self.cid[:12], error=repr(exc))
        self.wake.set()

    def read_in_place(self) -> bool:
        """Reads and emits the file's new lines without waking the reader; False: the
        reader is to do it (``_Tail``)."""
        return False

    def watching(self, ino: int) -> bool:
        """Whether the file ``ino`` has a watch that stays, set for it before the last read:
        its writes since then set ``wake`` without a look at its size."""
        return self.file_steady and self.file_wd >= 0 and self.file_watched == (ino, self.created)

    def watch_file(self, ino: int, steady: bool) -> None:
        """Watches ``-json.log`` (the file ``ino``, as far as is known), for one write
        or (``steady``) for every write. OSError: no such file now."""
        assert self.inotify is not None
        wd = self.inotify.files.add(
            self.path, IN_MODIFY if steady else IN_MODIFY | IN_ONESHOT, self._on_file
        )
        if self.file_wd >= 0 and self.file_wd != wd:
            self.inotify.files.remove(self.file_wd, self._on_file)  # on a rotated file
        self.file_wd, self.file_watched, self.file_steady = wd, (ino, self.created), steady

    def unwatch_file(self) -> None:
        """Ends a watch that stays, if there is one: the writer writes too often for a
        wake-up per write (a one-shot watch ends by itself)."""
        if self.file_steady and self.file_wd >= 0:
            if self.inotify is not None:
                self.inotify.files.remove(self.file_wd, self._on_file)
            self.file_wd = -1

    # -- the chain of files --------------------------------------------------------------

    def dir_exists(self) -> bool:
        return os.path.isdir(self.dir)

    def _listing(self) -> list[tuple[int, int]]:
        """(rotation index, inode) of the log files on disk, newest (index 0) first."""
        self._names = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            self.gone = True
            return []
        out = []
        prefix = self.base
        for name in names:
            if not name.startswith(prefix):
                continue
            if name == prefix:
                index = 0
            else:
                m = _ROTATED.match(name, len(prefix))
                if m is None or m.start() != len(prefix):
                    continue  # "-json.log.1.gz" (compress=true) cannot be read: skipped
                index = int(m.group(1))
            try:
                ino = os.stat(os.path.join(self.dir, name)).st_ino
            except FileNotFoundError:
                continue
            out.append((index, ino))
            self._names[ino] = name
        out.sort()
        return out

    def _open(self, ino: int, seq: int) -> _File | None:
        name = self._names.get(ino)
        if name is None:
            return None
        try:
            fd = os.open(os.path.join(self.dir, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if os.fstat(fd).st_ino != ino:
            os.close(fd)  # rotated between the listing and the open: scan again
            return None
        return _File(fd, ino, seq)

    async def scan(self) -> int:
        """``scan_now`` in the watcher thread (it reads the creation events), or here."""
        if self.inotify is not None:
            return int(await self.inotify.call(self.scan_now))
        return self.scan_now()

    def scan_now(self) -> int:
        """Opens the files newer than the newest one held, oldest first; counts the ones
        rotated away before they could be opened. Returns how many were opened."""
        inotify = self.inotify
        if self.closed:
            return 0
        for _attempt in range(10):
            if inotify is not None:
                inotify.drain()
            before = self.created
            listing = self._listing()
            if inotify is not None:
                inotify.drain()
                if self.created != before:
                    continue  # a file was created during the listing: list again
            opened = self._adopt([ino for _index, ino in listing])
            if opened is not None:
                return opened
        return 0

    def _adopt(self, inodes: list[int]) -> int | None:
        """``inodes``: the log files on disk, newest first. Each file gets a number in
        creation order: the newest file on disk is number ``created`` (every creation since
        the watch began was counted before the listing), the one before it ``created - 1``,
        and so on (a rotation in progress leaves a hole in the names, never in the order).
        None: a name changed under the scan, scan again."""
        if not self.files:
            self.created = 0
            first: list[_File] = []
            for k in range(len(inodes) - 1, -1, -1):
                f = self._open(inodes[k], -k)
                if f is None:
                    for g in first:
                        os.close(g.fd)
                    return None
                first.append(f)
            return self._append(first)
        newest = self.files[-1]
        lost = 0
        if newest.ino in inodes:
            j = inodes.index(newest.ino)
            top = newest.seq + j
            newer = inodes[:j]
        else:
            # The newest file held was rotated away: every file on disk is newer than it.
            if not inodes:
                return 0
            newer = inodes
            if self.counted:
                top = self.created
                lost = top - len(inodes) - newest.seq
            else:
                top = newest.seq + len(inodes)
                lost = -1  # unknown without the creation count
        opened = []
        for k in range(len(newer) - 1, -1, -1):
            f = self._open(newer[k], top - k)
            if f is None:
                break  # renamed under the scan: keep what is open, scan again
            opened.append(f)
        if opened:
            self.closed_by_writer = False  # that close was a rotation's
        count = self._append(opened)
        if lost:
            inotify = self.inotify
            if inotify is not None:
                inotify.to_loop(self._lost_files, lost)
            else:
                self._lost_files(lost)
        return count if len(opened) == len(newer) else None

    def _append(self, opened: list[_File]) -> int:
        with self.lock:
            if self.closed:
                for f in opened:
                    os.close(f.fd)
                return 0
            self.files.extend(opened)
        return len(opened)

    def _retire(self, f: _File) -> None:
        with self.lock:
            self.files.pop(0)
        os.close(f.fd)
        self.source._lines[self.cid] = self.source._lines.get(self.cid, 0) + f.lines
        self.source._bytes[self.cid] = self.source._bytes.get(self.cid, 0) + f.bytes

    # -- losses ---------------------------------------------------------------------------

    def _lines_per_byte(self) -> float:
        lines = sum(f.lines for f in self.files) + self.source._lines.get(self.cid, 0)
        size = sum(f.bytes for f in self.files) + self.source._bytes.get(self.cid, 0)
        return lines / size if size and lines else 1 / 170  # a 100-byte message's line

    def _lost_files(self, files: int) -> None:
        name = self.reader.meta.name
        if files < 0:
            log.warning(
                "log_lines_lost",
                container=name,
                id=self.cid[:12],
                files="unknown",
                lines=None,
                reason="log files were rotated away before they could be read, and without "
                "inotify their number is unknown",
            )
            return
        try:
            size = self.max_size or max((os.fstat(f.fd).st_size for f in self.files), default=0)
        except OSError:
            size = 0
        lines = max(1, round(files * size * self._lines_per_byte()))
        self.lost_files += files
        self._count_lost(lines)
        log.warning(
            "log_lines_lost",
            container=name,
            id=self.cid[:12],
            files=files,
            lines=lines,
            estimated=True,
            reason="log files were rotated away before they could be read (rotation "
            "faster than reading)",
        )

    def _count_lost(self, lines: int) -> None:
        self.source.lost += lines
        self.reader.lost = getattr(self.reader, "lost", 0) + lines
        followers = getattr(self.reader, "followers", None)
        if followers is not None:
            followers.lines_lost += lines
