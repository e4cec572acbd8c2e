"""What the agent knows about each container right now: state, health, counters, stats.

Discovery writes states from the listing and the event stream, readers add log counts, the
stats collector adds samples; metric collectors only read it, at scrape time. An entry
lives from the container's first sighting until its ``destroy`` event, so the series of a
removed container vanish at the next scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from agent.record import ContainerMeta, timestamp_to_unix

STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
HEALTH = ("starting", "healthy", "unhealthy")

# Event action → the container state it leaves behind.
_STATE_AFTER = {
    "create": "created",
    "start": "running",
    "restart": "running",
    "unpause": "running",
    "pause": "paused",
    "die": "exited",
    "stop": "exited",
    "kill": None,  # the die that follows says it
    "destroy": "removing",
}


@dataclass(slots=True)
class ContainerInfo:
    meta: ContainerMeta
    state: str = "created"
    health: str | None = None
    started_at: float | None = None  # unix seconds of the last start
    pid: int | None = None
    memory_limit: int = 0  # HostConfig.Memory; 0 is unlimited
    cgroup_parent: str = ""
    starts: int = 0
    exit_code: int | None = None
    oom_events: int = 0
    log_lines: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    log_bytes: dict[str, int] = field(default_factory=lambda: {"stdout": 0, "stderr": 0})
    last_log_timestamp: str | None = None
    log_source: str = ""
    log_read_failures: int = 0  # reads of its log that failed (each retried)
    inspected: bool = False
    stats: Any = None  # the newest agent.stats.StatsSample, while running
    cpu_percent: float | None = None
    last_seen: float = field(default_factory=time.time)

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


class Inventory:
    def __init__(self) -> None:
        self.containers: dict[str, ContainerInfo] = {}

    def get(self, meta: ContainerMeta) -> ContainerInfo:
        info = self.containers.get(meta.id)
        if info is None:
            info = self.containers[meta.id] = ContainerInfo(meta)
        return info

    def seen_in_listing(self, meta: ContainerMeta, state: str) -> ContainerInfo:
        info = self.get(meta)
        info.state = state
        if state == "running" and info.starts == 0:
            info.starts = 1
        info.last_seen = time.time()
        return info

    def on_event(
        self, meta: ContainerMeta, action: str, attributes: dict[str, str], time_ns: int
    ) -> None:
        if action == "destroy":
            self.containers.pop(meta.id, None)
            return
        info = self.get(meta)
        info.meta = meta
        info.last_seen = time.time()
        state = _STATE_AFTER.get(action)
        if state:
            info.state = state
        if action == "start":
            info.starts += 1
            info.started_at = time_ns / 1e9
            info.exit_code = None
            info.inspected = False  # a new pid
            info.health = "starting" if info.health else None
        elif action == "die":
            code = attributes.get("exitCode")
            info.exit_code = int(code) if code and code.lstrip("-").isdigit() else None
            info.stats = None
            info.cpu_percent = None
            info.pid = None
        elif action == "oom":
            info.oom_events += 1
        elif action == "health_status":
            info.health = attributes.get("health_status")

    def apply_inspect(self, cid: str, data: dict[str, Any]) -> None:
        """Facts only the inspect answer has: pid, start time, limits, health."""
        info = self.containers.get(cid)
        if info is None:
            return
        state = data.get("State") or {}
        info.pid = state.get("Pid") or None
        started = state.get("StartedAt")
        if started and not started.startswith("0001"):
            info.started_at = float(timestamp_to_unix(started))
        health = (state.get("Health") or {}).get("Status")
        if health:
            info.health = health
        if state.get("Status") in STATES:
            info.state = state["Status"]
        host_config = data.get("HostConfig") or {}
        info.memory_limit = int(host_config.get("Memory") or 0)
        info.cgroup_parent = host_config.get("CgroupParent") or ""
        info.inspected = True

    def running(self) -> list[ContainerInfo]:
        return [c for c in self.containers.values() if c.state in ("running", "paused")]
