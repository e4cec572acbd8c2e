"""Delivery across failures that stack: the backend down while the engine restarts, and
the backend down while the agent restarts (the disk buffer and checkpoints carry it)."""

from __future__ import annotations

import asyncio
import collections

import aiodocker
import orjson
import pytest

from tests.http_receiver import Answer, Receiver
from tests.integration.conftest import Containers
from tests.integration.helpers import FAST_RETRY, numbered, until


def delivered(receiver: Receiver) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for g in receiver.accepted:
        for r in g.ndjson():
            if r["kind"] == "log":
                out[r["container_id"]].append(r["message"])
    return out


def http_config(receiver: Receiver) -> dict:
    return {
        "records": {
            "type": "http",
            "url": receiver.url,
            "retry": FAST_RETRY,
            "batch": {"max_records": 500, "max_seconds": 0.2},
            "buffer": {"type": "disk"},
        }
    }


async def test_engine_restart_while_the_backend_is_down(
    start_agent,
    containers,
    own_engine,
) -> None:
    directory, host = own_engine
    from tests.integration.conftest import engine_script

    receiver = await Receiver(lambda g: Answer(503, b"down")).start()
    docker = aiodocker.Docker(url=host)
    mine = Containers(docker, containers.run_id)
    try:
        agent = await start_agent(host=host, exporters=http_config(receiver))
        n = 500
        # the containers outlive the outage: an engine loses what a container printed while
        # it was down if the container also exited before it came back (live-restore)
        ids = [await mine.run(numbered(f"c{k}", n, every=10, pause_us=100_000)) for k in range(2)]
        runner = agent.runtime.pipeline.runners[0]
        await until(lambda: runner.buffered > 100, 30, "records on disk")
        await asyncio.to_thread(engine_script, "stop", directory)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(engine_script, "start", directory)
        for cid in ids:
            await mine.wait(cid, timeout=60)
        receiver.default = None  # the backend recovers
        await until(
            lambda: all(len(delivered(receiver).get(c, [])) >= n for c in ids), 60, "every line"
        )
        await asyncio.sleep(0.5)
        got = delivered(receiver)
        for k, cid in enumerate(ids):
            assert got[cid] == [f"c{k} {i}" for i in range(n)]
        assert agent.runtime.discovery.reconnects >= 1
    finally:
        await mine.remove_all()
        await docker.close()
        await receiver.stop()


async def test_agent_restart_while_the_backend_is_down(start_agent, containers, tmp_path) -> None:
    receiver = Receiver()  # not listening: connections are refused
    state = str(tmp_path / "shared-state")
    n = 3000
    first = await start_agent(state_dir=state, exporters=http_config(receiver))
    ids = [await containers.run(numbered(f"c{k}", n, every=500, pause_us=1000)) for k in range(2)]
    for cid in ids:
        await containers.wait(cid)
    runner = first.runtime.pipeline.runners[0]
    await until(lambda: runner.buffered >= 2 * n, 30, "every line on disk")
    # The backend is down, yet the checkpoint has moved to the end: the buffer accepted it.
    await asyncio.sleep(1.5)
    saved = orjson.loads((tmp_path / "shared-state" / "checkpoints.json").read_bytes())
    for cid in ids:
        assert saved["containers"][cid]["stdout"]["count"] >= 1
    assert await first.stop() == 0

    await receiver.start()
    second = await start_agent(state_dir=state, exporters=http_config(receiver))
    await until(
        lambda: all(len(delivered(receiver).get(c, [])) >= n for c in ids), 60, "every line"
    )
    await asyncio.sleep(1.0)
    got = delivered(receiver)
    for k, cid in enumerate(ids):
        assert got[cid] == [f"c{k} {i}" for i in range(n)]  # from the buffer, not re-read
    assert second.runtime.pipeline.runners[0].buffered == 0
    await receiver.stop()


@pytest.mark.parametrize("down", ["half-way", "from-the-start"])
async def test_the_checkpoint_waits_for_the_slower_of_two_exporters_across_a_restart(
    start_agent, containers, tmp_path, down
) -> None:
    """Two durable exporters at different progress: a file exporter takes every line while
    an http exporter's backend goes down half way (no disk buffer: its queue is memory
    only). The agent stops; the checkpoint must be the http exporter's position, not the
    file's, or the restarted agent never sends it the lines in between. From the start:
    a container the http exporter has taken nothing of must still be in the checkpoint
    (it was left out, and a stopped container was then never read again)."""
    receiver = Receiver()
    if down == "half-way":
        await receiver.start()
    state = str(tmp_path / "shared-state")
    n = 1000

    def exporters(path: str) -> dict:
        http = http_config(receiver)["records"]
        http["buffer"] = {"type": "memory"}
        return {"web": http, "file": {"type": "file", "path": str(tmp_path / path)}}

    first = await start_agent(
        state_dir=state, exporters=exporters("first.ndjson"), agent={"shutdown_timeout_seconds": 1}
    )
    script = (
        f'i=0; while [ $i -lt {n} ]; do echo "c $i"; i=$((i+1)); done; sleep 4; '
        f'while [ $i -lt {2 * n} ]; do echo "c $i"; i=$((i+1)); done'
    )
    cid = await containers.run(script)
    if down == "half-way":
        await until(lambda: len(delivered(receiver).get(cid, [])) >= n, 30, "the first half")
        await receiver.stop()  # the backend goes down; the file exporter goes on
    await containers.wait(cid)
    file_runner = next(r for r in first.runtime.pipeline.runners if r.name == "file")
    await until(lambda: file_runner.exported >= 2 * n, 30, "every line in the file")
    await asyncio.sleep(1.5)  # a checkpoint write or two
    assert await first.stop() == 0

    await receiver.start()
    await start_agent(state_dir=state, exporters=exporters("second.ndjson"))
    await until(lambda: len(set(delivered(receiver).get(cid, []))) >= 2 * n, 60, "every line")
    got = delivered(receiver)[cid]
    assert sorted(set(got), key=lambda m: int(m.split()[1])) == [f"c {i}" for i in range(2 * n)]
    await receiver.stop()
