"""The prometheus exporter against real containers: cAdvisor names, values, series removal."""

from __future__ import annotations

import asyncio
import zlib
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics.inventory import Inventory
from agent.metrics.stats import ApiStatsSource, CgroupStatsSource
from agent.record import ContainerMeta
from tests.integration.helpers import free_port


async def scrape(port: int, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        return await resp.text(), resp.headers["Content-Type"]


def samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(parsed: dict[str, list[Any]], metric: str, **labels: str) -> float | None:
    for s in parsed.get(metric, []):
        if all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


async def start_with_metrics(start_agent, tmp_path, **prometheus):
    """An agent with a file exporter and a prometheus one (``container_labels: [team]``,
    plus ``prometheus``) on a free port: (agent, port)."""
    port = free_port()
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "records-0.ndjson")},
            "metrics": {
                "type": "prometheus",
                "listen": f"127.0.0.1:{port}",
                "container_labels": ["team"],
                **prometheus,
            },
        },
        stats={"interval_seconds": 1},
    )
    return agent, port


@pytest.fixture
async def metrics_agent(start_agent, tmp_path):
    return await start_with_metrics(start_agent, tmp_path)


async def test_container_metrics_with_known_behaviour(metrics_agent, containers) -> None:
    agent, port = metrics_agent
    rid = containers.run_id
    burner = await containers.run(
        "while :; do :; done", name=f"burn-{rid}", labels={"team": "core"}
    )
    await containers.run(
        # tail keeps the last 39 MB in memory until its input ends, 60 s later
        "(head -c 40000000 /dev/zero; sleep 60) | tail -c 39000000 > /dev/null",
        name=f"hog-{rid}",
        host_config={"Memory": 256 * 1024 * 1024},
    )
    printer = await containers.run(
        "i=0; while [ $i -lt 500 ]; do echo out $i; i=$((i+1)); done; "
        "i=0; while [ $i -lt 300 ]; do echo err $i >&2; i=$((i+1)); done; sleep 60",
        name=f"print-{rid}",
    )
    await agent.wait_for(lambda: len(agent.logs(printer)) == 800, what="printer's lines")
    history: list[dict[str, list[Any]]] = []
    for _ in range(4):
        await asyncio.sleep(1.2)
        text, ctype = await scrape(port)
        assert ctype.startswith("text/plain")
        history.append(samples(text))
    last = history[-1]
    b, h, p = f"burn-{rid}", f"hog-{rid}", f"print-{rid}"
    cpu = [value(s, "container_cpu_usage_seconds_total", name=b, cpu="total") for s in history]
    assert all(c is not None for c in cpu)
    assert cpu == sorted(cpu), "a counter went backwards"
    assert cpu[-1] - cpu[0] > 0.5, f"the burner used too little CPU: {cpu}"
    assert value(last, "container_cpu_user_seconds_total", name=b) > 0
    assert value(last, "container_memory_working_set_bytes", name=h) > 30e6
    assert value(last, "container_memory_usage_bytes", name=h) >= value(
        last, "container_memory_working_set_bytes", name=h
    )
    assert value(last, "container_memory_rss", name=h) > 30e6
    assert value(last, "container_spec_memory_limit_bytes", name=h) == 256 * 1024 * 1024
    assert value(last, "container_spec_memory_limit_bytes", name=b) == 0
    assert value(last, "container_processes", name=b) >= 1
    assert value(last, "container_start_time_seconds", name=b) > 1.7e9
    assert value(last, "container_last_seen", name=b) > 1.7e9
    assert value(last, "container_log_lines_total", name=p, stream="stdout") == 500
    assert value(last, "container_log_lines_total", name=p, stream="stderr") == 300
    assert value(last, "container_log_bytes_total", name=p, stream="stdout") > 2500
    assert value(last, "container_state", name=b, state="running") == 1
    assert value(last, "container_health_status", name=b, status="none") == 1
    burn_sample = next(
        s for s in last["container_cpu_usage_seconds_total"] if s.labels["name"] == b
    )
    assert burn_sample.labels["container_label_team"] == "core"
    assert burn_sample.labels["id"].endswith(burner) and burn_sample.labels["image"]
    # the agent's own
    assert value(last, "container_agent_records_exported_total", exporter="records") >= 800
    assert (
        value(
            last, "container_agent_records_dropped_total", exporter="records", reason="queue_full"
        )
        == 0
    )
    assert value(last, "container_agent_containers_followed") == 3
    assert value(last, "container_agent_engine_connected") == 1
    assert value(last, "container_agent_log_read_lag_seconds", name=p) >= 0
    assert value(last, "process_resident_memory_bytes") > 0

    # A stopped container's stats series disappear at the next scrape.
    await containers.docker.containers.container(burner).kill()
    await containers.wait(burner)
    await agent.wait_for(lambda: any(e["action"] == "die" for e in agent.events(burner)))
    after = samples((await scrape(port))[0])
    assert value(after, "container_cpu_usage_seconds_total", name=b) is None
    assert value(after, "container_memory_usage_bytes", name=b) is None
    assert value(after, "container_state", name=b, state="exited") == 1
    assert value(after, "container_last_exit_code", name=b) == 137
    # Removed: every series of it is gone.
    await containers.docker.containers.container(burner).delete()
    await agent.wait_for(lambda: any(e["action"] == "destroy" for e in agent.events(burner)))
    gone = samples((await scrape(port))[0])
    assert not any(s.labels.get("name") == b for series in gone.values() for s in series)


async def test_openmetrics_health_and_readiness(metrics_agent) -> None:
    _, port = metrics_agent
    text, ctype = await scrape(port, "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["alive"] is True
        async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["ready"] and body["engine"]["ok"] and body["exporters"]["records"]["ok"]


async def test_gzip_when_the_scraper_accepts_it(start_agent, containers, tmp_path) -> None:
    """Prometheus asks ``Accept-Encoding: gzip``: with ``compression: gzip``, the same
    text, gzipped; a scraper that does not accept gzip gets it plain."""
    _agent, port = await start_with_metrics(start_agent, tmp_path, compression="gzip")
    await containers.run("echo hi; sleep 30", labels={"team": "gz"})
    url = f"http://127.0.0.1:{port}/metrics"
    got = {}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        for encoding in ("gzip", "identity", "gzip;q=0", "deflate, gzip;q=0.5"):
            for _ in range(50):  # until the container is in the answer
                async with session.get(url, headers={"Accept-Encoding": encoding}) as resp:
                    raw = await resp.read()
                    gzipped = resp.headers.get("Content-Encoding") == "gzip"
                    assert "Accept-Encoding" in resp.headers.get("Vary", "")
                text = (zlib.decompress(raw, 31) if gzipped else raw).decode()
                if 'container_label_team="gz"' in text:
                    break
                await asyncio.sleep(0.2)
            got[encoding] = (gzipped, samples(text))
    assert [g for g, _ in got.values()] == [True, False, False, True]
    gz, plain = got["gzip"][1], got["identity"][1]
    # the same series (values move between scrapes, and a family may appear in between:
    # compare the labels of those there from a container's first sighting)
    for name in ("container_state", "container_health_status", "container_last_seen"):
        assert sorted(str(s.labels) for s in gz[name]) == sorted(str(s.labels) for s in plain[name])


async def test_readyz_says_why_not_when_an_exporter_fails(start_agent, tmp_path) -> None:
    port = free_port()
    agent = await start_agent(
        exporters={
            "records": {"type": "file", "path": str(tmp_path / "ok.ndjson")},
            "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{port}"},
        }
    )
    runner = agent.runtime.pipeline.runners[0]
    runner.exporter.files.error = "disk full (simulated)"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as resp,
    ):
        body = await resp.json()
    assert resp.status == 503
    assert body["exporters"]["records"] == {"ok": False, "detail": "disk full (simulated)"}


async def test_api_and_cgroup_sources_agree(engine_host, containers) -> None:
    from agent.engine.client import Engine

    cid = await containers.run(
        "(head -c 20000000 /dev/zero; while :; do :; done) | tail -c 19000000 > /dev/null"
    )
    await asyncio.sleep(1.5)
    engine = Engine(engine_host)
    try:
        inv = Inventory()
        info = inv.seen_in_listing(ContainerMeta(cid, "x", "img", {}, "h"), "running")
        inv.apply_inspect(cid, await engine.inspect(cid))
        cgroup = CgroupStatsSource("/sys/fs/cgroup")
        a = await ApiStatsSource(engine).sample(info)
        c = await cgroup.sample(info)
        assert c is not None, "the test engine's container cgroup was not found"
        assert c.source == "cgroup" and a.source == "api"
        # Taken a few ms apart from a container burning one CPU: within 0.3 s of CPU.
        assert abs(a.cpu_total_ns - c.cpu_total_ns) < 0.3e9
        assert c.memory_usage == pytest.approx(a.memory_usage, rel=0.1)
        assert c.memory_working_set == pytest.approx(a.memory_working_set, rel=0.1)
        assert c.memory_rss == pytest.approx(a.memory_rss, rel=0.1)
        assert c.pids == a.pids
    finally:
        await engine.close()


async def test_stats_as_records(start_agent, containers) -> None:
    agent = await start_agent(stats={"interval_seconds": 0.5, "records": True})
    cid = await containers.run("while :; do :; done")
    await agent.wait_for(
        lambda: (
            sum(r["kind"] == "stats" and r["container_id"] == cid for r in agent.records()) >= 3
        ),
        what="3 stats records",
    )
    recs = [r for r in agent.records() if r["kind"] == "stats" and r["container_id"] == cid]
    first, last = recs[0], recs[-1]
    assert first["stats"]["cpu_percent"] is None
    assert last["stats"]["cpu_percent"] > 30  # one busy loop on a 2-core machine
    assert last["stats"]["cpu_usage_seconds"] > first["stats"]["cpu_usage_seconds"]
    assert last["stats"]["pids"] >= 1 and last["stats"]["source"] in ("cgroup", "api")
    assert set(last) >= {"kind", "timestamp", "container_id", "container_name", "image", "stats"}


async def test_exported_dead_lettered_and_failures_tell_the_truth(
    start_agent, containers, tmp_path
) -> None:
    """The http exporter retries inside send and parks refused records in its dead-letter
    file: 503s count as failures, dead-lettered records are not counted as exported."""
    from tests.http_receiver import Answer, Receiver
    from tests.integration.helpers import FAST_RETRY, until

    receiver = await Receiver().start()
    receiver.script.extend(Answer(503, b"unavailable") for _ in range(3))
    receiver.default = lambda got: (
        Answer(400, b'{"error":"refused"}') if b'"message":"bad ' in got.body else None
    )
    port = free_port()
    try:
        agent = await start_agent(
            exporters={
                "http": {
                    "type": "http",
                    "url": receiver.url,
                    "retry": FAST_RETRY,
                    "batch": {"max_records": 10, "max_seconds": 0.1},
                    "dead_letter_path": str(tmp_path / "dead.ndjson"),
                },
                "metrics": {"type": "prometheus", "listen": f"127.0.0.1:{port}"},
            }
        )
        cid = await containers.run(
            "for i in $(seq 0 59); do if [ $i -ge 20 ] && [ $i -lt 25 ]; "
            'then echo "bad $i"; else echo "ok $i"; fi; done'
        )
        await containers.wait(cid)
        [runner] = [r for r in agent.runtime.pipeline.runners if r.name == "http"]

        def lines(status: range) -> int:
            return sum(
                r["kind"] == "log" and r["container_id"] == cid
                for g in receiver.got
                if g.status in status
                for r in g.ndjson()
            )

        # Every line either delivered or dead-lettered (a refused request takes the good
        # lines it carries with it).
        await until(
            lambda: lines(range(200, 300)) + lines(range(400, 401)) == 60, 30, "all 60 lines"
        )
        await until(
            lambda: runner.received == runner.exported + runner.dead_lettered, 10, "a drained queue"
        )
        parsed = samples((await scrape(port))[0])
    finally:
        await receiver.stop()
    accepted = sum(len(g.ndjson()) for g in receiver.accepted)
    refused = sum(len(g.ndjson()) for g in receiver.got if g.status == 400)
    not_2xx = sum(not 200 <= g.status < 300 for g in receiver.got)
    assert refused >= 5 and not_2xx >= 3 + 1
    assert value(parsed, "container_agent_records_exported_total", exporter="http") == accepted
    assert value(parsed, "container_agent_records_dead_lettered_total", exporter="http") == refused
    assert (
        value(parsed, "container_agent_exporter_dead_lettered_records_total", exporter="http")
        == refused
    )
    assert value(parsed, "container_agent_records_received_total", exporter="http") == (
        accepted + refused
    )
    # Every request not answered 2xx: the three 503s and the 400s.
    assert value(parsed, "container_agent_exporter_failures_total", exporter="http") == not_2xx
    assert value(parsed, "container_agent_records_dead_lettered_total", exporter="metrics") == 0
