"""The owner of long-lived tasks: a task that raises is logged, reported down, and
restarted with back-off; stopping cancels and awaits every task."""

from __future__ import annotations

import asyncio
import random

from structlog.testing import capture_logs

from agent.retry import Backoff
from agent.supervisor import Supervisor


class _Longest(random.Random):
    """Full jitter's longest delay, always: a window the test can see."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_failing_task_is_logged_reported_down_and_restarted() -> None:
    sup = Supervisor(Backoff(0.2, 0.2, rng=_Longest()))
    runs = 0
    seen_down: list[dict[str, str]] = []
    release = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"bad event {runs}")
        await release.wait()

    with capture_logs() as logs:
        sup.start("discovery", flaky)
        deadline = asyncio.get_running_loop().time() + 10  # a loaded machine is slow
        while runs < 3 and asyncio.get_running_loop().time() < deadline:
            if sup.down:
                seen_down.append(dict(sup.down))
            await asyncio.sleep(0.005)
        assert runs == 3
        assert not sup.down, "a restarted task is up again"
        release.set()
        await asyncio.sleep(0.01)
        await sup.stop()
    # Reported down while it waits to restart (under load the poll may miss the first
    # window, never both).
    assert seen_down and all(
        d in ({"discovery": "ValueError: bad event 1"}, {"discovery": "ValueError: bad event 2"})
        for d in seen_down
    )
    assert sup.restarts == {"discovery": 2}
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [e["error"] for e in failed] == ["ValueError: bad event 1", "ValueError: bad event 2"]
    assert all(e["task"] == "discovery" and e["exc_info"] for e in failed)


async def test_stop_cancels_and_awaits_every_task() -> None:
    sup = Supervisor(Backoff(0.05, 0.05))
    cancelled: list[str] = []

    def forever(name: str):
        async def run() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(name)
                raise

        return run

    for name in ("a", "b", "c"):
        sup.start(name, forever(name))
    await asyncio.sleep(0)
    await sup.stop()
    assert sorted(cancelled) == ["a", "b", "c"]
    assert not [t for t in asyncio.all_tasks() if t.get_name() in ("a", "b", "c")]


async def test_a_task_that_returns_is_not_restarted() -> None:
    sup = Supervisor(Backoff(0.01, 0.01))
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    sup.start("once", once)
    await asyncio.sleep(0.1)
    await sup.stop()
    assert runs == 1 and sup.restarts == {"once": 0}
