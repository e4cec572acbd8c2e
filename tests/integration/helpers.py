"""Plain helpers shared by integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

FAST_RETRY = {"initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.3}


def numbered(tag: str, n: int, every: int = 100, pause_us: int = 50_000) -> str:
    """A script printing ``<tag> <i>`` for i in 0..n-1, pausing every ``every`` lines."""
    return (
        f'i=0; while [ $i -lt {n} ]; do echo "{tag} $i"; i=$((i+1)); '
        f"[ $((i % {every})) -eq 0 ] && usleep {pause_us}; done"
    )


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
