"""The engine goes away and comes back: nothing lost, nothing duplicated.

Uses an engine of its own (scripts/test-engine.sh with another directory), so that
stopping it does not disturb other tests. The engine runs with --live-restore, so the
containers keep printing while it is down and the engine catches up on restart.
"""

from __future__ import annotations

import asyncio
import time

import aiodocker

from tests.integration.conftest import Containers, engine_script


async def test_engine_restart_loses_and_duplicates_nothing(start_agent, containers, own_engine):
    directory, host = own_engine
    docker = aiodocker.Docker(url=host)
    mine = Containers(docker, containers.run_id)
    try:
        agent = await start_agent(host=host)
        n = 600  # about 6 s of output at 100 lines/s per stream
        script = (
            f'i=0; while [ $i -lt {n} ]; do echo "out $i"; echo "err $i" >&2; '
            "i=$((i+1)); usleep 10000; done"
        )
        ids = [await mine.run(script) for _ in range(2)]
        await agent.wait_for(lambda: all(len(agent.logs(c)) > 100 for c in ids), what="output")

        t0 = time.monotonic()
        await asyncio.to_thread(engine_script, "stop", directory)
        await agent.wait_for(
            lambda: not agent.runtime.discovery.connected.is_set(), what="the agent to notice"
        )
        await asyncio.sleep(1.0)
        await asyncio.to_thread(engine_script, "start", directory)
        # A container started while the agent reconnects is found too.
        late = await mine.run("echo late one; echo late two")
        for cid in ids:
            await mine.wait(cid, timeout=60)
        await agent.wait_for(
            lambda: all(len(agent.logs(c)) >= 2 * n for c in ids) and len(agent.logs(late)) == 2,
            timeout=30,
            what="every line after the restart",
        )
        assert time.monotonic() - t0 < 45
        await asyncio.sleep(0.5)
        for cid in ids:
            logs = agent.logs(cid)
            for stream, word in (("stdout", "out"), ("stderr", "err")):
                got = [r["message"] for r in logs if r["stream"] == stream]
                assert got == [f"{word} {i}" for i in range(n)], f"{stream} lost or duplicated"
        assert agent.runtime.discovery.reconnects >= 1
    finally:
        await mine.remove_all()
        await docker.close()
