"""Noisy neighbours: a flooding container next to a quiet one on the same agent.

The quiet container prints a line every 50 ms; its delivery latency is the time from the
engine's stamp to the line appearing in an exporter's file (polled every 10 ms). How many
lines the quiet container manages to print also drops under a flood: on a small machine
the flood (``yes``) and the engine writing it take the CPUs, whatever the agent does. Measured
with no flood, with an unlimited flood, and with the flood rate-limited (``delay`` and
``drop``); the figures are printed (``-s``) and written to
``$CA_TEST_RESULTS/rate_limit.json`` when that is set. The limited flood must leave the
quiet container's latency within a small bound of the no-flood figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from agent.record import timestamp_to_unix
from tests.integration.conftest import read_ndjson

P = "container-agent.logs."
SECONDS = 6.0
FLOOD = "yes 'flood line: the quick brown fox jumps over the lazy dog, again and again and again'"
QUIET = 'i=0; while true; do echo "tick $i"; i=$((i+1)); usleep 50000; done'
SMALL_LOGS = {"LogConfig": {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "2"}}}


DROP = {"rate_limit": {"lines_per_second": 2000, "mode": "drop", "summary_interval_seconds": 1}}


def flood_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as fh:
        return sum(1 for line in fh if b"flood line" in line)


async def scenario(
    start_agent: Any, containers: Any, tmp: Path, name: str, flood: dict[str, str] | None
) -> dict[str, Any]:
    sid = uuid.uuid4().hex[:8]
    quiet_path = tmp / f"quiet-{name}.ndjson"
    agent = await start_agent(
        processing={"profiles": {"drop": DROP}},
        containers={"include": {"label": [f"scenario={sid}"]}},
        exporters={
            "all": {"type": "file", "path": str(tmp / f"all-{name}.ndjson")},
            "quiet": {
                "type": "file",
                "path": str(quiet_path),
                "containers": {"include": {"label": ["quiet"]}},
            },
        },
    )
    started = []
    if flood is not None:
        started.append(
            await containers.run(FLOOD, labels={"scenario": sid, **flood}, host_config=SMALL_LOGS)
        )
        await asyncio.sleep(1.0)  # the flood is under way
    quiet = await containers.run(QUIET, labels={"scenario": sid, "quiet": "1"})
    started.append(quiet)
    all_path = tmp / f"all-{name}.ndjson"
    latencies: list[float] = []
    seen = 0
    flood_before = flood_lines(all_path)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        await asyncio.sleep(0.01)
        if not quiet_path.exists():
            continue
        got = [r for r in read_ndjson(quiet_path) if r["kind"] == "log"]
        now = time.time()
        for r in got[seen:]:
            latencies.append(now - float(timestamp_to_unix(r["timestamp"])))
        seen = len(got)
    flood_rate = (flood_lines(all_path) - flood_before) / SECONDS
    for cid in started:
        await containers.docker.containers.container(cid).kill()
    processing = agent.runtime.followers.processing
    totals = dict(processing.totals()) if processing is not None else {}
    await agent.stop()
    latencies.sort()
    result = {
        "quiet_lines": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
        "max_ms": round(1000 * latencies[-1], 1),
        "summaries": totals.get("rate_limit_summaries", 0),
        "flood_lines_per_s": round(flood_rate),
        "dropped": totals.get("rate_limited_lines", 0),
    }
    print(f"rate limit, {name}: {result}")
    return result


async def test_a_rate_limited_flood_leaves_a_quiet_container_fast(
    start_agent, containers, tmp_path
) -> None:
    results = {
        "no flood": await scenario(start_agent, containers, tmp_path, "none", None),
        "flood, no limit": await scenario(start_agent, containers, tmp_path, "unlimited", {}),
        "flood, rate_limit 2000 delay": await scenario(
            start_agent, containers, tmp_path, "delay", {P + "rate_limit": "2000"}
        ),
        "flood, rate_limit 2000 drop": await scenario(
            start_agent, containers, tmp_path, "drop", {P + "profile": "drop"}
        ),
    }
    out = os.environ.get("CA_TEST_RESULTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "rate_limit.json").write_text(json.dumps(results, indent=1) + "\n")
    base = results["no flood"]
    limited = results["flood, rate_limit 2000 delay"]
    # the bound: the limited flood adds at most 25 ms to the quiet container's median and
    # 150 ms to its 95th percentile (a shared 2-CPU machine: the unlimited flood adds
    # 100-550 ms there, see the figures printed)
    assert limited["p50_ms"] <= base["p50_ms"] + 25, results
    assert limited["p95_ms"] <= base["p95_ms"] + 150, results
    # and the limit holds: about 2000 lines/s of the flood reach the exporters
    assert limited["flood_lines_per_s"] <= 2000 * 1.1, results
    drop = results["flood, rate_limit 2000 drop"]
    assert drop["dropped"] > 0 and drop["summaries"] > 0, results
