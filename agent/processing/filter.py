"""Filtering: keep only lines matching ``include``, drop lines matching ``exclude``
(regexes searched in the message; after multiline and parsing, so a joined record is
kept or dropped whole).

A dropped line is dropped on purpose: the next line of its stream that is kept accounts
for it (``agent.processing.span.Carry``), so the delivered positions move past it once
that line is delivered, and a restart does not read it again.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.processing.span import Carry
from agent.record import Record
from agent.speedups import speedups

# The C test of a batch (agent/_speedups.c ``find_any``), when built: whether a message
# begins with (or holds) a text; None when a message is not ASCII.
_find_any: Callable[[list[Record], tuple[str, ...], bool], bool | None] | None = (
    speedups.find_any if speedups is not None else None
)
# Characters that stand for themselves in a pattern (outside a class, without the
# verbose flag, which a pattern could only set at its start: "(?x)", not one of them).
_PLAIN = re.compile(r"[A-Za-z0-9 _:=,;'\"<>/@#%&!~`-]*")


def literal_start(pattern: str) -> tuple[str, bool] | None:
    """The text every match of ``pattern`` begins with, and whether it must begin the
    searched string too (a leading ``^``); None when the pattern has no such text or may
    not need it (an alternation anywhere, a quantifier on its last character).

    Every match of ``^TEXT…`` found by a search begins the string with TEXT (``^`` matches
    only there: no multiline flag can be set but by a leading ``(?m)``, which is not plain
    text), and every match of ``TEXT…`` holds TEXT: a batch whose messages give no such
    begin (hold no such text) has no line the pattern matches."""
    if "|" in pattern:
        return None
    anchored = pattern[:1] == "^"
    rest = pattern[1:] if anchored else pattern
    text = _PLAIN.match(rest)
    assert text is not None  # (it matches the empty string)
    literal = text.group(0)
    if rest[len(literal) : len(literal) + 1] in ("?", "*", "{", "+"):
        literal = literal[:-1]  # its last character may be repeated or be absent
    return (literal, anchored) if literal else None


class Filter:
    """The filter stage of one container."""

    name = "filter"
    holds = True  # dropped lines are carried until a kept one accounts for them

    def __init__(
        self, include: str | None, exclude: str | None, counters: Counter[str] | None = None
    ) -> None:
        self.include = re.compile(include).search if include else None
        self.exclude = re.compile(exclude).search if exclude else None
        # An exclude pattern's literal start: a batch none of whose messages has it (the
        # C test) has no line to drop, and no line is searched.
        start = literal_start(exclude) if exclude and not include else None
        self._find = _find_any if start is not None else None
        self._needles: tuple[str, ...] = (start[0],) if start else ()
        self._anchored = start[1] if start else False
        self.carry = Carry()
        self.counters: Counter[str] = counters if counters is not None else Counter()

    @property
    def settled(self) -> bool:
        return not self.carry

    def deadline(self) -> float | None:
        return None

    def flush(self, now: float, force: bool) -> list[Any]:
        return []

    def process(self, batch: list[Record]) -> list[Record]:
        carry = self.carry
        ends = carry.ends
        find = self._find
        if find is not None and find(batch, self._needles, self._anchored) is False:
            # (None: not known, a message is not ASCII.) Every line is kept.
            if ends:
                for r in batch:
                    if (r.stream or "stdout") in ends:
                        carry.attach(r)
                        if not ends:
                            break
            return batch
        include = self.include
        exclude = self.exclude
        out: list[Record] = []
        append = out.append
        for r in batch:
            message = r.message or ""
            if (include is not None and include(message) is None) or (
                exclude is not None and exclude(message) is not None
            ):
                carry.drop(r)
                continue
            if ends and (r.stream or "stdout") in ends:
                carry.attach(r)
            append(r)
        dropped = len(batch) - len(out)
        if dropped:
            self.counters["filtered"] += dropped
        return out
