"""inotify: the agent's ctypes binding against inotify_simple, asyncinotify and watchfiles.

On the json-file source's workload, without the engine: everything happens under one
temporary directory in /tmp.

Each candidate runs in a fresh child process (this module with ``--child``) that watches N
directories as ``FileChain`` and ``Tail`` do, while this process makes the changes:

* current: ``agent.sources.jsonfile.inotify.Inotify`` as the agent uses it: ``add(path,
  mask, handler)`` with ``_DIR_MASK`` per directory, handlers in its watcher thread, a
  rotated file opened by ``scan_now`` from ``Inotify.dirty`` after the batch;
* inotify_simple: its ``INotify`` read the same way by one thread (poll on its descriptor
  and a wake-up pipe, ``read(timeout=0)``, handlers dispatched by watch descriptor);
* asyncinotify: its natural way, ``async for event in Inotify()`` on the event loop;
* watchfiles: its natural way, ``awatch(*dirs, recursive=False, watch_filter=None)`` with
  its default debounce (1,600 ms) and step (50 ms): sets of changes on the loop.

Measured:

1. cpu: every directory holds ``app.log``, followed by a reader (the agent's one-shot
   ``IN_MODIFY`` watch, re-armed from the loop after each wake-up; watchfiles: the
   directory's "modified" changes), while this process appends 100-byte lines to them and
   creates files at a steady rate (hard links to one file: an IN_CREATE each, without the
   ~2 ms a new inode can take on a VM's disk). Reported: the child's CPU (every thread,
   ``time.process_time``) per 1,000 filesystem operations and per 1,000 events delivered,
   creations seen against made, the creation-to-consumer latency under that load, and the
   idle CPU with the N directories watched.
2. busy: the child's event loop runs pure-Python work in 20 ms slices (decoding a chunk,
   encoding a batch). Each trial rotates a file as fast as ``max-file=2`` could: ``x.log``
   appears (file A), 1 ms later it is renamed to ``x.log.1`` and a new ``x.log`` appears
   (B), 1 ms later ``x.log.1`` is deleted (A is gone), and B is deleted when the trial ends
   (25-35 ms after it began). On a creation of ``x.log`` the consumer opens both names, as
   ``FileChain.scan_now`` does, and notes which file it got (each holds its own id).
   Reported: creation-to-handler latency (median, p99), and how many A files were opened
   (before the deletion; before the rename) and how many B files.
3. import: time to import the library and create its first instance (for the threaded
   two, with the watcher thread started), and the RSS that adds, in a fresh interpreter that
   already holds asyncio, ctypes and structlog (as the agent does). And the part of the CPU
   that differs by library, measured alone (the workload above also pays the readers'
   wake-ups, which are the same for the three): reading, parsing and dispatching a queue of
   events (its watcher thread stopped, the same code run on the main thread; asyncinotify:
   ``await get()``), and arming a one-shot watch.
4. features: what each can express (from their sources), printed as a table.

    python -m bench.inotify [--dirs 100] [--seconds 2.5] [--trials 100] [--reps 3]

The candidates must be installed in the venv (``pip install inotify_simple asyncinotify
watchfiles``); missing ones are skipped. inotify instances are limited per user
(fs.inotify.max_user_instances): each child uses one, and N watches. Not through
``bench.common.standalone``, which starts the test engine: this bench needs none.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIBS = ("current", "inotify_simple", "asyncinotify", "watchfiles")
BASE = "x.log"  # the rotated file of the busy-loop trials
ROTATED = "x.log.1"
APP = "app.log"  # the appended file of the cpu phase
SLICE_S = 0.020  # the event loop's busy slices

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
DIR_MASK = IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
FILE_MASK = IN_MODIFY | IN_ONESHOT

# What each can express, from its source (site-packages, and watchfiles' src/lib.rs with
# notify's src/inotify.rs): one-shot, IN_CLOSE_WRITE, IN_IGNORED, IN_Q_OVERFLOW, adding and
# removing watches while it runs, and whether every creation is an event of its own.
FEATURES = {
    "current": ("yes", "yes", "yes", "yes: every handler", "yes", "yes"),
    "inotify_simple": ("yes", "yes", "yes (raw)", "yes (wd -1)", "yes", "yes"),
    "asyncinotify": (
        "yes",
        "yes",
        "yes (watch=None after a one-shot)",
        "yes (watch=None)",
        "yes",
        "yes",
    ),
    "watchfiles": (
        "no (no masks)",
        "no (dropped)",
        "no",
        "no (Rescan has no path: dropped)",
        "no (paths fixed per awatch)",
        "no (a set per batch)",
    ),
}
FEATURE_HEADERS = (
    "one-shot",
    "IN_CLOSE_WRITE",
    "IN_IGNORED",
    "IN_Q_OVERFLOW",
    "add/rm watches live",
    "each creation counted",
)


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(q * len(s)) - 1)]


# -- the child: one candidate watching the directories -------------------------------------


class _State:
    """What the consumer saw; written from the watcher thread or the loop."""

    def __init__(self) -> None:
        self.events = 0  # deliveries: handler calls, or change tuples (watchfiles)
        self.reads = 0  # reader wake-ups that found new data
        self.created: dict[str, float] = {}  # name -> first seen (monotonic)
        self.rot_seen: list[tuple[int, float]] = []  # (directory, seen) per x.log creation
        self.opened: dict[str, tuple[str, float]] = {}  # file id -> (name opened, when)
        self.last_event = 0.0


def _scan(st: _State, directory: str) -> None:
    """``FileChain.scan_now`` in short: open every name of the chain, keep what is new."""
    for name in (BASE, ROTATED):
        try:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            ident = os.pread(fd, 32, 0).decode().strip()
        finally:
            os.close(fd)
        if ident and ident not in st.opened:
            st.opened[ident] = (name, time.monotonic())


class _Chain:
    """What the watcher thread's ``dirty`` set holds: something with ``scan_now``."""

    def __init__(self, st: _State, directory: str) -> None:
        self.st = st
        self.dir = directory
        self.wake = asyncio.Event()

    def scan_now(self) -> int:
        _scan(self.st, self.dir)
        return 0


class _SimpleThread:
    """inotify_simple's ``INotify`` behind the same thread as the agent's binding."""

    def __init__(self, mod: Any) -> None:
        self.mod = mod
        self.ino = mod.INotify(nonblocking=True)
        self.loop = asyncio.get_running_loop()
        self.handlers: dict[int, Callable[[int, str], None]] = {}
        self.lock = threading.Lock()
        self.dirty: set[Any] = set()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def add(self, path: str, mask: int, handler: Callable[[int, str], None]) -> int:
        with self.lock:
            wd = int(self.ino.add_watch(path, mask))
            self.handlers[wd] = handler
        return wd

    def to_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(fn, *args)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.ino.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            poller.poll()
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            self.drain()
            while self.dirty:
                self.dirty.pop().scan_now()

    def drain(self) -> None:
        for ev in self.ino.read(timeout=0):
            if ev.mask & IN_Q_OVERFLOW:
                with self.lock:
                    handlers = list(self.handlers.values())
            else:
                with self.lock:
                    handler = self.handlers.get(ev.wd)
                    if ev.mask & IN_IGNORED:
                        self.handlers.pop(ev.wd, None)
                handlers = [handler] if handler is not None else []
            for handler in handlers:
                handler(ev.mask, ev.name)

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"s")
        self._thread.join(timeout=5)
        self.ino.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


class _Threaded:
    """current and inotify_simple: handlers in the watcher thread, readers on the loop."""

    def __init__(self, lib: str, st: _State, dirs: list[str]) -> None:
        self.lib = lib
        self.st = st
        self.dirs = dirs
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        if self.lib == "current":
            from agent.sources.jsonfile.inotify import Inotify

            self.w: Any = Inotify()
            base, prefix, probe = BASE.encode(), b"c-", b"probe"

            def name_str(name: Any) -> str:
                return str(name.decode())
        else:
            self.w = _SimpleThread(importlib.import_module("inotify_simple"))
            base, prefix, probe = BASE, "c-", "probe"

            def name_str(name: Any) -> str:
                return str(name)

        st, w = self.st, self.w
        for i, d in enumerate(self.dirs):
            chain = _Chain(st, d)

            def on_dir(mask: int, name: Any, i: int = i, chain: _Chain = chain) -> None:
                st.events += 1
                if mask & (IN_CREATE | IN_MOVED_TO):
                    now = time.monotonic()
                    st.last_event = now
                    if name == base:
                        st.rot_seen.append((i, now))
                        w.dirty.add(chain)  # opened after the batch, in this thread
                        w.to_loop(chain.wake.set)
                    elif name.startswith(prefix) or name == probe:
                        st.created.setdefault(name_str(name), now)

            w.add(d, DIR_MASK, on_dir)
            self.tasks.append(asyncio.create_task(self._follow(os.path.join(d, APP))))

    async def _follow(self, path: str) -> None:
        """``Tail._wait``: arm a one-shot IN_MODIFY, check the size, wait for the wake."""
        st, w = self.st, self.w
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        pos = os.fstat(fd).st_size
        wake = asyncio.Event()

        def on_file(mask: int, name: Any) -> None:
            st.events += 1
            w.to_loop(wake.set)

        try:
            while True:
                wake.clear()
                w.add(path, FILE_MASK, on_file)
                size = os.fstat(fd).st_size
                if size <= pos:
                    await wake.wait()
                    size = os.fstat(fd).st_size
                if size > pos:
                    st.reads += 1
                pos = size
        finally:
            os.close(fd)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.w.close()


class _AsyncInotify:
    """asyncinotify: one ``Inotify`` iterated on the loop, handlers by watch descriptor."""

    def __init__(self, st: _State, dirs: list[str]) -> None:
        self.st = st
        self.dirs = dirs
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        mod = importlib.import_module("asyncinotify")
        self.mod = mod
        self.ino = mod.Inotify()
        self.handlers: dict[int, Callable[[Any], None]] = {}
        st, mask_t = self.st, mod.Mask
        dir_mask = mask_t(DIR_MASK)
        created = mask_t.CREATE | mask_t.MOVED_TO
        for i, d in enumerate(self.dirs):

            def on_dir(ev: Any, i: int = i, d: str = d) -> None:
                if ev.mask & created:
                    now = time.monotonic()
                    st.last_event = now
                    name = str(ev.name)
                    if name == BASE:
                        st.rot_seen.append((i, now))
                        _scan(st, d)
                    elif name.startswith("c-") or name == "probe":
                        st.created.setdefault(name, now)

            watch = self.ino.add_watch(d, dir_mask)
            self.handlers[watch.wd] = on_dir
            self.tasks.append(asyncio.create_task(self._follow(os.path.join(d, APP))))
        self.tasks.append(asyncio.create_task(self._dispatch()))

    async def _dispatch(self) -> None:
        oneshot = self.mod.Mask.ONESHOT
        async for ev in self.ino:
            self.st.events += 1
            watch = ev.watch
            if watch is None:  # the IN_IGNORED after a one-shot, or an overflow
                continue
            if watch.mask & oneshot:
                handler = self.handlers.pop(watch.wd, None)
            else:
                handler = self.handlers.get(watch.wd)
            if handler is not None:
                handler(ev)

    async def _follow(self, path: str) -> None:
        st = self.st
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        pos = os.fstat(fd).st_size
        wake = asyncio.Event()
        mask = self.mod.Mask.MODIFY | self.mod.Mask.ONESHOT

        def on_file(ev: Any) -> None:
            wake.set()

        try:
            while True:
                wake.clear()
                watch = self.ino.add_watch(path, mask)
                self.handlers[watch.wd] = on_file
                size = os.fstat(fd).st_size
                if size <= pos:
                    await wake.wait()
                    size = os.fstat(fd).st_size
                if size > pos:
                    st.reads += 1
                pos = size
        finally:
            os.close(fd)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.ino.close()


class _Watchfiles:
    """watchfiles: ``awatch`` over the directories; readers woken by "modified" changes."""

    def __init__(self, st: _State, dirs: list[str]) -> None:
        self.st = st
        self.dirs = dirs
        self.index = {d: i for i, d in enumerate(dirs)}
        self.wakes: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.stop = asyncio.Event()

    async def start(self) -> None:
        mod = importlib.import_module("watchfiles")
        self.mod = mod
        for d in self.dirs:
            path = os.path.join(d, APP)
            self.wakes[path] = asyncio.Event()
            self.tasks.append(asyncio.create_task(self._follow(path)))
        self.tasks.append(asyncio.create_task(self._run()))

    async def _run(self) -> None:
        st, added, modified = self.st, self.mod.Change.added, self.mod.Change.modified
        async for changes in self.mod.awatch(
            *self.dirs, watch_filter=None, recursive=False, stop_event=self.stop
        ):
            now = time.monotonic()
            st.last_event = now
            for change, path in changes:
                st.events += 1
                d, _, name = path.rpartition("/")
                if change == added:
                    if name == BASE:
                        st.rot_seen.append((self.index[d], now))
                        _scan(st, d)
                    elif name.startswith("c-") or name == "probe":
                        st.created.setdefault(name, now)
                elif change == modified:
                    wake = self.wakes.get(path)
                    if wake is not None:
                        wake.set()

    async def _follow(self, path: str) -> None:
        st = self.st
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        pos = os.fstat(fd).st_size
        wake = self.wakes[path]
        try:
            while True:
                wake.clear()
                size = os.fstat(fd).st_size
                if size <= pos:
                    await wake.wait()
                    size = os.fstat(fd).st_size
                if size > pos:
                    st.reads += 1
                pos = size
        finally:
            os.close(fd)

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks[:-1]:
            t.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 5)


def _send(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def _spin(stop: asyncio.Event) -> None:
    """The busy event loop: 20 ms of pure-Python work, a yield, again."""
    x = 0
    while not stop.is_set():
        end = time.perf_counter() + SLICE_S
        while time.perf_counter() < end:
            for i in range(100):
                x += i * i
        await asyncio.sleep(0)


async def _child(lib: str, root: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    dirs = [os.path.join(root, f"d{i:03d}") for i in range(n)]
    st = _State()
    watcher: Any
    if lib in ("current", "inotify_simple"):
        watcher = _Threaded(lib, st, dirs)
    elif lib == "asyncinotify":
        watcher = _AsyncInotify(st, dirs)
    else:
        watcher = _Watchfiles(st, dirs)
    await watcher.start()
    # Ready once a creation comes through (watchfiles starts its watcher in the generator,
    # once the loop runs it): a probe file, created again every 0.2 s, for at most 10 s.
    probe = os.path.join(dirs[0], "probe")
    for attempt in range(1000):
        if "probe" in st.created:
            break
        if attempt % 20 == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)
            os.close(os.open(probe, os.O_CREAT | os.O_WRONLY, 0o644))
        await asyncio.sleep(0.01)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _send({"ready": "probe" in st.created})
    cpu0 = wall0 = 0.0
    stop_spin = asyncio.Event()
    spin: asyncio.Task[None] | None = None
    while line := await reader.readline():
        cmd = json.loads(line)["cmd"]
        if cmd == "idle":
            c0, w0 = time.process_time(), time.monotonic()
            await asyncio.sleep(0.5)
            _send(
                {"idle_cpu_ms_per_s": 1000 * (time.process_time() - c0) / (time.monotonic() - w0)}
            )
        elif cmd == "cpu_start":
            st.events = st.reads = 0
            st.created = {}
            cpu0, wall0 = time.process_time(), time.monotonic()
            _send({})
        elif cmd == "status":
            _send({"created": len(st.created)})
        elif cmd == "cpu_stop":
            _send(
                {
                    "cpu_s": time.process_time() - cpu0,
                    "wall_s": time.monotonic() - wall0,
                    "events": st.events,
                    "reads": st.reads,
                    "created": st.created,
                }
            )
        elif cmd == "busy_start":
            st.rot_seen, st.opened = [], {}
            stop_spin.clear()
            spin = asyncio.create_task(_spin(stop_spin))
            _send({})
        elif cmd == "busy_stop":
            stop_spin.set()
            if spin is not None:
                await spin
            # Late deliveries (watchfiles' debounce): until 0.4 s without one, at most 3 s.
            for _ in range(60):
                if time.monotonic() - st.last_event >= 0.4:
                    break
                await asyncio.sleep(0.05)
            _send({"rot_seen": st.rot_seen, "opened": st.opened})
        elif cmd == "quit":
            break
    await watcher.close()
    _send({"bye": True})


def _child_import(lib: str, k: int) -> None:
    """Import and first-instance cost over what the agent already has loaded; then the
    per-event micro measurement (watchfiles: none, its event path is in Rust)."""
    import ctypes  # noqa: F401 - the agent's cli imports it

    import structlog  # noqa: F401

    loop = asyncio.new_event_loop()
    rss0 = _rss_kb()
    t0 = time.perf_counter()
    if lib == "current":
        mod = importlib.import_module("agent.sources.jsonfile.inotify")
    else:
        mod = importlib.import_module(lib)
    t1 = time.perf_counter()
    keep: Any
    if lib == "current":

        async def make() -> Any:
            return mod.Inotify()

        keep = loop.run_until_complete(make())
    elif lib == "inotify_simple":  # with its watcher thread, as the agent would use it

        async def make_thread() -> Any:
            return _SimpleThread(mod)

        keep = loop.run_until_complete(make_thread())
    elif lib == "asyncinotify":
        keep = mod.Inotify()
    else:
        rust = importlib.import_module("watchfiles._rust_notify")
        keep = rust.RustNotify([tempfile.gettempdir()], False, False, 300, False, False)
    t2 = time.perf_counter()
    rss1 = _rss_kb()
    out: dict[str, Any] = {
        "import_ms": 1000 * (t1 - t0),
        "init_ms": 1000 * (t2 - t1),
        "rss_kb": rss1 - rss0,
    }
    keep.close()
    loop.close()
    if lib != "watchfiles":
        out.update(_micro(lib, k))
    _send(out)


def _micro(lib: str, k: int) -> dict[str, float]:
    """The part that differs by library, without a workload around it: reading, parsing
    and dispatching k queued IN_CREATE events (k hard links made to one file) to a handler
    that counts, and arming a one-shot IN_MODIFY watch again (k times)."""
    root = tempfile.mkdtemp(prefix="bench-inotify-micro-", dir="/tmp")
    app = os.path.join(root, APP)
    Path(app).touch()
    count = [0]

    def make_events() -> None:
        for i in range(k):
            os.link(app, os.path.join(root, f"f{i}"))

    async def threaded() -> tuple[float, float]:
        if lib == "current":
            from agent.sources.jsonfile.inotify import Inotify

            w: Any = Inotify()
            w._stopping = True  # its thread ends: this measurement reads the events itself
            os.write(w._wake_w, b"s")
            w._thread.join()
        else:
            w = _SimpleThread(importlib.import_module("inotify_simple"))
            w._stopping = True
            os.write(w._wake_w, b"s")
            w._thread.join()

        def handler(mask: int, name: Any) -> None:
            count[0] += 1

        w.add(root, DIR_MASK, handler)
        make_events()
        t0 = time.process_time()
        w.drain()
        t1 = time.process_time()
        for _ in range(k):
            w.add(app, FILE_MASK, handler)
        t2 = time.process_time()
        return t1 - t0, t2 - t1

    async def asyncinotify() -> tuple[float, float]:
        mod = importlib.import_module("asyncinotify")
        ino = mod.Inotify()
        oneshot = mod.Mask.ONESHOT
        handlers: dict[int, Callable[[Any], None]] = {}

        def handler(ev: Any) -> None:
            count[0] += 1

        handlers[ino.add_watch(root, mod.Mask(DIR_MASK)).wd] = handler
        make_events()
        t0 = time.process_time()
        async with asyncio.timeout(10):
            while count[0] < k:  # _AsyncInotify._dispatch's body
                ev = await ino.get()
                watch = ev.watch
                if watch is None:
                    continue
                oneshot_watch = watch.mask & oneshot
                h = handlers.pop(watch.wd, None) if oneshot_watch else handlers.get(watch.wd)
                if h is not None:
                    h(ev)
        t1 = time.process_time()
        mask = mod.Mask.MODIFY | mod.Mask.ONESHOT
        for _ in range(k):
            handlers[ino.add_watch(app, mask).wd] = handler
        t2 = time.process_time()
        ino.close()
        return t1 - t0, t2 - t1

    try:
        dispatch_s, add_s = asyncio.run(asyncinotify() if lib == "asyncinotify" else threaded())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "events": count[0],
        "dispatch_us": 1e6 * dispatch_s / max(count[0], 1),
        "add_us": 1e6 * add_s / k,
    }


# -- the parent: makes the changes, collects the figures ------------------------------------


class _Child:
    def __init__(self, lib: str, root: str, n: int) -> None:
        self.lib = lib
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.inotify",
                "--child",
                lib,
                "--root",
                root,
                "--dirs",
                str(n),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait(10)
            raise RuntimeError(
                f"{self.lib}: the child exited with code {rc} (see its stderr above; "
                "EMFILE/ENOSPC: inotify limits, try fewer --dirs)"
            )
        return dict(json.loads(line))

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd}) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask("quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _cpu_phase(child: _Child, dirs: list[str], args: argparse.Namespace) -> dict[str, Any]:
    line = b"x" * 99 + b"\n"
    # A creation is a hard link to one file: an IN_CREATE like a new file's, without this
    # disk's ~2 ms for each new inode (which would load the machine the child runs on).
    src = os.path.join(os.path.dirname(dirs[0]), "created")
    Path(src).touch()
    fds = [os.open(os.path.join(d, APP), os.O_WRONLY | os.O_APPEND) for d in dirs]
    made: dict[str, float] = {}
    appends = creates = 0
    child.ask("cpu_start")
    t0 = time.monotonic()
    try:
        while (now := time.monotonic()) < t0 + args.seconds:
            due = int((now - t0) * args.append_rate)
            while appends < due:
                os.write(fds[appends % len(fds)], line)
                appends += 1
            due = int((now - t0) * args.create_rate)
            while creates < due:
                name = f"c-{creates}"
                made[name] = time.monotonic()
                os.link(src, os.path.join(dirs[creates % len(dirs)], name))
                creates += 1
            time.sleep(0.002)
    finally:
        for fd in fds:
            os.close(fd)
    deadline = time.monotonic() + 3.0  # watchfiles: up to one debounce (1.6 s) late
    while time.monotonic() < deadline and child.ask("status")["created"] < len(made):
        time.sleep(0.05)
    r = child.ask("cpu_stop")
    seen: dict[str, float] = r["created"]
    lat = [1000 * (seen[k] - t) for k, t in made.items() if k in seen]
    ops = appends + creates
    return {
        "cpu_s": r["cpu_s"],
        "wall_s": r["wall_s"],
        "ops": ops,
        "events": r["events"],
        "reads": r["reads"],
        "cpu_ms_per_1k_ops": 1000 * r["cpu_s"] / (ops / 1000),
        "cpu_ms_per_1k_events": 1000 * r["cpu_s"] / (r["events"] / 1000) if r["events"] else None,
        "created_made": len(made),
        "created_seen": sum(1 for k in made if k in seen),
        "create_lat_p50_ms": _pct(lat, 0.5),
        "create_lat_p99_ms": _pct(lat, 0.99),
    }


def _busy_phase(child: _Child, root: str, dirs: list[str], args: argparse.Namespace) -> dict:
    src = os.path.join(root, "src")
    os.makedirs(src, exist_ok=True)
    for k in range(args.trials):
        for tag in "AB":
            with open(os.path.join(src, f"{k}{tag}"), "w") as f:
                f.write(f"{k}:{tag}\n")
    rng = random.Random(args.seed)
    trials: list[tuple[int, float]] = []
    child.ask("busy_start")
    time.sleep(0.1)
    for k in range(args.trials):
        i = k % len(dirs)
        d = dirs[i]
        base, rotated = os.path.join(d, BASE), os.path.join(d, ROTATED)
        period = 0.025 + 0.010 * rng.random()  # out of phase with the 20 ms slices
        t0 = time.monotonic()
        os.link(os.path.join(src, f"{k}A"), base)  # A appears
        trials.append((i, t0))
        _sleep_until(t0 + 0.001)
        os.rename(base, rotated)  # A rotated away ...
        os.link(os.path.join(src, f"{k}B"), base)  # ... and B appears
        _sleep_until(t0 + 0.002)
        os.unlink(rotated)  # A deleted (max-file=2 rotating again)
        _sleep_until(t0 + period)
        os.unlink(base)  # B deleted
    r = child.ask("busy_stop")
    shutil.rmtree(src, ignore_errors=True)
    seen_by_dir: dict[int, list[float]] = {}
    for i, t in r["rot_seen"]:
        seen_by_dir.setdefault(i, []).append(t)
    lat = []
    period_n = len(dirs)
    for k, (i, t0) in enumerate(trials):
        nxt = trials[k + period_n][1] if k + period_n < len(trials) else math.inf
        hits = [t for t in seen_by_dir.get(i, []) if t0 <= t < nxt]
        if hits:
            lat.append(1000 * (min(hits) - t0))
    opened: dict[str, list[Any]] = r["opened"]
    n = len(trials)
    a_open = sum(1 for k in range(n) if f"{k}:A" in opened)
    a_first = sum(1 for k in range(n) if opened.get(f"{k}:A", [""])[0] == BASE)
    b_open = sum(1 for k in range(n) if f"{k}:B" in opened)
    return {
        "trials": n,
        "seen": len(lat),
        "lat_p50_ms": _pct(lat, 0.5),
        "lat_p99_ms": _pct(lat, 0.99),
        "a_opened_pct": 100 * a_open / n,
        "a_before_rename_pct": 100 * a_first / n,
        "b_opened_pct": 100 * b_open / n,
    }


def _available(lib: str) -> bool:
    if lib == "current":
        return True
    try:
        importlib.import_module(lib)
    except ImportError:
        return False
    return True


def _one_run(lib: str, args: argparse.Namespace) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix=f"bench-inotify-{lib}-", dir="/tmp")
    try:
        dirs = [os.path.join(root, f"d{i:03d}") for i in range(args.dirs)]
        for d in dirs:
            os.mkdir(d)
            Path(d, APP).touch()
        child = _Child(lib, root, args.dirs)
        try:
            if not child.read().get("ready"):
                raise RuntimeError(f"{lib}: no creation came through within 10 s")
            out = {"idle_cpu_ms_per_s": child.ask("idle")["idle_cpu_ms_per_s"]}
            out["cpu"] = _cpu_phase(child, dirs, args)
            out["busy"] = _busy_phase(child, root, dirs, args)
        finally:
            child.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _import_cost(lib: str, reps: int, k: int) -> dict[str, Any]:
    # Every module from bytecode, as installed libraries are: the agent's own modules too
    # (compiled once into a cache under /tmp, also when PYTHONDONTWRITEBYTECODE is set).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "bench-inotify-pycache")
    runs = []
    for _ in range(reps + 1):  # the first one compiles: not counted
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.inotify",
                "--child-import",
                lib,
                "--micro-events",
                str(k),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs = runs[1:]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import log

    libs = [lib for lib in args.libs.split(",") if lib]
    missing = [lib for lib in libs if not _available(lib)]
    for lib in missing:
        log(f"{lib} is not installed (pip install {lib}): skipped")
    libs = [lib for lib in libs if lib not in missing]
    if not libs:
        raise SystemExit("nothing to measure")
    result: dict[str, Any] = {"params": vars(args).copy(), "libs": {}}
    runs: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
    for rep in range(args.reps):
        order = libs[rep % len(libs) :] + libs[: rep % len(libs)]  # each goes first once
        for lib in order:
            log(f"run {rep + 1}/{args.reps}: {lib}")
            runs[lib].append(_one_run(lib, args))
    for lib in libs:
        log(f"import cost: {lib}")
        rs = runs[lib]
        result["libs"][lib] = {
            "runs": rs,
            "idle_cpu_ms_per_s": statistics.median(r["idle_cpu_ms_per_s"] for r in rs),
            "cpu": _medians([r["cpu"] for r in rs]),
            "busy": _medians([r["busy"] for r in rs]),
            "import": _import_cost(lib, args.import_reps, args.micro_events),
        }
    return result


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for k in rows[0]:
        xs = [r[k] for r in rows if r[k] is not None]
        out[k] = statistics.median(xs) if xs else None
    return out


def _spread(xs: list[float]) -> str:
    return f"{min(xs):.0f}-{max(xs):.0f}" if xs else "-"


def report(result: dict[str, Any]) -> str:
    from bench.common import fmt, table

    libs = result["libs"]
    p = result["params"]
    lines = [
        f"1. cpu: {p['dirs']} directories, {p['append_rate']} appends/s + {p['create_rate']} "
        f"creations/s for {p['seconds']:g} s (medians of {p['reps']} runs)",
        table(
            [
                "",
                "CPU ms/1k ops",
                "(min-max)",
                "CPU ms/1k events",
                "events",
                "reader wakes",
                "created seen/made",
                "create lat p50 ms",
                "p99 ms",
                "idle CPU ms/s",
            ],
            [
                [
                    lib,
                    fmt(r["cpu"]["cpu_ms_per_1k_ops"], 1),
                    _spread([x["cpu"]["cpu_ms_per_1k_ops"] for x in r["runs"]]),
                    fmt(r["cpu"]["cpu_ms_per_1k_events"], 1),
                    fmt(round(r["cpu"]["events"])),
                    fmt(round(r["cpu"]["reads"])),
                    f"{r['cpu']['created_seen']:.0f}/{r['cpu']['created_made']:.0f}",
                    fmt(r["cpu"]["create_lat_p50_ms"], 2),
                    fmt(r["cpu"]["create_lat_p99_ms"], 2),
                    fmt(r["idle_cpu_ms_per_s"], 2),
                ]
                for lib, r in libs.items()
            ],
        ),
        "",
        f"2. busy loop ({SLICE_S * 1000:.0f} ms slices): {p['trials']} rotations; A is renamed "
        "after 1 ms and deleted after 2 ms, B deleted after 25-35 ms",
        table(
            [
                "",
                "latency p50 ms",
                "p99 ms",
                "seen/trials",
                "A opened %",
                "A before rename %",
                "B opened %",
            ],
            [
                [
                    lib,
                    fmt(r["busy"]["lat_p50_ms"], 2),
                    fmt(r["busy"]["lat_p99_ms"], 2),
                    f"{r['busy']['seen']:.0f}/{r['busy']['trials']:.0f}",
                    fmt(r["busy"]["a_opened_pct"], 0),
                    fmt(r["busy"]["a_before_rename_pct"], 0),
                    fmt(r["busy"]["b_opened_pct"], 0),
                ]
                for lib, r in libs.items()
            ],
        ),
        "",
        f"3. import (medians of {p['import_reps']}; over asyncio + ctypes + structlog), and "
        f"the library's own per-event cost ({p['micro_events']} IN_CREATE queued, then "
        "read, parsed and dispatched; a one-shot watch armed again)",
        table(
            [
                "",
                "import ms",
                "first instance ms",
                "RSS added MiB",
                "read+parse+dispatch us/event",
                "arm one-shot us",
            ],
            [
                [
                    lib,
                    fmt(r["import"]["import_ms"], 1),
                    fmt(r["import"]["init_ms"], 1),
                    fmt(r["import"]["rss_kb"] / 1024, 2),
                    fmt(r["import"].get("dispatch_us"), 2) if lib != "watchfiles" else "n/a",
                    fmt(r["import"].get("add_us"), 2) if lib != "watchfiles" else "n/a",
                ]
                for lib, r in libs.items()
            ],
        ),
        "",
        "4. features (from the sources)",
        table(["", *FEATURE_HEADERS], [[lib, *FEATURES[lib]] for lib in LIBS]),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("inotify")
    g.add_argument("--dirs", type=int, default=100, help="watched directories (100)")
    g.add_argument("--seconds", type=float, default=2.5, help="cpu phase length (2.5 s)")
    g.add_argument("--append-rate", type=int, default=2000, help="appends/s, all files (2000)")
    g.add_argument("--create-rate", type=int, default=200, help="creations/s, all dirs (200)")
    g.add_argument("--trials", type=int, default=100, help="busy-loop rotations (100)")
    g.add_argument("--reps", type=int, default=3, help="runs per library, medians (3)")
    g.add_argument("--import-reps", type=int, default=3, help="import measurements (3)")
    g.add_argument("--micro-events", type=int, default=10000, help="events per micro run (10000)")
    g.add_argument("--libs", default=",".join(LIBS), help="which candidates (all)")
    g.add_argument("--seed", type=int, default=1)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.inotify", description=(__doc__ or "").split("\n")[0]
    )
    add_arguments(parser)
    parser.add_argument("--json", help="also write the result as JSON to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-import", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(_child(args.child, args.root, args.dirs))
        return
    if args.child_import:
        _child_import(args.child_import, args.micro_events)
        return

    from bench.common import cpu_model, git_state, log, write_json

    t0 = time.monotonic()
    result = run(args)
    nproc = len(os.sched_getaffinity(0))
    print(
        f"{nproc} CPU(s) {cpu_model()}, kernel {os.uname().release}, Python "
        f"{sys.version.split()[0]}, agent at {git_state()}"
    )
    print(report(result))
    log(f"done in {time.monotonic() - t0:.0f} s")
    if args.json:
        write_json(Path(args.json), {"inotify": result})


if __name__ == "__main__":
    main()
