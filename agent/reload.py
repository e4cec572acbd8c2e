"""A new config applied to the running agent (SIGHUP, ``container-agent reload``).

The file is read and validated first: an invalid config is rejected with one log line
naming the key, and the running config stays. Otherwise, while the pipeline holds new
batches back for a moment (readers wait; the engine keeps their lines):

* exporters that were removed are drained (within ``agent.shutdown_timeout_seconds``)
  and closed; what they could not deliver in time is counted as dropped (``removed``);
* exporters whose options changed are swapped: the new one takes over the old one's
  queue, and its disk buffer when the buffer's options did not change, once the old one
  finished the batch it was sending (a batch still unsent at the bound goes back to the
  front of the queue; a request of it the backend had already accepted may then arrive
  twice);
* new exporters start; unchanged ones are not touched (their queues, disk buffers and
  acknowledged positions, hence the checkpoint, are kept);
* the container filter is applied again: readers of containers it no longer takes stop
  (their positions are kept: taken again later, a container resumes where it stopped),
  and running containers it now takes are followed;
* ``logs.*`` and ``processing`` options apply to readers started from now on; the
  agent's log level and format, and ``agent.wake_window_seconds``, at once. ``engine``,
  ``state_dir``, ``checkpoints``, ``stats`` and ``agent.hostname`` need a restart: a
  change to them is reported and not applied.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from agent import logging as agent_logging
from agent.config import Config, ConfigError, load
from agent.delivery.pipeline import ExporterStartError
from agent.delivery.runner import ExporterRunner
from agent.eventloop import set_window
from agent.processing.build import Processing

if TYPE_CHECKING:
    from agent.runtime import Runtime

log = structlog.get_logger("agent.reload")

# Top-level sections (and agent keys) that only a restart applies.
RESTART_SECTIONS = ("engine", "state_dir", "checkpoints", "stats")
RESTART_AGENT_KEYS = ("hostname",)


def config_hash(config: Config) -> str:
    """A short hash of the loaded config (its JSON with secrets as they are loaded),
    exported as a metric label so that a fleet can tell which config each agent runs."""
    dump = config.model_dump(mode="json", serialize_as_any=True)
    return hashlib.sha256(orjson.dumps(dump, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _dump(section: Any) -> Any:
    return section.model_dump(mode="python") if hasattr(section, "model_dump") else section


@dataclass
class Plan:
    """What a reload changes."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    filter_changed: bool = False
    needs_restart: list[str] = field(default_factory=list)  # keys not applied

    def summary(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "containers_filter_changed": self.filter_changed,
            "not_applied_needs_restart": self.needs_restart,
        }


def plan(old: Config, new: Config) -> Plan:
    p = Plan()
    for name, ec in new.exporters.items():
        if name not in old.exporters:
            p.added.append(name)
        elif _dump(old.exporters[name]) != _dump(ec):
            p.changed.append(name)
        else:
            p.unchanged.append(name)
    p.removed = [name for name in old.exporters if name not in new.exporters]
    p.filter_changed = _dump(old.containers) != _dump(new.containers)
    for key in RESTART_SECTIONS:
        if _dump(getattr(old, key)) != _dump(getattr(new, key)):
            p.needs_restart.append(key)
    for key in RESTART_AGENT_KEYS:
        if getattr(old.agent, key) != getattr(new.agent, key):
            p.needs_restart.append(f"agent.{key}")
    return p


def _keep_restart_keys(old: Config, new: Config, p: Plan) -> Config:
    """``new`` with the keys that need a restart at their running values."""
    if not p.needs_restart:
        return new
    keep: dict[str, Any] = {k: getattr(old, k) for k in RESTART_SECTIONS if k in p.needs_restart}
    agent_keep = {k: getattr(old.agent, k) for k in RESTART_AGENT_KEYS}
    keep["agent"] = new.agent.model_copy(update=agent_keep)
    return new.model_copy(update=keep)


async def apply(runtime: Runtime, new: Config, p: Plan) -> None:
    """Applies ``p`` (see the module's docstring). New exporters are started before
    anything else changes, so that one that cannot start leaves everything as it was;
    a swapped exporter that cannot start keeps its old config (ExporterStartError)."""
    pipeline, followers, discovery = runtime.pipeline, runtime.followers, runtime.discovery
    assert pipeline is not None and followers is not None and discovery is not None
    old = runtime.config
    deadline = time.monotonic() + old.agent.shutdown_timeout_seconds
    added = [runtime.make_runner(name, new.exporters[name]) for name in p.added]
    changed = [runtime.make_runner(name, new.exporters[name], buffer=False) for name in p.changed]
    started: list[ExporterRunner] = []
    pipeline.pause()
    try:
        try:
            for runner in added:
                await pipeline.add(runner)
                started.append(runner)
        except ExporterStartError:
            for runner in started:
                await pipeline.remove(runner.name, time.monotonic())
            raise
        for name in p.removed:
            await pipeline.remove(name, deadline)
        for runner in changed:
            old_buffer = old.exporters[runner.name].buffer
            new_buffer = new.exporters[runner.name].buffer
            keep = old_buffer == new_buffer
            if not keep and new_buffer.type == "disk":
                runner.buffer = runtime.make_buffer(runner.name, new.exporters[runner.name])
            await pipeline.swap(runner, deadline, keep_buffer=keep)
    finally:
        pipeline.resume()
    if p.filter_changed:
        followers.refilter(new.containers)
        discovery.containers = new.containers
        await discovery.refollow()
    if _dump(old.processing) != _dump(new.processing):
        # For readers started from now on (a container's chain is built when it starts).
        followers.processing = Processing(
            new.processing, new.agent.shutdown_timeout_seconds, previous=followers.processing
        )
    if runtime.chooser is not None:
        runtime.chooser.reconfigure(new.logs.source)
        runtime.chooser.api.max_message_bytes = new.logs.max_message_bytes
        runtime.chooser.files.max_message_bytes = new.logs.max_message_bytes
        runtime.chooser.files.set_linger(new.logs.files_linger_seconds)
    set_window(asyncio.get_running_loop(), new.agent.wake_window_seconds)
    runtime.config = new


class Reloader:
    """Reloads the runtime's config file, one reload at a time."""

    def __init__(self, runtime: Runtime, path: str | None) -> None:
        self.runtime = runtime
        self.path = path
        self.results: dict[str, int] = {"ok": 0, "failed": 0}
        self.hash = config_hash(runtime.config)
        self.last_at = 0.0
        self._busy = False

    async def reload(self) -> bool:
        """Reads, validates and applies the config file; False when it was rejected."""
        if self._busy:
            log.warning("config_reload_skipped", reason="a reload is under way")
            return False
        self._busy = True
        try:
            return await self._reload()
        finally:
            self._busy = False

    async def _reload(self) -> bool:
        started = time.monotonic()
        try:
            new = load(self.path)
        except ConfigError as exc:
            self.results["failed"] += 1
            log.error("config_reload_failed", error=str(exc), kept=self.hash)
            return False
        old = self.runtime.config
        p = plan(old, new)
        new = _keep_restart_keys(old, new, p)
        try:
            await apply(self.runtime, new, p)
        except Exception as exc:  # an exporter that cannot start: the rest stays as it was
            self.results["failed"] += 1
            log.error("config_reload_failed", error=f"{type(exc).__name__}: {exc}", kept=self.hash)
            return False
        level, fmt = new.agent.log_level, new.agent.log_format
        if (old.agent.log_level, old.agent.log_format) != (level, fmt):
            agent_logging.configure(level, fmt)
        self.results["ok"] += 1
        self.hash = config_hash(new)
        self.last_at = time.time()
        if p.needs_restart:
            log.warning(
                "config_reload_needs_restart",
                keys=p.needs_restart,
                hint="these keys keep their old values until the agent restarts",
            )
        log.info(
            "config_reloaded",
            config_hash=self.hash,
            seconds=round(time.monotonic() - started, 3),
            **p.summary(),
        )
        return True
