"""How far a container's log has been delivered: per stream, and where that is in its file.

A ``Position`` is the engine timestamp of the last delivered line of one stream plus how
many lines carried exactly that timestamp (several can): the resume key of both sources
and of the checkpoint file. A ``FileMark`` adds where those lines end in a json-file log
(inode and offset), so that the files source resumes there without a search.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from agent.record import Record

_stream_of = operator.attrgetter("stream")


@dataclass
class Position:
    """How far one stream has been delivered: the last line's timestamp and how many lines
    carried exactly that timestamp (several lines can share one)."""

    timestamp: str
    count: int

    def to_dict(self) -> dict[str, object]:
        return {"timestamp": self.timestamp, "count": self.count}

    @classmethod
    def from_dict(cls, doc: object) -> Position:
        """Raises ValueError when ``doc`` is not a position's ``to_dict``."""
        if (
            not isinstance(doc, dict)
            or not isinstance(doc.get("timestamp"), str)
            or not isinstance(doc.get("count"), int)
        ):
            raise ValueError("bad position")
        return cls(doc["timestamp"], doc["count"])


@dataclass
class FileMark:
    """Where the delivered lines of a file-read container end in its json-file log.

    Every line before ``offset`` of the file with inode ``inode`` was delivered, and none
    after it; ``timestamp`` is the stamp of the line just before ``offset`` (checked on
    resume, so that a reused inode is not trusted) and ``streams`` each stream's
    ``Position`` at that point. A reader resumes there without a search, and the
    timestamps still bridge to the other source (the logs API knows no offsets).
    """

    inode: int
    offset: int
    timestamp: str
    streams: dict[str, Position]
    tail: bytes = b""  # the bytes before ``offset``, when known (truncation check)

    def to_dict(self) -> dict[str, object]:
        return {
            "inode": self.inode,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "streams": {s: p.to_dict() for s, p in self.streams.items()},
        }

    def key(self) -> tuple[str, int]:
        """Orders marks of one container (a later mark has a later stamp or offset)."""
        return (self.timestamp, self.offset)

    def resume(self, positions: dict[str, Position]) -> dict[str, Position]:
        """``positions`` (delivered, at or after this mark) as seen from the mark: only
        lines after ``offset`` are read again, so a stream's count of lines sharing its
        last stamp no longer includes those before the mark."""
        out: dict[str, Position] = {}
        for stream, pos in positions.items():
            at = self.streams.get(stream)
            if at is not None and at.timestamp == pos.timestamp:
                if pos.count > at.count:
                    out[stream] = Position(pos.timestamp, pos.count - at.count)
            else:
                out[stream] = pos
        return out

    @classmethod
    def after(cls, record: Record, positions: dict[str, Position], tail: bytes = b"") -> FileMark:
        """The mark ``record`` carries (see ``Record.mark``), with the stream positions once
        it is delivered."""
        assert record.mark is not None
        inode, offset = record.mark
        return cls(inode, offset, end_stamp(record), dict(positions), tail)

    @classmethod
    def from_dict(cls, doc: object) -> FileMark:
        """Raises ValueError when ``doc`` is not a mark's ``to_dict``."""
        if not isinstance(doc, dict):
            raise ValueError("not a mapping")
        inode, offset, ts, streams = (
            doc.get(k) for k in ("inode", "offset", "timestamp", "streams")
        )
        if not (
            isinstance(inode, int)
            and isinstance(offset, int)
            and offset >= 0
            and isinstance(ts, str)
            and isinstance(streams, dict)
        ):
            raise ValueError("bad file position")
        return cls(inode, offset, ts, {s: Position.from_dict(p) for s, p in streams.items()})


def end_stamp(record: Record) -> str:
    """The engine stamp of the last line ``record`` accounts for (see ``Record.extra``)."""
    extra = record.extra
    return record.timestamp if extra is None or extra.end is None else extra.end[0]


def advance(positions: dict[str, Position], records: list[Record]) -> None:
    """Moves each stream's position to the end of ``records`` (delivered in this order).

    A record with ``extra.end`` (processing: joined lines, lines dropped on purpose before
    it, a time taken from the text) accounts for the lines that says, not for one line
    at ``timestamp``."""
    if len(records) == 1:
        # One line (a quiet container's batch): no scan.
        record = records[0]
        extra = record.extra
        if extra is None or extra.end is None:
            ts, stream = record.timestamp, record.stream
            if stream == "stdout" or stream == "stderr":
                prev = positions.get(stream)
                count = prev.count + 1 if prev is not None and prev.timestamp == ts else 1
                positions[stream] = Position(ts, count)
            return
    streams = list(map(_stream_of, records))
    streams.reverse()
    last = len(records) - 1
    for stream in ("stdout", "stderr"):
        try:
            i = last - streams.index(stream)  # the stream's last record (C speed)
        except ValueError:
            continue
        ts = end_stamp(records[i])
        count = 0
        j = i
        while j >= 0:
            other = records[j]
            if other.stream == stream:
                extra = other.extra
                if extra is None or extra.end is None:
                    if other.timestamp != ts:
                        break
                    count += 1
                else:
                    end_ts, n, whole = extra.end
                    if end_ts != ts:
                        break
                    count += n
                    if not whole:  # its lines begin at an older stamp: the run ends here
                        j = 0
                        break
            j -= 1
        if j < 0:
            # Every line of this stream in the batch shares the timestamp: continue the
            # count of the previous batch when it ended on the same timestamp.
            prev = positions.get(stream)
            if prev is not None and prev.timestamp == ts:
                count += prev.count
        positions[stream] = Position(ts, count)
