"""Which lines of its stream a processed record accounts for: ``Record.extra.end``.

Positions (``agent.positions``) count, per stream, the engine stamp of the last delivered
line and how many lines carried it. A stage that joins lines, drops lines on purpose or
takes a record's time from its text must keep that count exact, or a restart would skip
a line or deliver one twice. Every record therefore has an end: the engine stamp of the
last line it accounts for, how many of its lines at the end carry that stamp, and whether
all of them do (then the count goes on into the records before it). A plain record's end
is ``(timestamp, 1, True)``; ``advance`` reads ``extra.end`` when it is set.
"""

from __future__ import annotations

from agent.record import Extra, Record

End = tuple[str, int, bool]


def end_of(record: Record) -> End:
    extra = record.extra
    if extra is None or extra.end is None:
        return (record.timestamp, 1, True)
    return extra.end


def combine(before: End | None, after: End) -> End:
    """The end of the lines of ``before`` followed by those of ``after``."""
    if before is None or not after[2]:
        return after
    if before[0] == after[0]:
        return (after[0], before[1] + after[1], before[2])
    return (after[0], after[1], False)


def end_of_all(records: list[Record]) -> End:
    """The end of the lines of ``records`` (of one stream, in order; not empty)."""
    end: End | None = None
    for r in records:
        end = combine(end, end_of(r))
    assert end is not None
    return end


def extra_of(record: Record) -> Extra:
    """The record's ``Extra``, made when it has none."""
    extra = record.extra
    if extra is None:
        extra = record.extra = Extra()
    return extra


def set_end(record: Record, end: End) -> None:
    """Makes ``record`` account for the lines ``end`` says (a plain one: stays plain)."""
    if end == (record.timestamp, 1, True) and (record.extra is None or record.extra.end is None):
        return
    extra_of(record).end = end


class Carry:
    """Lines a stage dropped on purpose, per stream, not yet accounted for by a record
    it let through: the next record of their stream takes them over (``attach``), so
    that the positions move past them once it is delivered."""

    __slots__ = ("ends", "last")

    def __init__(self) -> None:
        self.ends: dict[str, End] = {}
        self.last: dict[str, str] = {}  # each stream's last stamp seen by the stage

    def __bool__(self) -> bool:
        return bool(self.ends)

    def drop(self, record: Record) -> None:
        stream = record.stream or "stdout"
        end = combine(self.ends.get(stream), end_of(record))
        self.ends[stream] = end
        self.last[stream] = end[0]

    def attach(self, record: Record) -> Record:
        """``record`` (of a stream with dropped lines) made to account for them too."""
        stream = record.stream or "stdout"
        before = self.ends.pop(stream, None)
        if before is not None:
            set_end(record, combine(before, end_of(record)))
        return record

    def take(self, stream: str) -> End | None:
        """What a record made by the stage itself (a summary) accounts for: the dropped
        lines of ``stream``, else no line at all after the stream's last one seen."""
        end = self.ends.pop(stream, None)
        if end is not None:
            return end
        last = self.last.get(stream)
        return (last, 0, True) if last is not None else None
