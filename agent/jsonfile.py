"""The json-file fast path: a container's log read straight from ``<id>/<id>-json.log``.

The json-file driver writes one JSON object per line::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-28T10:21:02.258843177Z"}

and the engine's logs API serves exactly these lines, re-framed. Reading the files skips the
engine (it costs it nothing) and the framing. ``JsonFileLogSource`` produces the same records
as ``ApiLogSource`` for the same lines:

* ``time`` is RFC3339Nano, which trims trailing zeros (``…33.39940479Z``, ``…33Z``); the API
  prints nine digits, so the stamp is padded the same way;
* a ``log`` value without a trailing ``\\n`` is a partial message (lines over 16 KiB, or the
  last bytes before the container stopped) and is joined with the following ones;
* TTY containers' lines end in ``\\r\\n``: the ``\\r`` is dropped, as the API source does;
* messages are capped at ``max_message_bytes`` and marked truncated; invalid UTF-8 was
  already replaced by U+FFFD when the engine wrote the file.

Joining, capping and resuming reuse ``LogDecoder``'s slow path, so they cannot drift apart.

Following: a chunk (64 KiB) is read (in place when it is in the page cache, else in a
thread), all its whole lines are decoded with one ``orjson.loads`` call and turned into
records in one loop, and the batch is emitted: no await per line. At the end of the file the
reader waits on inotify (no wake-up while a container is idle); without inotify it polls. It
stops once the container has stopped and its file is read to the end: the engine closes the
file when the container stops (``IN_CLOSE_WRITE``), which is confirmed by one inspect.

Rotation (``max-size``/``max-file``): ``-json.log`` is renamed to ``-json.log.1`` (and so on)
and a new ``-json.log`` is created. Files are tracked by inode and opened as soon as they
appear (inotify ``IN_CREATE``, handled in a thread so that a busy event loop does not delay
it), so that a rotated file is finished, from its open descriptor, before the next one, even
once it has been deleted. A file rotated away before the reader ever opened it (rotation
faster than reading) is counted (inotify counts the creations) and logged as
``log_lines_lost``. A file that shrank was truncated: it is read again from the start. A
container that is removed is read to the end of what its open files hold.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import re
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from agent.docker import Engine, EngineError, NotFound
from agent.logs import Emit, LogSource, StreamEnd
from agent.logstream import FileMark, LogDecoder, Position
from agent.record import (
    ContainerMeta,
    Record,
    format_timestamp_ns,
    normalize_timestamp,
    timestamp_to_unix,
)

if TYPE_CHECKING:
    from agent.logs import ContainerReader

log = structlog.get_logger("agent.jsonfile")

CHUNK_BYTES = 64 << 10  # one read, one orjson.loads, one batch (see _Tail.run on the size)
USE_INOTIFY = True  # else poll (the fallback when inotify fails; bench/files.py compares)
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this is garbage, skipped
POLL_SECONDS = 0.1  # without inotify: how often an idle file is looked at
TRICKLE_SECONDS = 0.01  # a reader that just found data looks again after this (see _wait)
SAFETY_CHECK_SECONDS = 300.0  # an idle reader asks the engine anyway, in case an event was lost
POLL_CHECK_SECONDS = 2.0  # without inotify: how often an idle reader asks whether it runs
CLOSE_SETTLE_SECONDS = 0.05  # after the engine closed the file: time for a rotation to show
SINCE_MARGIN_NS = 2_000_000_000  # lines of two streams can be written slightly out of order

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


# -- time stamps --------------------------------------------------------------------------


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


# -- decoding -----------------------------------------------------------------------------


def _loads_lenient(line: bytes) -> Any:
    """One line that orjson refused: the standard library also takes lone surrogates
    (``\\ud800``), which Go's decoder turns into U+FFFD, as done here."""
    value = json.loads(line.decode("utf-8", "replace"))
    if isinstance(value, dict) and isinstance(value.get("log"), str):
        value["log"] = value["log"].encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


class JsonFileDecoder(LogDecoder):
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


def _line_time(line: bytes) -> str | None:
    try:
        value = _loads(line)
        return normalize_time(value["time"])
    except (_JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
        return None


def _line_before(fd: int, offset: int) -> bytes | None:
    """The bytes of the file up to ``offset``, from the start of the line that ends there
    (at most MAX_LINE_BYTES); None when ``offset`` is not just past a line end."""
    if offset == 0:
        return b""
    want = 4096
    while True:
        start = max(0, offset - want)
        data = os.pread(fd, offset - start, start)
        if len(data) != offset - start or not data.endswith(b"\n"):
            return None  # shorter than the mark (truncated), or not a line end
        if data.rfind(b"\n", 0, len(data) - 1) >= 0 or start == 0:
            return data
        if want >= MAX_LINE_BYTES:
            return data
        want *= 4


def _last_line(data: bytes) -> bytes:
    return data[data.rfind(b"\n", 0, len(data) - 1) + 1 : -1]


def first_offset_at_or_after(fd: int, size: int, cut: str) -> int:
    """The offset of the first line stamped at or after ``cut`` (``size`` if none).

    Bisects on line starts (stamps grow through a file), then scans the last window, so that
    starting late in a large file (``logs.start_at: now``, a container restart) costs a few
    reads, not a pass over the whole file.
    """
    window = 256 << 10

    def line_at(start: int) -> tuple[int, str | None]:
        """(end of the line starting at ``start``, its stamp)."""
        buf = os.pread(fd, window, start)
        nl = buf.find(b"\n")
        while nl < 0 and len(buf) < MAX_LINE_BYTES:
            more = os.pread(fd, len(buf), start + len(buf))
            if not more:
                break
            buf += more
            nl = buf.find(b"\n")
        if nl < 0:
            return size, None
        return start + nl + 1, _line_time(buf[:nl])

    lo, hi = 0, size
    while hi - lo > window:
        mid = (lo + hi) // 2
        buf = os.pread(fd, window, mid - 1)
        nl = buf.find(b"\n")
        if nl < 0:
            break
        start = mid + nl  # buf[0] is at mid - 1
        if start >= hi:
            break
        _end, ts = line_at(start)
        if ts is None:
            break
        if ts < cut:
            lo = start
        else:
            hi = start
    pos = lo
    while pos < hi:
        end, ts = line_at(pos)
        if ts is not None and ts >= cut:
            return pos
        pos = end
    return hi


# -- inotify ------------------------------------------------------------------------------

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ONESHOT = 0x80000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")

_DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_FILE_MASK = IN_MODIFY | IN_ONESHOT

_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc = lib
    return _libc


Handler = Callable[[int, bytes], None]


class Inotify:
    """One inotify descriptor and the thread that reads it, shared by a source's readers.

    Handlers run in that thread, in event order, so that a rotated file is opened within
    about one GIL switch interval (5 ms) of its creation even while the event loop is busy
    for longer (decoding a chunk, an exporter encoding a batch): a file that is open cannot
    be rotated away. The thread is the only reader of the descriptor; ``call`` runs a
    function in it (between two batches of events) and returns its result to the loop.
    ``mask`` has ``IN_Q_OVERFLOW`` when the kernel's queue overflowed (events were lost).
    """

    def __init__(self) -> None:
        lib = _load_libc()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify_init1: {os.strerror(e)}")
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.handlers: dict[int, Handler] = {}
        self.lock = threading.Lock()  # guards ``handlers``
        self.users = 0
        self.overflows = 0
        self.dirty: set[Any] = set()  # readers whose directory changed: scan after the batch
        self._calls: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def add(self, path: str, mask: int, handler: Handler) -> int:
        with self.lock:
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
            if wd < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e), path)
            self.handlers[wd] = handler
        return wd

    def remove(self, wd: int, handler: Handler) -> None:
        with self.lock:
            if self.handlers.get(wd) == handler:  # (bound methods are equal, not identical)
                del self.handlers[wd]
                _libc.inotify_rm_watch(self.fd, wd)  # EINVAL if a one-shot fired: fine

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Runs ``fn`` in the watcher thread; the future (on the loop) gets its result."""
        fut = self.loop.create_future()
        self._calls.append((fn, fut))
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"c")
        return fut

    def to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            poller.poll()
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self.drain()
            while self.dirty:
                tail = self.dirty.pop()
                try:
                    tail.scan_now()
                except Exception as exc:  # never end the thread; the reader polls meanwhile
                    log.warning("log_file_scan_failed", error=repr(exc))
            while self._calls:
                fn, fut = self._calls.popleft()
                try:
                    result: Any = fn()
                except Exception as exc:
                    self.to_loop(_set_exception, fut, exc)
                else:
                    self.to_loop(_set_result, fut, result)

    def drain(self) -> None:
        """Reads and dispatches every queued event (in the watcher thread only)."""
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            off = 0
            n = len(data)
            while off + 16 <= n:
                wd, mask, _cookie, size = _EVENT.unpack_from(data, off)
                name = data[off + 16 : off + 16 + size].rstrip(b"\0")
                off += 16 + size
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    with self.lock:
                        handlers = list(self.handlers.values())
                else:
                    with self.lock:
                        handler = self.handlers.get(wd)
                        if mask & IN_IGNORED:
                            self.handlers.pop(wd, None)
                    handlers = [handler] if handler is not None else []
                for handler in handlers:
                    try:
                        handler(mask, name)
                    except Exception as exc:  # never end the thread over one reader
                        log.warning("inotify_handler_failed", error=repr(exc))

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        self._thread.join(timeout=5)
        for fd in (self.fd, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handlers.clear()


def _set_result(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


# -- one container's files ----------------------------------------------------------------


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


class _Tail:
    """One ``read()`` of one container: its chain of files, its watches, its decoder."""

    def __init__(self, source: JsonFileLogSource, reader: ContainerReader) -> None:
        self.source = source
        self.reader = reader
        self.cid = reader.meta.id
        self.dir = os.path.join(source.containers_dir, self.cid)
        self.base = f"{self.cid}-json.log"
        self.path = os.path.join(self.dir, self.base)
        self._base_bytes = self.base.encode()
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
        self.nowait = bool(_NOWAIT)

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
            with self.inotify.lock:
                mine = [wd for wd, h in self.inotify.handlers.items() if h == self._on_file]
            for wd in mine:
                self.inotify.remove(wd, self._on_file)
            self.source._release_inotify()
            self.inotify = None
        with self.lock:
            self.closed = True
            for f in self.files:
                with contextlib.suppress(OSError):
                    os.close(f.fd)
            self.files = []

    # -- inotify handlers (in the watcher thread) -----------------------------------------

    def _on_dir(self, mask: int, name: bytes) -> None:
        inotify = self.inotify
        if inotify is None:
            return  # closed meanwhile
        if mask & IN_Q_OVERFLOW:
            self.counted = False
            self.closed_by_writer = True  # anything may have happened: ask the engine
        elif mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            self.gone = True
        elif name == self._base_bytes:
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

    def _on_file(self, mask: int, name: bytes) -> None:
        inotify = self.inotify
        if inotify is not None:
            inotify.to_loop(self.wake.set)

    # -- the chain of files --------------------------------------------------------------

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
            first = []
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

    # -- reading --------------------------------------------------------------------------

    async def run(self, positions: dict[str, Position], emit: Emit) -> StreamEnd:
        source = self.source
        if source.use_inotify:
            self._watch()
        await self.scan()
        if not self.files:
            raise NotFound(f"no json-file log at {self.path}")
        running, info = await self._inspect()
        tty = (info.get("Config") or {}).get("Tty") if info else None
        if tty is None:
            tty = self.reader.meta.tty
        log_config = ((info.get("HostConfig") or {}).get("LogConfig") or {}) if info else {}
        self.max_size = _parse_size((log_config.get("Config") or {}).get("max-size"))

        since = min((p.timestamp for p in positions.values()), default=None)
        resume = positions
        mark = self.reader.followers.marks.get(self.cid)
        if mark is not None and await self._seek(mark):
            # Only the lines after the mark are read: nothing to search, nothing before it
            # to skip.
            resume, since, how = mark.resume(positions), None, "position"
        else:
            await self._seek_time(since)
            how = "timestamp" if since is not None else "start"
        if how != "start":
            log.info(
                "log_file_resumed",
                container=self.reader.meta.name,
                id=self.cid[:12],
                by=how,
                inode=self.files[0].ino,
                offset=self.files[0].offset,
            )
        decoder = JsonFileDecoder(
            self.reader.meta, source.max_message_bytes, resume=resume, since=since, tty=tty
        )
        self.reader.decoder = decoder

        stopping = running is False
        why = "stopped"
        # One more look after 2 s catches a container that stopped between the engine
        # closing its file and marking it stopped (the close came before the watch, the
        # inspect before the stop); then every ``check_every`` when idle, and 1 s, 2 s, 4 s,
        # … after a close that the engine did not confirm (a restart, a slow engine).
        check_every = SAFETY_CHECK_SECONDS if self.inotify is not None else POLL_CHECK_SECONDS
        after_close = 1.0
        next_check = time.monotonic() + min(2.0, check_every)
        closed_since: float | None = None
        quiet = 0  # reads in a row that found nothing
        while True:
            f = self.files[0]
            newer_known = len(self.files) > 1
            data = await self._read(f)
            if data is None:
                await self._truncated(f, decoder, emit)
                continue
            cut = data.rfind(b"\n") + 1
            if cut:
                quiet = 0
                records = decoder.feed_lines(data[:cut] if cut < len(data) else data)
                f.tail = data[max(0, cut - 64) : cut]
                f.offset += cut
                f.seen = max(f.seen, os.fstat(f.fd).st_size)  # what a truncation could take
                f.lines += len(records)
                f.bytes += cut
                await self._emit(f, decoder, records, emit)
                await asyncio.sleep(0)  # the next chunk may be read without a suspension
                continue
            if len(data) >= source.chunk_bytes and await self._long_line(f, decoder, emit):
                continue
            # At the end of files[0] (or in a line still being written).
            if not self.closed_by_writer:
                closed_since = None
            if newer_known:
                # The writer had moved to a newer file before this read: this one is whole.
                self._retire(f)
                continue
            if self.inotify is None and self._rotated() and self.scan_now():
                continue
            size = os.fstat(f.fd).st_size
            f.seen = max(f.seen, size)
            if size > f.offset + len(data) or len(self.files) > 1:
                continue  # written, or rotated, since the read
            if self.gone or not _isdir(self.dir):
                # Removed: the engine closed the files first; what they hold has been read.
                stopping, why = True, "removed"
            now = time.monotonic()
            if self.closed_by_writer and not stopping:
                # The engine closed the file: the container stopped, or a rotation is under
                # way (a new file follows within microseconds), or the engine restarts.
                if closed_since is None:
                    closed_since = now
                if now - closed_since >= CLOSE_SETTLE_SECONDS:
                    next_check = now
            if not stopping and now >= next_check:
                self.closed_by_writer = False
                by_close, closed_since = closed_since is not None, None
                running, _info = await self._inspect()
                if running is None:
                    next_check = now + 2.0  # the engine cannot say: ask again soon
                elif by_close:
                    next_check = now + after_close
                    after_close = min(after_close * 2, check_every)
                else:
                    next_check = now + check_every
                if running is False:
                    stopping, why = True, "stopped"
                    continue  # read once more: the last lines came before the close
            if stopping:
                tail = decoder.finish()
                if tail:
                    await emit(tail)
                log.debug("log_file_done", container=self.reader.meta.name, why=why)
                return StreamEnd.STOPPED
            quiet += 1
            timeout = next_check - now
            if closed_since is not None:
                timeout = min(timeout, closed_since + CLOSE_SETTLE_SECONDS - now)
            await self._wait(f, f.offset + len(data), quiet, timeout)

    async def _wait(self, f: _File, end: int, quiet: int, limit: float) -> None:
        """Until the file may have grown past ``end`` (or rotated, or closed), at most
        ``limit`` s. A writer that just wrote usually writes on: right after data the reader
        only sleeps a little and looks again (one timer, and a bigger batch next time,
        rather than a watch, a wake-up from the watcher thread and a small read per write);
        a file found quiet twice in a row is left to inotify."""
        limit = max(limit, 0.0)
        if self.inotify is None:
            await asyncio.sleep(min(self.source.poll_seconds, limit))
            return
        if quiet == 1:
            await asyncio.sleep(min(self.source.trickle_seconds, limit))
            return
        self.wake.clear()
        try:
            self.inotify.add(self.path, _FILE_MASK, self._on_file)
        except OSError:
            # No -json.log for now (a rotation in progress, a removal): the directory's
            # watch reports its creation; poll meanwhile, in case it does not come.
            limit = min(limit, self.source.poll_seconds)
        if os.fstat(f.fd).st_size > end:
            return  # written between the read and the watch
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await self.wake.wait()

    async def _read(self, f: _File) -> bytes | None:
        """The next chunk of ``f`` (see ``_read``). Read here when the bytes are in the page
        cache, as they are when the reader keeps up (a 64 KiB copy: ~19 µs of CPU), else in
        a thread (~60 µs of CPU a call for the hand-over), so that the loop never waits for
        the disk."""
        size = self.source.chunk_bytes + 64  # (+ the tail)
        if self.nowait:
            # One buffer for the whole source: these reads never overlap (no await).
            buf = self.source._buf
            if len(buf) != size:
                buf = self.source._buf = bytearray(size)
            try:
                return _read(f.fd, buf, f.offset, f.tail, _NOWAIT)
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.nowait = False  # a file system without it
        return await asyncio.to_thread(_read, f.fd, bytearray(size), f.offset, f.tail, 0)

    def _rotated(self) -> bool:
        """Without inotify: whether ``-json.log`` is another file than the newest held."""
        try:
            return os.stat(self.path).st_ino != self.files[-1].ino
        except FileNotFoundError:
            return True

    def _retire(self, f: _File) -> None:
        with self.lock:
            self.files.pop(0)
        os.close(f.fd)
        self.source._lines[self.cid] = self.source._lines.get(self.cid, 0) + f.lines
        self.source._bytes[self.cid] = self.source._bytes.get(self.cid, 0) + f.bytes

    async def _truncated(self, f: _File, decoder: JsonFileDecoder, emit: Emit) -> None:
        """The file shrank (or was replaced in place): read it again from the start."""
        lost_bytes = max(0, f.seen - f.offset)
        log.info(
            "log_file_truncated",
            container=self.reader.meta.name,
            id=self.cid[:12],
            offset=f.offset,
            unread_bytes=lost_bytes,
        )
        if lost_bytes:
            lines = max(1, round(lost_bytes * self._lines_per_byte()))
            self._count_lost(lines)
            log.warning(
                "log_lines_lost",
                container=self.reader.meta.name,
                id=self.cid[:12],
                lines=lines,
                estimated=True,
                reason="the log file was truncated before it was read to its end",
            )
        tail = decoder.finish()  # a line cut by the truncation ends here
        if tail:
            await emit(tail)
        f.offset = 0
        f.seen = 0
        f.tail = b""
        self.reader.followers.marks.pop(self.cid, None)

    async def _long_line(self, f: _File, decoder: JsonFileDecoder, emit: Emit) -> bool:
        """A whole chunk without a line end (the engine never writes one: a message holds
        at most 16 KiB): reads the line whole up to MAX_LINE_BYTES, else skips it. False
        when nothing was consumed (the line is still being written)."""
        size = self.source.chunk_bytes
        while size < MAX_LINE_BYTES:
            size *= 4
            data = await asyncio.to_thread(os.pread, f.fd, size, f.offset)
            cut = data.rfind(b"\n") + 1
            if cut:
                records = decoder.feed_lines(data[:cut])
                f.tail = data[max(0, cut - 64) : cut]
                f.offset += cut
                await self._emit(f, decoder, records, emit)
                return True
            if len(data) < size:
                return False
        while True:
            data = await asyncio.to_thread(os.pread, f.fd, 1 << 20, f.offset)
            if not data:
                return False
            nl = data.find(b"\n")
            if nl >= 0:
                f.offset += nl + 1
                f.tail = data[max(0, nl - 63) : nl + 1]
                decoder.malformed += 1
                return True
            f.offset += len(data)
            f.tail = data[-64:]

    async def _emit(
        self, f: _File, decoder: JsonFileDecoder, records: list[Record], emit: Emit
    ) -> None:
        """Emits a chunk's records; when the chunk ended at a line boundary, its last
        record carries the file position (the exporters' acknowledgements turn it into the
        checkpoint), and the reader's own mark moves there."""
        if not records:
            return
        clean = not decoder._pending
        if clean:
            records[-1].mark = (f.ino, f.offset)
        await emit(records)
        if clean:
            positions = self.reader.followers.positions.get(self.cid, {})
            self.reader.followers.marks[self.cid] = FileMark.after(records[-1], positions, f.tail)

    async def _seek(self, mark: FileMark) -> bool:
        """Starts reading at ``mark`` when its file is still here, at least that long, and
        the line before the offset is the one the mark names (an inode can be reused);
        older files are let go. False: the mark cannot be trusted."""
        for i, f in enumerate(self.files):
            if f.ino != mark.inode:
                continue
            tail = await asyncio.to_thread(_line_before, f.fd, mark.offset)
            if tail is None:
                return False
            if mark.tail:
                same = tail.endswith(mark.tail)
            else:
                same = not tail or _line_time(_last_line(tail)) == mark.timestamp
            if not same:
                return False
            for old in self.files[:i]:
                self._retire(old)
            f.offset = mark.offset
            f.tail = tail[-64:]
            return True
        return False

    async def _seek_time(self, since: str | None) -> None:
        """Starts reading at the first line at or after ``since`` (less a margin), else at
        the oldest file's start."""
        if since is None:
            return
        cut = _minus_margin(since)
        while self.files:
            f = self.files[0]
            size = os.fstat(f.fd).st_size
            offset = await asyncio.to_thread(first_offset_at_or_after, f.fd, size, cut)
            if offset >= size and len(self.files) > 1:
                self._retire(f)
                continue
            f.offset = offset
            return

    async def _inspect(self) -> tuple[bool | None, dict[str, Any] | None]:
        """(running, inspect answer); running None when the engine cannot be asked."""
        try:
            info = await self.source.engine.inspect(self.cid)
        except NotFound:
            return False, None
        except EngineError:
            return None, None
        return bool((info.get("State") or {}).get("Running")), info


def _minus_margin(ts: str) -> str:
    seconds, frac = timestamp_to_unix(ts).split(".")
    ns = int(seconds) * 1_000_000_000 + int(frac) - SINCE_MARGIN_NS
    return format_timestamp_ns(max(ns, 0))


_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _read(fd: int, buf: bytearray, offset: int, tail: bytes, flags: int) -> bytes | None:
    """Up to ``len(buf) - 64`` bytes from ``offset``; None when the bytes before ``offset``
    are not ``tail`` any more: the file shrank (truncated), maybe then was written past
    ``offset`` again (the engine appends). ``tail`` holds the end of the last line read,
    with its time stamp, so new lines cannot match it. With ``RWF_NOWAIT`` it raises
    ``BlockingIOError`` unless the bytes are in the page cache."""
    expect = (tail or b"\n") if offset else b""
    n = os.preadv(fd, [buf], offset - len(expect), flags)
    data = bytes(memoryview(buf)[:n])
    if not data.startswith(expect):
        return None
    return data[len(expect) :] if expect else data


# -- the source ---------------------------------------------------------------------------


class JsonFileLogSource(LogSource):
    """Reads ``<containers_dir>/<id>/<id>-json.log`` (and its rotated files) directly."""

    name = "files"

    def __init__(
        self,
        engine: Engine,
        containers_dir: str,
        max_message_bytes: int,
        use_inotify: bool | None = None,
        chunk_bytes: int = CHUNK_BYTES,
        poll_seconds: float = POLL_SECONDS,
        trickle_seconds: float = TRICKLE_SECONDS,
    ) -> None:
        self.engine = engine
        self.containers_dir = containers_dir
        self.max_message_bytes = max_message_bytes
        self.use_inotify = USE_INOTIFY if use_inotify is None else use_inotify
        self.chunk_bytes = chunk_bytes
        self.poll_seconds = poll_seconds
        self.trickle_seconds = trickle_seconds
        self.lost = 0  # lines lost to rotation or truncation (estimated), all containers
        # Per container: lines/bytes of files finished (to estimate lines lost).
        self._lines: dict[str, int] = {}
        self._bytes: dict[str, int] = {}
        self._inotify: Inotify | None = None
        self._inotify_warned = False
        self._buf = bytearray()  # in-place reads land here

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.containers_dir, container_id, f"{container_id}-json.log")

    async def read(
        self, reader: ContainerReader, positions: dict[str, Position], emit: Emit
    ) -> StreamEnd:
        self._prune(reader)
        tail = _Tail(self, reader)
        try:
            return await tail.run(positions, emit)
        except PermissionError as exc:
            raise EngineError(f"log file of {reader.meta.name}: {exc}") from exc
        finally:
            tail.close()

    def _prune(self, reader: ContainerReader) -> None:
        known = reader.followers.positions
        for table in (self._lines, self._bytes):
            for cid in [c for c in table if c not in known]:
                del table[cid]

    def _acquire_inotify(self) -> Inotify:
        if self._inotify is None or self._inotify.loop is not asyncio.get_running_loop():
            self._inotify = Inotify()
        self._inotify.users += 1
        return self._inotify

    def _release_inotify(self) -> None:
        ino = self._inotify
        if ino is None:
            return
        ino.users -= 1
        if ino.users <= 0:
            ino.close()
            self._inotify = None

    def _inotify_failed(self, exc: OSError) -> None:
        if not self._inotify_warned:
            self._inotify_warned = True
            log.warning(
                "inotify_unavailable",
                error=str(exc),
                fallback=f"polling every {self.poll_seconds} s",
                hint="raise fs.inotify.max_user_watches / max_user_instances",
            )


# -- choosing a source per container ------------------------------------------------------


def _isdir(path: str) -> bool:
    return os.path.isdir(path)


def _dir_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as the containers directory, or None if it can."""
    try:
        os.listdir(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


class SourceChooser:
    """``logs.source``: which source reads each container.

    ``auto`` reads a container's file when the containers directory is readable and the
    container has a ``<id>-json.log`` (the json-file driver writes exactly that file, so
    this needs no inspect before a short-lived container's logs are asked for), else the
    API; ``files`` does the same but says, once per container, why one falls back to the
    API; ``api`` always uses the API.
    """

    def __init__(self, mode: str, api: LogSource, files: JsonFileLogSource) -> None:
        self.mode = mode
        self.api = api
        self.files = files
        self.dir_problem = _dir_problem(files.containers_dir) if mode != "api" else None
        if self.dir_problem is not None:
            (log.warning if mode == "files" else log.info)(
                "log_files_unreadable",
                containers_dir=files.containers_dir,
                error=self.dir_problem,
                fallback="every container's logs are read through the engine's logs API",
                hint="mount the host's container directory read-only and set "
                "logs.containers_dir (see README: Reading json-file logs from disk)",
            )

    async def __call__(self, meta: ContainerMeta) -> LogSource:
        if self.mode == "api" or self.dir_problem is not None:
            return self.api
        path = self.files.log_path(meta.id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if _isdir(os.path.dirname(path)):
                reason = "no json-file log (the container uses another log driver)"
            else:
                reason = f"no directory {os.path.dirname(path)} (gone, or another engine's)"
        except OSError as exc:
            reason = f"{path}: {exc.strerror or exc}"
        else:
            os.close(fd)
            return self.files
        (log.warning if self.mode == "files" else log.debug)(
            "log_source_fallback",
            container=meta.name,
            id=meta.id[:12],
            source="api",
            reason=reason,
        )
        return self.api
