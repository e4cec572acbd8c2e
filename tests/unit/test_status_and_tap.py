"""The status document (/status) and the tap (/tap) built from an agent's state."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

from agent import status
from agent.metrics.inventory import Inventory
from agent.record import ContainerMeta, Record, format_timestamp_ns
from agent.tap import Tap, TapHub

META = ContainerMeta("a" * 64, "/web", "nginx", {}, "h")
OTHER = ContainerMeta("b" * 64, "/db", "postgres", {}, "h")


def state(now: float) -> SimpleNamespace:
    inv = Inventory()
    info = inv.get(META)
    info.state = "running"
    info.log_source = "files"
    info.log_lines["stdout"] = 100
    info.log_bytes["stdout"] = 5000
    info.last_log_timestamp = format_timestamp_ns(int((now - 2.5) * 1e9))
    reader = SimpleNamespace(last_error="GET /logs: 500 boom")
    health = SimpleNamespace(ok=True, detail="")
    exporter = SimpleNamespace(
        type_name="file",
        target=lambda: "file:/x",
        health=lambda: health,
        counters=lambda: {"retries": 3, "failures": 2},
    )
    runner = SimpleNamespace(
        name="records",
        exporter=exporter,
        worker_error="",
        received=120,
        exported=100,
        queue=SimpleNamespace(size=20, capacity=4096),
        buffer=None,
        dropped={"queue_full": 0},
        dead_lettered=0,
        failures=1,
        last_error="",
    )
    engine = SimpleNamespace(host="unix:///e.sock")
    return SimpleNamespace(
        inventory=inv,
        followers=SimpleNamespace(readers={META.id: reader}),
        pipeline=SimpleNamespace(runners=[runner]),
        discovery=SimpleNamespace(
            engine=engine,
            connected=SimpleNamespace(is_set=lambda: True),
            reconnects=1,
            events_seen=7,
            last_error="",
        ),
        supervisor=SimpleNamespace(down={}),
        reloader=SimpleNamespace(hash="abc123", results={"ok": 2, "failed": 1}),
        host="h",
        started_at=now - 10,
    )


def test_the_status_document() -> None:
    import time

    now = time.time()
    st = state(now)
    rates = status.Rates(st.started_at)
    doc = status.build(st, rates)  # type: ignore[arg-type]
    (c,) = doc["containers"]
    assert (c["name"], c["source"], c["followed"], c["lines"]) == ("web", "files", True, 100)
    assert 9 <= c["lines_per_second"] <= 11  # the first call: since the agent started
    assert 2.4 <= c["lag_seconds"] <= 3.5 and c["last_error"] == "GET /logs: 500 boom"
    (e,) = doc["exporters"]
    assert (e["queue_records"], e["retries"], e["failures"], e["healthy"]) == (20, 3, 3, True)
    assert doc["engine"]["connected"] and doc["agent"]["reloads"] == {"ok": 2, "failed": 1}
    assert doc["agent"]["config_hash"] == "abc123" and 9 <= doc["agent"]["uptime_seconds"] <= 11


def test_rates_are_measured_between_calls_at_least_a_second_apart() -> None:
    rates = status.Rates(started=0.0)
    assert rates.rate("lines:x", 100, now=10.0) == 10.0  # since the start
    assert rates.rate("lines:x", 150, now=10.5) == 10.0  # too soon: the last rate again
    assert rates.rate("lines:x", 150, now=12.0) == 25.0  # 50 lines in 2 s
    rates.forget(set())
    assert rates.rate("lines:x", 150, now=13.0) == 150 / 13.0


async def test_a_tap_filters_and_a_slow_one_drops_its_own_copies() -> None:
    hub = TapHub()
    web = hub.subscribe(Tap(container=re.compile("web"), grep=re.compile("err")))
    small = hub.subscribe(Tap(limit=2))
    batch = [
        Record.log("2026-01-01T00:00:00.000000001Z", META, "stdout", "an error", False),
        Record.log("2026-01-01T00:00:00.000000002Z", META, "stdout", "fine", False),
        Record.log("2026-01-01T00:00:00.000000003Z", OTHER, "stdout", "db error", False),
    ]
    hub.publish(batch)
    lines, dropped = await asyncio.wait_for(web.take(), 1)
    assert [b'"message":"an error"' in line for line in lines] == [True] and dropped == 0
    lines, dropped = await asyncio.wait_for(small.take(), 1)
    assert len(lines) == 2 and dropped == 1 and hub.dropped == 1
    hub.unsubscribe(web)
    hub.unsubscribe(small)
    hub.publish(batch)  # nobody watches: nothing kept
    assert not web.lines and not small.lines
