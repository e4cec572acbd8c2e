"""Container events as records, discovery of new containers, and no leaked tasks."""

from __future__ import annotations

import asyncio

NS = 1_000_000_000


async def test_container_events_become_records(start_agent, containers) -> None:
    agent = await start_agent()
    docker = containers.docker
    # Health checks every 100 ms; a rename, pause/unpause, kill, then destroy.
    cid = await containers.run(
        "sleep 60",
        name=f"ev-{containers.run_id}",
        Healthcheck={"Test": ["CMD", "true"], "Interval": NS // 10, "StartPeriod": 0},
    )
    c = docker.containers.container(cid)
    await agent.wait_for(
        lambda: any(e["action"] == "health_status" for e in agent.events(cid)),
        what="a health_status event",
    )
    await c.rename(f"ev-{containers.run_id}-renamed")
    await c.pause()
    await c.unpause()
    await c.kill(signal="SIGKILL")
    await containers.wait(cid)
    await c.delete()
    await agent.wait_for(
        lambda: any(e["action"] == "destroy" for e in agent.events(cid)), what="destroy"
    )
    events = agent.events(cid)
    actions = [e["action"] for e in events]
    for action in (
        "create",
        "start",
        "health_status",
        "rename",
        "pause",
        "unpause",
        "kill",
        "die",
        "destroy",
    ):
        assert action in actions, f"no {action} event in {actions}"
    health = next(e for e in events if e["action"] == "health_status")
    assert health["attributes"]["health_status"] == "healthy"
    die = next(e for e in events if e["action"] == "die")
    assert die["attributes"]["exitCode"] == "137"
    assert die["container_name"] == f"ev-{containers.run_id}-renamed"
    assert die["labels"]["ca-test-run"] == containers.run_id
    assert "name" not in die["labels"]
    assert len(die["timestamp"]) == 30
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    # Each event once, although the agent asked the engine to replay from its start time.
    assert len({(e["action"], e["timestamp"]) for e in events}) == len(events)


async def test_stop_and_exit_code_events(start_agent, containers) -> None:
    agent = await start_agent()
    cid = await containers.run("exit 3")
    await containers.wait(cid)
    await agent.wait_for(lambda: any(e["action"] == "die" for e in agent.events(cid)))
    die = next(e for e in agent.events(cid) if e["action"] == "die")
    assert die["attributes"]["exitCode"] == "3"
    cid2 = await containers.run("trap 'exit 0' TERM; sleep 60 & wait")
    await asyncio.sleep(0.3)
    await containers.docker.containers.container(cid2).stop(t=5)
    await agent.wait_for(lambda: any(e["action"] == "stop" for e in agent.events(cid2)))


async def test_oom_event(start_agent, containers) -> None:
    agent = await start_agent()
    # tail buffers all input in memory: with a 16 MiB limit the kernel OOM-kills it.
    cid = await containers.run(
        "head -c 200000000 /dev/zero | tail -c 100000000 > /dev/null",
        host_config={"Memory": 16 * 1024 * 1024, "MemorySwap": 16 * 1024 * 1024},
    )
    await containers.wait(cid)
    await agent.wait_for(
        lambda: any(e["action"] == "oom" for e in agent.events(cid)), what="an oom event"
    )


async def test_200_containers_come_and_go_without_leaking_tasks(start_agent, containers) -> None:
    agent = await start_agent()
    await asyncio.sleep(0.5)
    baseline = len(asyncio.all_tasks())
    followers = agent.runtime.followers
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            cid = await containers.run(f"echo line {i}")
            await containers.wait(cid)
            await agent.wait_for(lambda: followers.readers.get(cid) is None, timeout=30)
            await containers.docker.containers.container(cid).delete()
            return cid

    ids = await asyncio.gather(*(one(i) for i in range(200)))
    await agent.wait_for(
        lambda: all(len(agent.logs(cid)) == 1 for cid in ids), timeout=60, what="200 lines"
    )
    await agent.wait_for(
        lambda: sum(e["action"] == "destroy" for e in agent.events()) == 200,
        timeout=60,
        what="200 destroy events",
    )
    await asyncio.sleep(0.3)
    assert len(asyncio.all_tasks()) == baseline
    assert followers.followed == 0
    assert not set(ids) & set(followers.positions), "positions of destroyed containers remain"


async def test_more_than_100_long_running_containers_are_all_followed(
    start_agent, containers
) -> None:
    """Each followed container holds a log stream open: the engine client must not cap
    its connections (aiohttp's default is 100), or the 101st container is never read."""
    agent = await start_agent(stats={"interval_seconds": 1})
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> str:
        async with sem:
            return await containers.run(f"echo hello {i}; sleep 120")

    ids = await asyncio.gather(*(one(i) for i in range(110)))
    await agent.wait_for(
        lambda: all(len(agent.logs(cid)) == 1 for cid in ids), timeout=90, what="110 lines"
    )
    inventory = agent.runtime.state.inventory
    await agent.wait_for(
        lambda: all(
            (c := inventory.containers.get(cid)) is not None and c.stats is not None for cid in ids
        ),
        timeout=60,
        what="stats of all 110 containers",
    )
    assert agent.runtime.followers.followed >= 110
