"""Capped exponential back-off with full jitter, for every reconnect and retry loop."""

from __future__ import annotations

import random


class Backoff:
    """``delay(n)`` is uniform in [0, min(cap, base * 2**n)]: full jitter, so that many
    readers retrying at once do not hit the engine or a backend in lockstep."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.base * (2 ** min(attempt, 62)))

    def delay(self, attempt: int) -> float:
        return self._rng.uniform(0, self.ceiling(attempt))
