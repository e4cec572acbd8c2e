"""Turns the bytes of the engine's logs API into log records.

The engine answers ``GET /containers/{id}/logs?timestamps=1`` with either

* frames (non-TTY containers): an 8-byte header ``[stream, 0, 0, 0, size(4, big endian)]``
  followed by ``size`` bytes holding one log message ``"<RFC3339Nano> <text>"``, or
* one raw stream (TTY containers): ``"<RFC3339Nano> <text>\\n"`` lines, stream unknown.

A line longer than 16 KiB reaches the json-file driver as several partial messages that
share one timestamp; only the last ends with ``\\n``. The decoder joins them into one record,
caps a record's message at ``max_bytes`` (marking it truncated) and skips what was delivered
before a reconnect (the API's ``since`` is inclusive).

The hot path is one pass over a chunk with no per-line await: whole chunks in, a list of
records out.
"""

from __future__ import annotations

import itertools
import operator

from agent.positions import Position
from agent.record import FRAME_STREAMS, ContainerMeta, Record
from agent.sources.lines import PARTIAL_SIZE, LineAssembler
from agent.speedups import speedups

HEADER = 8
_stream_of = operator.attrgetter("stream")
# Bulk decoding of whole frames (see LogDecoder._bulk_frames).
_BULK_MIN = 8
_SIZE_FIELD = operator.itemgetter(slice(4, 8))
_PAYLOAD = operator.itemgetter(slice(8, None))
_FIRST = operator.itemgetter(0)
_LAST = operator.itemgetter(-1)
_STAMP_AND_NEWLINE = 32  # "2026-11-28T10:21:02.258843177Z" (RFC3339NanoFixed), " ", "\n"
_AT_29 = operator.itemgetter(29)
_AT_30 = operator.itemgetter(30)
_STAMP = operator.itemgetter(slice(0, 30))
_MESSAGE = operator.itemgetter(slice(31, None))


class LogDecoder(LineAssembler):
    """Stateful decoder of one container's log stream; one instance per open stream.

    ``resume`` holds, per stream, the position already delivered: lines at or before it are
    dropped, so that reopening a stream with ``since=<position>`` emits nothing twice.
    """

    def __init__(
        self,
        meta: ContainerMeta,
        max_bytes: int,
        resume: dict[str, Position] | None = None,
    ) -> None:
        super().__init__(meta, max_bytes, resume)
        self.tty = meta.tty  # None: told from the stream's first bytes
        self._buf = b""

    # -- public -------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> list[Record]:
        """Decodes whatever complete messages ``chunk`` (plus earlier leftovers) holds."""
        buf = self._buf + chunk if self._buf else chunk
        out: list[Record] = []
        if self.tty is None:
            if len(buf) < 4:
                self._buf = buf
                return out
            # A framed stream starts with a header [0|1|2, 0, 0, 0]; a raw one with a digit.
            self.tty = not (buf[0] < 3 and buf[1:4] == b"\0\0\0")
        consumed = self._feed_tty(buf, out) if self.tty else self._feed_frames(buf, out)
        self._buf = buf[consumed:]
        return out

    def feed_parts(self, parts: list[bytes]) -> list[Record]:
        """``feed`` for bytes that came as a list of pieces. The engine sends each log
        message as its own HTTP chunk, so the pieces are usually whole frames: then they
        are decoded together, without a Python loop per line (``_bulk_frames``)."""
        bulk = len(parts) >= _BULK_MIN and self.tty is False
        if bulk and not self._buf and not self._pending and not self._resume:
            out = self._bulk_frames(parts)
            if out is not None:
                return out
        return self.feed(parts[0] if len(parts) == 1 else b"".join(parts))

    def _bulk_frames(self, frames: list[bytes]) -> list[Record] | None:
        """Records of ``frames`` when each is one whole frame holding one whole line of
        at most ``max_bytes``, stamped as the engine stamps (30 characters, then a space);
        None when any is not (the per-frame path then decides). In C when the extension
        is built (``agent/_speedups.c``, the same checks and records)."""
        if speedups is not None:
            return speedups.bulk_frames(frames, self.meta, self.max_bytes)
        return self._bulk_frames_py(frames)

    def _bulk_frames_py(self, frames: list[bytes]) -> list[Record] | None:
        """``_bulk_frames`` in Python, at C speed per batch rather than per line. Same
        records as ``_feed_frames``: decoding the joined messages with replacement equals
        decoding each, since each ends in an ASCII newline."""
        n = len(frames)
        sizes = list(map(int.from_bytes, map(_SIZE_FIELD, frames)))
        if list(map(len, frames)) != list(map(HEADER.__add__, sizes)):
            return None
        if max(sizes) > self.max_bytes + _STAMP_AND_NEWLINE:
            return None
        kinds = bytes(map(_FIRST, frames))
        if kinds.translate(None, b"\x01\x02") or bytes(map(_LAST, frames)) != b"\n" * n:
            return None  # stdin's 0 or another byte; a partial line
        payload = b"".join(map(_PAYLOAD, frames))
        if payload.count(b"\n") != n:
            return None
        lines = payload.decode("utf-8", "replace").split("\n")
        lines.pop()
        try:
            if "".join(map(_AT_29, lines)) != "Z" * n or "".join(map(_AT_30, lines)) != " " * n:
                return None
        except IndexError:
            return None
        return list(
            map(
                Record,
                itertools.repeat("log", n),
                map(_STAMP, lines),
                itertools.repeat(self.meta, n),
                map(FRAME_STREAMS.__getitem__, kinds),
                map(_MESSAGE, lines),
            )
        )

    def finish(self) -> list[Record]:
        """Emits what is still held at the end of a container's output: a TTY line
        without its newline, and pending partial lines (see ``LineAssembler.finish``)."""
        out: list[Record] = []
        if self.tty is not False and self._buf:
            self._tty_line(self._buf, out)
        self._buf = b""
        return out + super().finish()

    @property
    def buffered(self) -> int:
        """Bytes held back waiting for the rest of a frame or line."""
        return len(self._buf) + super().buffered

    # -- framed (non-TTY) streams --------------------------------------------------------

    def _feed_frames(self, buf: bytes, out: list[Record]) -> int:
        n = len(buf)
        pos = 0
        meta = self.meta
        limit = self.max_bytes
        pending = self._pending
        resume = self._resume
        append = out.append
        while pos + HEADER <= n:
            start = pos + HEADER
            end = start + int.from_bytes(buf[pos + 4 : start], "big")
            if end > n:
                break
            stream = FRAME_STREAMS[buf[pos]] if buf[pos] < 3 else "stdout"
            pos = end
            if end == start:
                continue
            sp = buf.find(b" ", start, end)
            if sp < 0:
                self.malformed += 1
                continue
            complete = buf[end - 1] == 10  # b"\n"
            if complete and not pending and not resume and end - 1 - sp - 1 <= limit:
                # Fast path: one whole line, nothing to join, cut or skip.
                append(
                    Record(
                        "log",
                        buf[start:sp].decode("ascii", "replace"),
                        meta,
                        stream,
                        buf[sp + 1 : end - 1].decode("utf-8", "replace"),
                    )
                )
                continue
            ts = buf[start:sp].decode("ascii", "replace")
            body = buf[sp + 1 : end - 1] if complete else buf[sp + 1 : end]
            self._piece(stream, ts, body, complete, out)
        return pos

    # -- raw (TTY) streams ---------------------------------------------------------------

    def _feed_tty(self, buf: bytes, out: list[Record]) -> int:
        pos = 0
        while True:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                return pos
            self._tty_line(buf[pos:nl], out)
            pos = nl + 1

    def _tty_line(self, line: bytes, out: list[Record]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        sp = line.find(b" ")
        if sp < 0:
            self.malformed += 1
            return
        ts_bytes = line[:sp]
        body = line[sp + 1 :]
        if len(body) > PARTIAL_SIZE:
            # Partial messages of a long line run together in the raw stream, each after
            # the same "<timestamp> " prefix: cut those prefixes out at each 16 KiB mark.
            marker = ts_bytes + b" "
            parts = []
            while len(body) > PARTIAL_SIZE and body.startswith(marker, PARTIAL_SIZE):
                parts.append(body[:PARTIAL_SIZE])
                body = body[PARTIAL_SIZE + len(marker) :]
            parts.append(body)
            body = b"".join(parts)
        self._piece("stdout", ts_bytes.decode("ascii", "replace"), body, True, out)
