"""The agent through a read-only proxy (tests/readonly_proxy.py) that passes only GET of
version, info, list, inspect, logs, stats and events: every feature works, and the proxy
refuses nothing the agent asks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.readonly_proxy import ReadOnlyProxy

PRINT = (
    "i=0; while [ $i -lt {n} ]; do echo out $i; echo err $i >&2; i=$((i+1)); usleep {pause}; done"
)


def messages(logs: list[dict], stream: str) -> list[str]:
    return [r["message"] for r in logs if r["stream"] == stream]


def complete(logs: list[dict], n: int) -> bool:
    return all(
        messages(logs, s) == [f"{w} {i}" for i in range(n)]
        for s, w in (("stdout", "out"), ("stderr", "err"))
    )


async def test_every_feature_through_a_read_only_proxy(
    start_agent, containers, engine_host: str, tmp_path: Path
) -> None:
    proxy = ReadOnlyProxy(engine_host.removeprefix("unix://"), tmp_path / "ro.sock")
    await proxy.start()
    try:
        # Running before the agent starts: found by the listing.
        before = await containers.run(PRINT.format(n=200, pause=20000))
        agent = await start_agent(
            host=proxy.host,
            logs={"source": "api"},
            stats={"source": "api", "interval_seconds": 0.5, "records": True},
        )
        # Started afterwards: found by the start event.
        after = await containers.run(PRINT.format(n=30, pause=10000))
        await agent.wait_for(
            lambda: complete(agent.logs(after), 30), what="the later container's lines"
        )
        await agent.wait_for(
            lambda: any(
                r["kind"] == "stats"
                and r["container_id"] == before
                and r["stats"]["source"] == "api"
                for r in agent.records()
            ),
            what="stats from the API",
        )
        assert await containers.wait(before) == 0
        await agent.wait_for(lambda: complete(agent.logs(before), 200), what="every line")
        await agent.wait_for(
            lambda: {"start", "die"} <= {e["action"] for e in agent.events(after)},
            what="events",
        )
        # The exit re-read: after a followed stream ends, inspect, then the log without follow.
        await agent.wait_for(
            lambda: any(
                call == "logs" and "follow=0" in target and before in target
                for call, _, target in proxy.passed
            ),
            what="the exit re-read",
        )

        # The proxy restarts: every connection is cut, the agent reconnects.
        across = await containers.run(PRINT.format(n=150, pause=20000))
        await agent.wait_for(lambda: len(agent.logs(across)) > 20, what="lines before")
        await proxy.close()
        await agent.wait_for(
            lambda: not agent.runtime.discovery.connected.is_set(), what="the lost engine"
        )
        await asyncio.sleep(0.5)
        await proxy.start()
        await agent.wait_for(
            lambda: agent.runtime.discovery.connected.is_set(), what="the reconnect"
        )
        late = await containers.run("echo late one; echo late two >&2")
        assert await containers.wait(across) == 0
        await agent.wait_for(
            lambda: complete(agent.logs(across), 150) and len(agent.logs(late)) == 2,
            what="every line across the restart",
        )
        assert agent.runtime.discovery.reconnects >= 1
        assert await agent.stop() == 0
        assert complete(agent.logs(across), 150), "lost or duplicated across the restart"
    finally:
        await proxy.close()

    assert proxy.refused == [], f"the agent asked for calls outside the list: {proxy.refused}"
    assert proxy.calls() == {"version", "info", "list", "inspect", "logs", "stats", "events"}
    assert {method for _, method, _ in proxy.passed} == {"GET"}


async def test_the_proxy_refuses_everything_else(engine_host: str, tmp_path: Path) -> None:
    """What a read-only proxy is for: a write, or a read that is not the agent's, is 403."""
    async with ReadOnlyProxy(engine_host.removeprefix("unix://"), tmp_path / "ro.sock") as proxy:
        connector = aiohttp.UnixConnector(proxy.path)
        async with aiohttp.ClientSession(connector=connector) as session:
            base = "http://localhost"
            async with session.get(f"{base}/v1.41/containers/json") as resp:
                assert resp.status == 200
            for method, path in [
                ("POST", "/v1.41/containers/create"),
                ("DELETE", "/v1.41/containers/abc"),
                ("POST", "/v1.41/containers/abc/exec"),
                ("GET", "/v1.41/images/json"),
                ("GET", "/v1.41/containers/abc/archive?path=/etc"),
                ("GET", "/v1.41/containers/abc/export"),
                ("GET", "/containers/json"),  # without the version prefix
                ("HEAD", "/v1.41/info"),
            ]:
                async with session.request(method, f"{base}{path}") as resp:
                    assert resp.status == 403, (method, path)
                    if method != "HEAD":
                        assert "read-only proxy" in (await resp.json())["message"]
    assert len(proxy.refused) == 8
    assert proxy.passed == [("list", "GET", "/v1.41/containers/json")]
