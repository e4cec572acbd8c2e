"""What the agent is doing right now, in one object handed to the exporters (``bind``).

Kept apart from the Prometheus collectors that read it, so that an agent without a
prometheus exporter never imports prometheus-client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import status
from agent.metrics.inventory import Inventory
from agent.tap import TapHub

if TYPE_CHECKING:
    from agent.delivery.pipeline import Pipeline
    from agent.engine.discovery import Discovery
    from agent.metrics.stats import StatsCollector
    from agent.reload import Reloader
    from agent.sources.followers import LogFollowers
    from agent.supervisor import Supervisor


@dataclass
class AgentState:
    """Everything the collectors may read; built by the runtime."""

    inventory: Inventory
    pipeline: Pipeline
    discovery: Discovery
    followers: LogFollowers
    stats: StatsCollector | None = None
    supervisor: Supervisor | None = None
    reloader: Reloader | None = None
    tap: TapHub = field(default_factory=TapHub)
    host: str = ""
    started_at: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self._rates = status.Rates(self.started_at)

    def status(self) -> dict[str, Any]:
        """``/status``: see agent/status.py."""
        return status.build(self, self._rates)

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Engine reachable and every exporter healthy; the details say why not."""
        engine_ok = self.discovery.connected.is_set()
        exporters = {}
        for runner in self.pipeline.runners:
            health = runner.exporter.health()
            if runner.worker_error:  # its worker died and waits to start again
                exporters[runner.name] = {"ok": False, "detail": runner.worker_error}
                continue
            exporters[runner.name] = {"ok": health.ok, "detail": health.detail}
        down = dict(self.supervisor.down) if self.supervisor is not None else {}
        ok = engine_ok and all(e["ok"] for e in exporters.values()) and not down
        body = {
            "ready": ok,
            "engine": {
                "ok": engine_ok,
                "host": self.discovery.engine.host,
                "detail": "" if engine_ok else self.discovery.last_error,
            },
            "exporters": exporters,
            "tasks": {"ok": not down, "down": down},
        }
        return ok, body
