"""The agent's event loop: asyncio's, with wake-ups gathered while it is lightly loaded.

On a host of many quiet containers the loop wakes for nearly every log line: in API mode
each container's line arrives on its own socket, a moment apart from the others. Each
sleep and wake of a thread costs CPU of its own (measured on a 2-vCPU VM: about 65 µs of
the thread's CPU per wake, against 2 µs for a poll that finds an event ready), so at
100 containers at 1 line/s the wakes alone cost more than the lines.

``GatheringSelector`` keeps the loop asleep a little longer while it is lightly loaded:
when the loop last woke for events, less than ``window`` ago, and now finds nothing ready,
it first sleeps until ``window`` after that wake (never past the loop's next timer), then
polls. Whatever arrived meanwhile is handled in one wake. The loop so wakes for events at
most about 1/``window`` times a second while quiet, and at most ``window`` late for an
event. It polls as asyncio always does once the work of a wake takes half the window or
more, or events are ready when it looks, or for a second after a flood's worth of bytes
was read at once or handed to a socket to write (``flowing``: a busy loop is never held
back), and after a wake that found no events: a loop woken by its timers (the files
source's linger) gains nothing from a hold, which would cost a wake of its own.

A hold ends at once for an *urgent* descriptor (``urgent``): the loop's own wake-up pipe
(a thread's result, such as a ``/metrics`` page built in a thread, or a signal) and the
prometheus exporter's sockets (a scrape, a health check), so that only the log streams
wait for the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import selectors
import time

DEFAULT_WINDOW_SECONDS = 0.1
# A read of this many bytes at once is a stream that floods: no holds for a while.
FLOWING_BYTES = 32 << 10
FLOWING_SECONDS = 1.0


class GatheringSelector(selectors.EpollSelector):
    """asyncio's selector on Linux; see the module's docstring."""

    def __init__(self, window: float = DEFAULT_WINDOW_SECONDS) -> None:
        super().__init__()
        self.window = window
        self.held = 0  # polls that waited for the window first (a counter for tests)
        self._woke = 0.0  # when the last poll returned (time.monotonic)
        self._by_io = False  # whether it returned events (not a timer's time, not a hold's)
        self._urgent = select.epoll()  # descriptors that end a hold (``urgent``)
        self._flowing_until = 0.0  # no holds before this (``flowing``)

    def flowing(self) -> None:
        """A flood's worth of bytes (``FLOWING_BYTES``) was read at once, or handed to a
        socket to write: the loop is not held for ``FLOWING_SECONDS`` (a held loop would
        leave the engine blocked on full sockets, or a big ``/metrics`` page waiting for
        each "writable")."""
        self._flowing_until = time.monotonic() + FLOWING_SECONDS

    def urgent(self, fd: int) -> None:
        """A hold ends as soon as ``fd`` is readable. (Until it is closed: the kernel drops
        a closed descriptor from the set by itself.)"""
        with contextlib.suppress(OSError):  # (already there)
            self._urgent.register(fd, select.EPOLLIN)

    def close(self) -> None:
        self._urgent.close()
        super().close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        window = self.window
        if self._by_io and window > 0 and (timeout is None or timeout > 0):
            now = time.monotonic()
            busy = now - self._woke  # the work since the last wake
            if busy < window / 2 and now >= self._flowing_until:
                ready = super().select(0)
                if ready:
                    self._woke = now
                    return ready
                hold = window - busy
                if timeout is not None:
                    hold = min(hold, timeout)
                    timeout -= hold
                self.held += 1
                self._urgent.poll(hold)  # (what it finds, the poll below finds too)
        ready = super().select(timeout)
        self._woke = time.monotonic()
        if ready:
            self._by_io = True
        elif timeout != 0:  # woken by a timer's time (a look without a wait tells nothing)
            self._by_io = False
        return ready


def new_loop(window: float = DEFAULT_WINDOW_SECONDS) -> asyncio.AbstractEventLoop:
    """An event loop on a ``GatheringSelector`` (the loop factory of ``asyncio.Runner``)."""
    selector = GatheringSelector(window)
    loop = asyncio.SelectorEventLoop(selector)
    wake = getattr(loop, "_ssock", None)  # asyncio's self-pipe (call_soon_threadsafe, signals)
    if wake is not None:
        selector.urgent(wake.fileno())
    return loop


def _gathering(loop: asyncio.AbstractEventLoop) -> GatheringSelector | None:
    """``loop``'s ``GatheringSelector``; None for another kind of loop."""
    selector = getattr(loop, "_selector", None)
    return selector if isinstance(selector, GatheringSelector) else None


def flowing(nbytes: int) -> None:
    """``nbytes`` were read at once on the running loop, or are to be written: from
    ``FLOWING_BYTES`` on, a flood (see ``GatheringSelector.flowing``)."""
    if nbytes >= FLOWING_BYTES and (selector := _gathering(asyncio.get_running_loop())):
        selector.flowing()


def urgent(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Events on ``fd`` end the hold of ``loop``'s selector at once (see the module's
    docstring)."""
    if selector := _gathering(loop):
        selector.urgent(fd)


def set_window(loop: asyncio.AbstractEventLoop, window: float) -> None:
    """A new window for ``loop``'s selector (a reload)."""
    if selector := _gathering(loop):
        selector.window = window
