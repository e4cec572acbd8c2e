"""Resource usage of each running container, from the stats API or from cgroup files.

Two sources behind one interface, ``StatsSource.sample(info) -> StatsSample | None``:

* ``ApiStatsSource``: ``GET /containers/{id}/stats?stream=false&one-shot=true``, one short
  request per container and interval (no stream held open per container; one-shot skips the
  engine's one-second pre-sample wait).
* ``CgroupStatsSource``: the container's cgroup files under a configurable root, as cAdvisor
  reads them (cgroup v1 or v2, told apart by ``cgroup.controllers`` at the root), plus
  ``/proc/<pid>/net/dev`` for network counters. Microseconds per container, no engine CPU.

``auto`` picks cgroups when the root holds the container's cgroup, else the API, per
container. CPU percent is computed the way ``docker stats`` does: the container's CPU time
delta over the host's CPU time delta, times the number of online CPUs, times 100.
"""

from __future__ import annotations

import abc
import asyncio
import time
from pathlib import Path
from typing import Any

import structlog

from agent.engine.client import Engine, EngineError, NotFound
from agent.metrics.cgroup import CgroupLayout, read_host_cpu
from agent.metrics.inventory import ContainerInfo, Inventory
from agent.metrics.sample import _NS, StatsSample, cpu_percent, parse_api_stats
from agent.record import Record, format_timestamp_ns

log = structlog.get_logger("agent.metrics.stats")

# The host's CPU time (/proc/stat) is read once per this long, not once per container: a
# round reads every container within a few milliseconds of each other, and the kernel
# builds /proc/stat (every CPU, every IRQ) at each read.
HOST_CPU_SECONDS = 0.25


class StatsSource(abc.ABC):
    name: str

    @abc.abstractmethod
    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        """One reading of a running container; None when it cannot be read now."""


class ApiStatsSource(StatsSource):
    name = "api"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        payload = await self.engine.stats(info.meta.id)
        return parse_api_stats(payload, info.memory_limit)


class CgroupStatsSource(StatsSource):
    name = "cgroup"

    def __init__(self, root: str, proc: str = "/proc") -> None:
        self.layout = CgroupLayout(Path(root))
        self.proc = Path(proc)
        self._paths: dict[str, str | None] = {}
        self._host: tuple[int | None, int] | None = None  # the host's CPU time, and when
        self._host_at = -HOST_CPU_SECONDS

    def locate(self, info: ContainerInfo) -> str | None:
        cid = info.meta.id
        if cid not in self._paths or self._paths[cid] is None:
            self._paths[cid] = self.layout.find(cid, info.cgroup_parent)
        return self._paths[cid]

    def forget(self, cid: str) -> None:
        self._paths.pop(cid, None)

    async def sample(self, info: ContainerInfo) -> StatsSample | None:
        rel = self.locate(info)
        if rel is None:
            return None
        return self.read(rel, info.memory_limit, info.pid)

    def read(self, rel: str, memory_limit: int, pid: int | None) -> StatsSample:
        """One container's files (any thread: a round's run in one, see StatsCollector)."""
        now = time.monotonic()
        if self._host is None or now - self._host_at >= HOST_CPU_SECONDS:
            self._host, self._host_at = read_host_cpu(self.proc), now
        return self.layout.read(rel, memory_limit, pid, self.proc, self._host)

    def read_all(self, wanted: list[tuple[str, int, int | None]]) -> list[StatsSample | Exception]:
        """``read`` for each (rel, memory limit, pid) of a round, in one thread hop: the
        files of a thousand containers take a third of a second, too long for the loop."""
        out: list[StatsSample | Exception] = []
        for rel, limit, pid in wanted:
            try:
                out.append(self.read(rel, limit, pid))
            except Exception as exc:  # one container's files must not end the round
                out.append(exc)
        return out


class StatsCollector:
    """Samples every running container each interval; owns no task per container."""

    def __init__(
        self,
        engine: Engine,
        inventory: Inventory,
        mode: str,
        cgroup_root: str,
        interval: float,
        send_records: Any = None,
        concurrency: int = 8,
    ) -> None:
        self.engine = engine
        self.inventory = inventory
        self.mode = mode
        self.interval = interval
        self.api = ApiStatsSource(engine)
        self.cgroup = CgroupStatsSource(cgroup_root) if mode in ("auto", "cgroup") else None
        self.send_records = send_records
        self._sem = asyncio.Semaphore(concurrency)
        self.sources: dict[str, str] = {}  # container id → source used last
        self.errors = 0
        self.rounds = 0
        self.last_round_seconds = 0.0
        self._warned_cgroup = False

    async def run(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.collect_once()
            except EngineError as exc:
                log.debug("stats_round_failed", error=str(exc))
            self.last_round_seconds = time.monotonic() - t0
            await asyncio.sleep(max(0.0, self.interval - self.last_round_seconds))

    async def collect_once(self) -> None:
        running = [c for c in self.inventory.running() if c.state == "running"]
        results: list[StatsSample | None] = [None] * len(running)
        # Containers whose cgroup is known are read together in a thread; the others
        # (not inspected yet, no cgroup: the API) concurrently on the loop.
        located: list[int] = []
        wanted: list[tuple[str, int, int | None]] = []
        others: list[int] = []
        cgroup = self.cgroup
        for i, info in enumerate(running):
            rel = cgroup.locate(info) if cgroup is not None and info.inspected else None
            if rel is None:
                others.append(i)
            else:
                located.append(i)
                wanted.append((rel, info.memory_limit, info.pid))
        if wanted:
            assert cgroup is not None
            for i, got in zip(
                located, await asyncio.to_thread(cgroup.read_all, wanted), strict=True
            ):
                if isinstance(got, Exception):
                    self.errors += 1
                    log.debug("stats_failed", container=running[i].meta.name, error=repr(got))
                else:
                    results[i] = self._took(running[i], got)
        if others:
            sampled = await asyncio.gather(*(self._one(running[i]) for i in others))
            for i, one in zip(others, sampled, strict=True):
                results[i] = one
        self.rounds += 1
        if self.send_records:
            records = [
                Record.stats_sample(
                    format_timestamp_ns(int(s.read_at * _NS)), c.meta, s.to_dict(c.cpu_percent)
                )
                for c, s in zip(running, results, strict=True)
                if s is not None
            ]
            if records:
                await self.send_records(records)

    async def _one(self, info: ContainerInfo) -> StatsSample | None:
        async with self._sem:
            try:
                if not info.inspected:
                    self.inventory.apply_inspect(
                        info.meta.id, await self.engine.inspect(info.meta.id)
                    )
                sample = None
                if self.cgroup is not None:
                    sample = await self.cgroup.sample(info)
                    if sample is None and self.mode == "cgroup" and not self._warned_cgroup:
                        self._warned_cgroup = True
                        log.warning(
                            "cgroup_not_found",
                            container=info.meta.name,
                            root=str(self.cgroup.layout.root),
                            fallback="api",
                        )
                if sample is None:
                    sample = await self.api.sample(info)
            except NotFound:
                return None
            except EngineError as exc:
                self.errors += 1
                log.debug("stats_failed", container=info.meta.name, error=str(exc))
                return None
        return self._took(info, sample)

    def _took(self, info: ContainerInfo, sample: StatsSample | None) -> StatsSample | None:
        if sample is None or info.state != "running":
            return None  # died while being read
        info.cpu_percent = cpu_percent(info.stats, sample)
        info.stats = sample
        info.last_seen = time.time()
        self.sources[info.meta.id] = sample.source
        return sample
