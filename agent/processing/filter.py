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
from typing import Any

from agent.processing.span import Carry
from agent.record import Record


class Filter:
    """The filter stage of one container."""

    name = "filter"
    holds = True  # dropped lines are carried until a kept one accounts for them

    def __init__(
        self, include: str | None, exclude: str | None, counters: Counter[str] | None = None
    ) -> None:
        self.include = re.compile(include).search if include else None
        self.exclude = re.compile(exclude).search if exclude else None
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
        include = self.include
        exclude = self.exclude
        carry = self.carry
        ends = carry.ends
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
