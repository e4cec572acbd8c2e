"""The slow path both log sources share: partial lines joined, messages capped, delivered
lines skipped on resume.

A line longer than 16 KiB reaches the json-file driver as several partial messages that
share one timestamp; only the last ends with ``\\n``. ``LineAssembler`` joins them into one
record, caps a record's message at ``max_bytes`` (marking it truncated) and skips what was
delivered before a reconnect or restart (``resume``: the API's ``since`` is inclusive, and
a file is re-read from a line start). The logs-API decoder and the json-file decoder feed
it whatever their fast paths do not take, so both sources join, cap and skip alike.
"""

from __future__ import annotations

from agent.positions import Position
from agent.record import ContainerMeta, Record

PARTIAL_SIZE = 16 * 1024  # the engine's copier splits lines at this size


class _Pending:
    __slots__ = ("length", "parts", "timestamp", "truncated")

    def __init__(self, timestamp: str) -> None:
        self.timestamp = timestamp
        self.parts: list[bytes] = []
        self.length = 0
        self.truncated = False


def _cut(data: bytes, limit: int) -> bytes:
    """``data[:limit]`` without splitting a UTF-8 sequence."""
    if len(data) <= limit:
        return data
    end = limit
    # Back up over continuation bytes (0b10xxxxxx) so that the cut lands on a boundary.
    while end > 0 and (data[end] & 0xC0) == 0x80:
        end -= 1
    return data[:end]


class LineAssembler:
    """One container's pending partial lines and resume positions, per stream."""

    def __init__(
        self,
        meta: ContainerMeta,
        max_bytes: int,
        resume: dict[str, Position] | None = None,
    ) -> None:
        self.meta = meta
        self.max_bytes = max_bytes
        self._pending: dict[str, _Pending] = {}
        self._resume = {k: Position(v.timestamp, v.count) for k, v in (resume or {}).items()}
        self.skipped = 0  # lines dropped because they were delivered before a reconnect
        self.truncated = 0  # records whose message was cut at max_bytes
        self.malformed = 0  # frames or lines that are not what the engine writes

    def finish(self) -> list[Record]:
        """Emits partial lines still pending at the end of a container's output.

        A container that stops in the middle of a line leaves a last partial message with
        no newline; it is a line of its own. Call only when the stream ended for good.
        """
        out: list[Record] = []
        for stream in list(self._pending):
            pending = self._pending.pop(stream)
            self._emit(stream, pending.timestamp, b"".join(pending.parts), pending.truncated, out)
        return out

    @property
    def buffered(self) -> int:
        """Bytes of partial lines held back waiting for their end."""
        return sum(p.length for p in self._pending.values())

    def _piece(self, stream: str, ts: str, body: bytes, complete: bool, out: list[Record]) -> None:
        """Adds one message (whole line or partial) of ``stream``; emits finished lines."""
        pending = self._pending.get(stream)
        if pending is None:
            if complete:
                truncated = len(body) > self.max_bytes
                self._emit(
                    stream, ts, _cut(body, self.max_bytes) if truncated else body, truncated, out
                )
                return
            pending = self._pending[stream] = _Pending(ts)
        room = self.max_bytes - pending.length
        if len(body) > room:
            body = _cut(body, room) if room > 0 else b""
            pending.truncated = True
        if body:
            pending.parts.append(body)
            pending.length += len(body)
        if complete:
            del self._pending[stream]
            self._emit(stream, pending.timestamp, b"".join(pending.parts), pending.truncated, out)

    def _emit(self, stream: str, ts: str, body: bytes, truncated: bool, out: list[Record]) -> None:
        resume = self._resume.get(stream)
        if resume is not None:
            if ts < resume.timestamp:
                self.skipped += 1
                return
            if ts == resume.timestamp and resume.count > 0:
                resume.count -= 1
                self.skipped += 1
                return
            if ts > resume.timestamp:
                del self._resume[stream]
        if truncated:
            self.truncated += 1
        out.append(Record("log", ts, self.meta, stream, body.decode("utf-8", "replace"), truncated))
