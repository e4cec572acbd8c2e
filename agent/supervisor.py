"""The owner of the agent's long-lived tasks (discovery, checkpoints, stats): none of
them may die silently. (The exporter workers are kept alive the same way by their
``ExporterRunner``, which also puts back the batch a dead worker had taken.)

A supervised task that raises is logged with its traceback (``task_failed``), reported
down (the agent is not ready while any task is down: ``/readyz`` names it), and started
again after the retry policy's back-off; a task that then runs for a while starts the
back-off from its first step again. Cancelling the supervisor cancels and awaits every
task. A task that returns normally is done and not restarted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from agent.retry import Backoff, Retry

log = structlog.get_logger("agent.supervisor")

HEALTHY_AFTER_SECONDS = 60.0  # a restarted task that runs this long is well again


class Supervisor:
    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.down: dict[str, str] = {}  # task name → the error it died of, while down
        self.restarts: dict[str, int] = {}

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs ``run()`` as the task ``name``, restarting it whenever it raises."""
        self.restarts.setdefault(name, 0)
        self._tasks[name] = asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        retry = Retry(self._backoff)
        while True:
            began = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - began >= HEALTHY_AFTER_SECONDS:
                    retry.reset()
                delay = retry.next_delay()
                self.down[name] = f"{type(exc).__name__}: {exc}"
                log.error(
                    "task_failed",
                    task=name,
                    error=self.down[name],
                    failures=retry.attempt,
                    restart_in=round(delay, 3),
                    exc_info=exc,
                )
            await asyncio.sleep(delay)
            self.restarts[name] += 1
            self.down.pop(name, None)
            log.info("task_restarted", task=name, restarts=self.restarts[name])

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self.down.clear()
