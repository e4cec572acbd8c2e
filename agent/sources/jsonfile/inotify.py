"""inotify for the json-file source, shared by every container's tail: one descriptor
(``inotify_simple``) read by a watcher thread for the containers' directories, the one that
keeps up with rotations while the event loop is busy (bench/inotify.py; docs/design.md),
and one read on the event loop for the files being read (``FileWatches``), whose
modifications only wake a reader waiting at the end of its file: no thread hand-over
(and GIL hand-over) per line written."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog
from inotify_simple import INotify, flags

log = structlog.get_logger("agent.sources.jsonfile")

IN_MODIFY = int(flags.MODIFY)
IN_CLOSE_WRITE = int(flags.CLOSE_WRITE)
IN_MOVED_TO = int(flags.MOVED_TO)
IN_CREATE = int(flags.CREATE)
IN_DELETE_SELF = int(flags.DELETE_SELF)
IN_MOVE_SELF = int(flags.MOVE_SELF)
IN_Q_OVERFLOW = int(flags.Q_OVERFLOW)
IN_IGNORED = int(flags.IGNORED)
IN_ONLYDIR = int(flags.ONLYDIR)
IN_ONESHOT = int(flags.ONESHOT)

_EVENT = struct.Struct("iIII")  # struct inotify_event without its name
_READ_BYTES = 64 * 1024
# A read that left room for an event with the longest name emptied the queue.
_ROOM = _READ_BYTES - _EVENT.size - 256

_DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR


Handler = Callable[[int, str], None]

# A file's modification wakes its reader at most this much later (the default of
# ``logs.files_linger_seconds``): after reading its descriptor, the loop leaves it this
# long, so that the modifications of every file written meanwhile are read together (a
# host of many quiet containers otherwise pays a wake-up per line). Rotations and closes
# (the watcher thread) are handled at once. 0.25 s, not 0.1: at 100 containers x 1 line/s
# 4 loop wakes a second instead of 10, 1.20 -> 0.90 % of a core (medians of 4 alternating
# runs, docs/benchmarks.md "Session 10"), for ~75 ms more delay on average; Fluent Bit's
# own flush is 1 s.
WAKE_LINGER_SECONDS = 0.25
# Readers waiting longer than this for their file (an idle container: until its next
# liveness look, up to minutes) are woken at their deadline by the watcher thread, which
# looks this often, rather than by a timer each on the loop: the timers of hundreds of
# readers, set and cancelled at every line, cost the loop's heap more than the lines.
TICK_SECONDS = 1.0


class _Watches:
    """One inotify descriptor and its watches' handlers (``lock`` guards them: the
    watcher thread and the loop both add and remove). ``drain`` reads every queued event
    and calls its watch's handler; ``mask`` has ``IN_Q_OVERFLOW`` when the kernel's queue
    overflowed (events were lost: every handler is called)."""

    def __init__(self) -> None:
        self._inotify = INotify(nonblocking=True)  # OSError (EMFILE) when none is left
        self.fd = self._inotify.fileno()
        self.handlers: dict[int, Handler] = {}
        self.lock = threading.Lock()  # guards ``handlers``
        self.overflows = 0

    def add(self, path: str, mask: int, handler: Handler) -> int:
        with self.lock:
            try:
                wd = int(self._inotify.add_watch(path, mask))
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, path) from None
            self.handlers[wd] = handler
        return wd

    def remove(self, wd: int, handler: Handler) -> None:
        with self.lock:
            if self.handlers.get(wd) == handler:  # (bound methods are equal, not identical)
                del self.handlers[wd]
                with contextlib.suppress(OSError):  # EINVAL if a one-shot fired: fine
                    self._inotify.rm_watch(wd)

    def remove_all(self, handler: Handler) -> None:
        with self.lock:
            mine = [wd for wd, h in self.handlers.items() if h == handler]
        for wd in mine:
            self.remove(wd, handler)

    def _events(self) -> list[tuple[int, int, str]]:
        """The events queued now, (wd, mask, name): one read of the (non-blocking)
        descriptor, more only while they fill the buffer."""
        out: list[tuple[int, int, str]] = []
        unpack = _EVENT.unpack_from
        head = _EVENT.size
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except OSError:  # EAGAIN: none queued (EBADF: closed meanwhile)
                return out
            pos, end = 0, len(data)
            while pos < end:
                wd, mask, _cookie, size = unpack(data, pos)
                pos += head + size
                # a name only for a watched directory's entries, padded with NULs
                name = os.fsdecode(data[pos - size : pos].split(b"\0", 1)[0]) if size else ""
                out.append((wd, mask, name))
            if end <= _ROOM:
                return out

    def drain(self) -> int:
        """Reads every queued event and calls its watch's handler (every handler for an
        overflow). Returns how many events were read."""
        events = self._events()
        if not events:
            return 0
        calls: list[tuple[Handler, int, str]] = []
        with self.lock:
            handlers = self.handlers
            for wd, mask, name in events:
                if mask & IN_Q_OVERFLOW:
                    self.overflows += 1
                    calls.extend((handler, mask, name) for handler in handlers.values())
                    continue
                handler = handlers.get(wd)
                if mask & IN_IGNORED:
                    handlers.pop(wd, None)  # the watch is gone (removed, or its file)
                if handler is not None:
                    calls.append((handler, mask, name))
        for handler, mask, name in calls:
            try:
                handler(mask, name)
            except Exception as exc:  # one reader's handler must not stop the rest
                log.warning("inotify_handler_failed", error=repr(exc))
        return len(events)

    def _close_descriptor(self) -> None:
        with contextlib.suppress(OSError):
            self._inotify.close()
        self.handlers.clear()


class Inotify(_Watches):
    """One inotify descriptor and the thread that reads it, shared by a source's readers.

    Handlers run in that thread, in event order, so that a rotated file is opened within
    about one GIL switch interval (5 ms) of its creation even while the event loop is busy
    for longer (decoding a chunk, an exporter encoding a batch): a file that is open cannot
    be rotated away. The thread is the only reader of the descriptor; ``call`` runs a
    function in it (between two batches of events) and returns its result to the loop.
    ``mask`` has ``IN_Q_OVERFLOW`` when the kernel's queue overflowed (events were lost).
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        try:
            self.files = FileWatches(self.loop)
        except OSError:
            self._inotify.close()
            raise
        self.users = 0
        self.dirty: set[Any] = set()  # readers whose directory changed: scan after the batch
        self._calls: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self.sleepers: dict[asyncio.Event, float] = {}  # wake at that time (under ``lock``)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

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

    def sleep_until(self, event: asyncio.Event, deadline: float) -> None:
        """Sets ``event`` at ``deadline`` (``time.monotonic``), up to ``TICK_SECONDS``
        late, unless ``unsleep`` came first (from the loop)."""
        with self.lock:
            first = not self.sleepers
            self.sleepers[event] = deadline
        if first:  # the thread may be in a poll without a timeout
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"t")

    def unsleep(self, event: asyncio.Event) -> None:
        with self.lock:
            self.sleepers.pop(event, None)

    def _wake_due(self) -> None:
        now = time.monotonic()
        with self.lock:
            due = [e for e, deadline in self.sleepers.items() if deadline <= now]
            for event in due:
                del self.sleepers[event]
        if due:
            self.to_loop(_set_all, due)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            timeout = None
            if self.sleepers:
                self._wake_due()
                timeout = TICK_SECONDS * 1000
            poller.poll(timeout)
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

    def close(self) -> None:
        self.files.close()
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        self._thread.join(timeout=5)
        self._close_descriptor()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class FileWatches(_Watches):
    """``IN_MODIFY`` watches on the files being read, their descriptor read on the event
    loop: a handler runs there (it wakes a reader). After a read the descriptor is left
    alone for ``linger`` s, so that the events of that time are read, and their
    readers woken, together; while events keep coming it is simply read again after each
    linger (no selector change), and watched again once a read finds none."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.linger = WAKE_LINGER_SECONDS
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        self.loop.remove_reader(self.fd)
        try:
            self.drain()
        finally:
            if not self._closed:
                self._timer = self.loop.call_later(self.linger, self._linger_over)

    def _linger_over(self) -> None:
        self._timer = None
        if self._closed:
            return
        found = 0
        try:
            found = self.drain()
        finally:
            if not self._closed:
                if found:
                    self._timer = self.loop.call_later(self.linger, self._linger_over)
                else:
                    self.loop.add_reader(self.fd, self._readable)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(Exception):  # the loop may be closed already
            self.loop.remove_reader(self.fd)
        self._close_descriptor()


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


def _set_result(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
