"""File descriptor limits: raise the soft limit at start, and tell when the process comes
close to it.

The agent's core work needs descriptors that appear as containers do (a log file or an
engine stream per container, checkpoint writes, exporters' files and connections); a
listener that takes every connection offered could leave none for them. ``FdBudget``
answers "may I open one more?" while keeping a reserve of descriptors for that work.
"""

from __future__ import annotations

import math
import os
import resource
import time

_NOFILE = resource.RLIMIT_NOFILE
_FD_DIR = "/proc/self/fd"


def nofile_limits() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE; ``resource.RLIM_INFINITY`` for no limit."""
    return resource.getrlimit(_NOFILE)


def _nr_open() -> int:
    """The kernel's ceiling for a process's descriptors (``fs.nr_open``)."""
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20


def raise_nofile_limit() -> tuple[int, int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit (no privilege needed); returns the
    soft limit before and after. An unlimited hard limit gives the kernel's ``nr_open``.
    If the kernel refuses, the limit stays as it was."""
    soft, hard = nofile_limits()
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def open_descriptors() -> int | None:
    """Descriptors the process has open now, or None when /proc/self/fd cannot be read.
    About a microsecond per open descriptor."""
    try:
        return len(os.listdir(_FD_DIR)) - 1  # less the one listdir itself opened
    except OSError:
        return None


class FdBudget:
    """Whether the process may open more descriptors without going into ``reserve``.

    Counting the open descriptors costs about a millisecond per thousand, so the count is
    taken at most every ``recount_seconds``; in between, what the owner opened and closed
    itself (``opened``, ``closed``) is added to it. Others' descriptors opened meanwhile
    are seen at the next count.
    """

    def __init__(self, reserve: int, recount_seconds: float = 0.1) -> None:
        self.reserve = reserve
        self.recount_seconds = recount_seconds
        self._count: int | None = None
        self._counted_at = -math.inf
        self._delta = 0

    def opened(self, n: int = 1) -> None:
        self._delta += n

    def closed(self, n: int = 1) -> None:
        self._delta -= n

    def in_use(self) -> int | None:
        now = time.monotonic()
        if now - self._counted_at >= self.recount_seconds:
            self._count = open_descriptors()
            self._counted_at = now
            self._delta = 0
        return None if self._count is None else self._count + self._delta

    def limit(self) -> int | None:
        soft = nofile_limits()[0]
        return None if soft == resource.RLIM_INFINITY else soft

    def headroom(self) -> int | None:
        """Descriptors that may still be opened before the reserve; None if unknown."""
        limit = self.limit()
        used = self.in_use()
        if limit is None or used is None:
            return None
        return limit - self.reserve - used

    def exhausted(self) -> bool:
        room = self.headroom()
        return room is not None and room <= 0

    def reserved(self, fd: int) -> bool:
        """Whether descriptor number ``fd`` lies in the reserve: the kernel hands out the
        lowest free number, so every number below it is open."""
        limit = self.limit()
        return limit is not None and fd >= limit - self.reserve
