"""Partial faults between the agent and the engine, through a fault-injecting proxy in front
of the test engine's socket: the engine's event stream stays up while its logs requests
fail or are cut, for longer than any retry budget. A reader never gives up on a container
that still exists: every line arrives once, in order (compared with the engine's own
store, ``docker logs``)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from structlog.testing import capture_logs

from agent.sources.api.source import FIRST_TAIL
from tests.faultproxy import Fault, FaultProxy
from tests.integration.helpers import numbered

LOGS = r"/containers/[0-9a-f]+/logs"


async def engine_lines(containers, cid: str) -> list[str]:
    """What the engine itself holds for ``cid`` (its json-file log, through the API)."""
    raw = await containers.docker.containers.container(cid).log(stdout=True, stderr=True)
    return [line.rstrip("\n") for line in raw]


@pytest.fixture
async def proxy(engine_host: str, tmp_path):
    async with FaultProxy(engine_host.removeprefix("unix://"), tmp_path / "proxy.sock") as p:
        yield p


@pytest.mark.parametrize(
    "fault",
    [
        Fault("GET", LOGS, status=500),  # the engine answers 500 to every logs request
        Fault("GET", LOGS, cut_after=1500),  # every logs stream cut after ~1.5 KB
    ],
    ids=["logs-500", "logs-cut"],
)
async def test_logs_requests_failing_longer_than_any_budget_lose_nothing(
    start_agent, containers, proxy, fault
):
    agent = await start_agent(
        host=proxy.host,
        logs={"source": "api"},
        engine={"reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.5},
    )
    proxy.add(fault)
    before = len(proxy.requests)
    n = 400
    with capture_logs() as logs:
        cid = await containers.run(numbered("line", n, every=50, pause_us=300_000))
        await asyncio.sleep(6)  # longer than the 3 tries the reader used to give up after
        assert fault.hits > 5, "the fault was not exercised"
        proxy.clear()
        faulted = [p for _, p in proxy.requests[before:] if re.search(LOGS, p)][: fault.hits]
        await containers.wait(cid)
        await agent.wait_for(lambda: len(agent.logs(cid)) >= n, timeout=30, what="every line")
    got = [r["message"] for r in agent.logs(cid)]
    assert got == await engine_lines(containers, cid)
    assert got == [f"line {i}" for i in range(n)]
    failed = [e for e in logs if e["event"] == "log_stream_failed"]
    assert failed, "the failures were not reported"
    info = agent.runtime.followers.inventory.containers[cid]
    # Every faulted request is a failed read, but for a first short tail that did not reach
    # back to the position (closed after its first line; the longer tail comes next).
    probes = sum(f"tail={FIRST_TAIL}" in p for p in faulted)
    assert info.log_read_failures >= len(faulted) - probes - 1
    assert info.log_read_failures >= 2


async def test_a_logs_request_that_is_never_answered_is_retried(start_agent, containers, proxy):
    """An engine (or proxy) that accepts a logs request and never answers: the reader
    times out waiting for the response headers and reads again."""
    agent = await start_agent(
        host=proxy.host,
        logs={"source": "api"},
        engine={"reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.5},
    )
    agent.runtime.engine.header_timeout = 0.5
    hang = proxy.add(Fault("GET", LOGS, hang=True, times=3))
    cid = await containers.run("echo one; echo two")
    t0 = time.monotonic()
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 2, timeout=20, what="both lines")
    assert hang.hits == 3 and time.monotonic() - t0 >= 1.0
    assert [r["message"] for r in agent.logs(cid)] == ["one", "two"]


async def test_a_removed_container_ends_its_reader(start_agent, containers, proxy):
    """Retrying forever is only for containers that exist: once inspect says a container
    is gone, its reader ends (and says so)."""
    agent = await start_agent(
        host=proxy.host,
        logs={"source": "api"},
        engine={"reconnect_min_seconds": 0.05, "reconnect_max_seconds": 0.5},
    )
    proxy.add(Fault("GET", LOGS, status=500))
    with capture_logs() as logs:
        cid = await containers.run("echo gone; sleep 30")
        followers = agent.runtime.followers
        await agent.wait_for(lambda: cid in followers.readers, what="a reader")
        await agent.wait_for(
            lambda: followers.readers[cid].failures >= 2 if cid in followers.readers else True,
            what="failed reads",
        )
        await containers.docker.containers.container(cid).delete(force=True)
        await agent.wait_for(lambda: cid not in followers.readers, timeout=15, what="the end")
    assert any(e["event"] == "container_logs_unavailable" for e in logs)
