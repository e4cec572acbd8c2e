"""The supervisor: start-up, the main wait, and a bounded, draining shutdown.

Startup checks the engine and opens every exporter before any log is read; the first
SIGTERM/SIGINT stops intake and drains the exporters' queues within
``agent.shutdown_timeout_seconds``; a second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket

import structlog

import exporters
from agent import __version__
from agent.config import Config
from agent.discovery import Discovery
from agent.docker import Engine, EngineError
from agent.inventory import Inventory
from agent.logs import ApiLogSource, LogFollowers
from agent.pipeline import ExporterRunner, Pipeline
from agent.retry import Backoff
from agent.stats import StatsCollector
from agent.telemetry import AgentState
from exporters.base import REGISTRY

log = structlog.get_logger("agent.runtime")

EXIT_OK = 0
EXIT_USAGE = 2  # bad config, engine unreachable at start: something the operator must fix


class Runtime:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine = Engine(config.engine.host)
        self.stopping = asyncio.Event()
        self.pipeline: Pipeline | None = None
        self.followers: LogFollowers | None = None
        self.discovery: Discovery | None = None
        self.stats: StatsCollector | None = None
        self.state: AgentState | None = None
        self._signals = 0

    def _backoff(self) -> Backoff:
        eng = self.config.engine
        return Backoff(eng.reconnect_min_seconds, eng.reconnect_max_seconds)

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("agent_stopping", reason="signal")
            self.stopping.set()
        else:
            log.warning("agent_forced_exit")
            os._exit(1)

    async def run(self) -> int:
        cfg = self.config
        try:
            version = await self.engine.version()
            info = await self.engine.info()
        except EngineError as exc:
            await self.engine.close()
            log.error(
                "engine_unreachable",
                host=cfg.engine.host,
                error=str(exc),
                hint="set engine.host in the config file or the DOCKER_HOST environment variable",
            )
            return EXIT_USAGE
        host = cfg.agent.hostname or info.get("Name") or socket.gethostname()

        exporters.load_all()
        runners = [
            ExporterRunner(REGISTRY[ec.type](name, ec), ec, self._backoff())
            for name, ec in cfg.exporters.items()
        ]
        self.pipeline = Pipeline(runners)

        backoff = self._backoff()
        self.followers = LogFollowers(
            self.engine,
            ApiLogSource(self.engine, cfg.logs.max_message_bytes),
            self.pipeline.send,
            cfg.containers,
            host,
            backoff.delay,
        )
        inventory = Inventory()
        self.followers.inventory = inventory
        self.discovery = Discovery(
            self.engine,
            self.followers,
            self.pipeline.send,
            cfg.containers,
            backoff,
            host,
            cfg.logs.start_at,
            inventory,
        )
        if cfg.stats.enabled:
            self.stats = StatsCollector(
                self.engine,
                inventory,
                cfg.stats.source,
                cfg.stats.cgroup_root,
                cfg.stats.interval_seconds,
                self.pipeline.send if cfg.stats.records else None,
            )
        self.state = AgentState(
            inventory, self.pipeline, self.discovery, self.followers, self.stats
        )
        for runner in runners:
            runner.exporter.bind(self.state)
        try:
            await self.pipeline.start()
        except (OSError, ValueError) as exc:
            await self.pipeline.close(0)
            await self.engine.close()
            log.error("exporter_start_failed", error=str(exc))
            return EXIT_USAGE

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)

        tasks = [asyncio.create_task(self.discovery.run(first=info), name="discovery")]
        if self.stats is not None:
            tasks.append(asyncio.create_task(self.stats.run(), name="stats"))
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.discovery.connected.wait()
            log.info(
                "agent_started",
                version=__version__,
                engine=cfg.engine.host,
                engine_version=version.get("Version"),
                api_version=version.get("ApiVersion"),
                containers=self.followers.followed,
                host=host,
                exporters={r.name: r.exporter.target() for r in runners},
            )
            await self.stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.followers.close()
            await self.pipeline.close(cfg.agent.shutdown_timeout_seconds)
            await self.engine.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            dropped = {r.name: dict(r.dropped) for r in runners if r.dropped}
            log.info(
                "agent_stopped", exported={r.name: r.exported for r in runners}, dropped=dropped
            )
        return EXIT_OK
