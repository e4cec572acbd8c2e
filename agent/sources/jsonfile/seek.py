"""Finding a position in a json-file log without reading it whole: the line that ends at
an offset (to check a checkpointed mark), and the first line at or after a time stamp (by
bisection: stamps grow through a file)."""

from __future__ import annotations

import os

from agent.record import format_timestamp_ns, timestamp_to_unix
from agent.sources.jsonfile.decoder import _JSONDecodeError, _loads, normalize_time

MAX_LINE_BYTES = 64 << 20  # a "line" longer than this is garbage, skipped
SINCE_MARGIN_NS = 2_000_000_000  # lines of two streams can be written slightly out of order


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


def _minus_margin(ts: str) -> str:
    seconds, frac = timestamp_to_unix(ts).split(".")
    ns = int(seconds) * 1_000_000_000 + int(frac) - SINCE_MARGIN_NS
    return format_timestamp_ns(max(ns, 0))
