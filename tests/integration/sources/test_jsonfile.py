"""The json-file source against the test engine: the same records as the logs API, rotation,
other log drivers, truncation, removal, an unreadable directory, latency.

The agent under test reads the engine's own files: ``logs.containers_dir`` is the engine's
``DockerRootDir`` (from ``GET /info``) + ``/containers``.
"""

from __future__ import annotations

import asyncio
import calendar
import os
import time
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from structlog.testing import capture_logs

from agent.config import LogsConfig
from tests.integration.conftest import Containers, engine_script

MIXED = (
    'echo hello; echo oops >&2; head -c 40000 /dev/zero | tr "\\0" a; echo; '
    'head -c 100000 /dev/zero | tr "\\0" b; echo; printf "\\377\\376bad utf8\\n"; '
    'echo \'{"level":"info","n":3}\'; head -c 20000 /dev/zero | tr "\\0" c >&2; echo >&2; '
    'i=0; while [ $i -lt 2000 ]; do echo "out $i"; echo "err $i" >&2; i=$((i+1)); done; '
    "printf 'no newline at end'"
)
MIXED_LINES = 8 + 4000


@pytest.fixture
async def containers_dir(containers) -> str:
    info = await containers.docker.system.info()
    return os.path.join(info["DockerRootDir"], "containers")


def source_of(agent, cid: str) -> str:
    return agent.runtime.followers.inventory.containers[cid].log_source


def files_source(agent) -> Any:
    return agent.runtime.followers.choose_source.files


def log_path(containers_dir: str, cid: str) -> str:
    return os.path.join(containers_dir, cid, f"{cid}-json.log")


async def test_both_sources_give_identical_records(start_agent, containers, containers_dir) -> None:
    """Two agents on the same containers, one through the API, one through the files: the
    same records (lines over 16 KiB joined and capped, stderr, invalid UTF-8, TTY, a last
    line without newline, thousands of lines), in the same order."""
    logs = {"max_message_bytes": 65536}
    api = await start_agent(logs={**logs, "source": "api"})
    files = await start_agent(logs={**logs, "source": "files", "containers_dir": containers_dir})
    ids = [await containers.run(MIXED), await containers.run(MIXED, tty=True)]
    for cid in ids:
        await containers.wait(cid)
        for agent in (api, files):
            await agent.wait_for(
                lambda agent=agent, cid=cid: len(agent.logs(cid)) >= MIXED_LINES,
                what=f"{MIXED_LINES} records",
            )
    await asyncio.sleep(0.3)
    for cid in ids:
        assert source_of(api, cid) == "api" and source_of(files, cid) == "files"
        via_api, via_files = api.logs(cid), files.logs(cid)
        assert len(via_files) == MIXED_LINES
        assert via_files == via_api
    plain, tty = (files.logs(cid) for cid in ids)
    assert {r["stream"] for r in plain} == {"stdout", "stderr"}
    assert {r["stream"] for r in tty} == {"stdout"}
    for records in (plain, tty):
        b = next(r for r in records if r["message"].startswith("b"))
        assert len(b["message"]) == 65536 and b["truncated"] is True
        assert any(r["message"] == "a" * 40000 for r in records)
        assert any(r["message"] == "\ufffd\ufffdbad utf8" for r in records)
        assert records[-1]["message"] == "no newline at end"


async def test_rotation_loses_nothing(start_agent, containers, containers_dir) -> None:
    """50,000 lines through 100 KiB files, three kept: ~37 rotations, each file lasting
    ~65 ms at ~20k lines/s. (Rotation faster than the reader can open the files, which on a
    saturated 2-core host means files that live a few ms, is counted and logged instead:
    see the unit tests.)"""
    agent = await start_agent(logs={"source": "files", "containers_dir": containers_dir})
    n = 50_000
    cid = await containers.run(
        f'sleep 0.3; i=0; while [ $i -lt {n} ]; do echo "$i"; i=$((i+1)); '
        "[ $((i % 500)) -eq 0 ] && sleep 0.02; done",
        host_config={
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "100k", "max-file": "3"}}
        },
    )
    await containers.wait(cid)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= n, timeout=60, what=f"{n} lines")
    await asyncio.sleep(0.3)
    assert [r["message"] for r in agent.logs(cid)] == [str(i) for i in range(n)]
    assert source_of(agent, cid) == "files"
    assert files_source(agent).lost == 0
    rotated = os.listdir(os.path.join(containers_dir, cid))
    assert f"{cid}-json.log.2" in rotated  # it did rotate


async def test_other_log_driver_falls_back_to_the_api(
    start_agent, containers, containers_dir
) -> None:
    agent = await start_agent(logs={"source": "files", "containers_dir": containers_dir})
    with capture_logs() as logs:
        cid = await containers.run(
            "echo via the api; sleep 0.5", host_config={"LogConfig": {"Type": "local"}}
        )
        await agent.wait_for(lambda: len(agent.logs(cid)) == 1, what="the line")
    assert agent.logs(cid)[0]["message"] == "via the api"
    assert source_of(agent, cid) == "api"
    fallback = [e for e in logs if e["event"] == "log_source_fallback"]
    assert len(fallback) == 1 and fallback[0]["id"] == cid[:12]
    followed = [e for e in logs if e["event"] == "container_followed"]
    assert [e["source"] for e in followed] == ["api"]


async def test_auto_reads_files_and_says_so(start_agent, containers, containers_dir) -> None:
    with capture_logs() as logs:
        agent = await start_agent(logs={"containers_dir": containers_dir})  # source: auto
        cid = await containers.run("echo hello")
        await agent.wait_for(lambda: len(agent.logs(cid)) == 1, what="the line")
    assert source_of(agent, cid) == "files"
    followed = [e for e in logs if e["event"] == "container_followed" and e["id"] == cid[:12]]
    assert [e["source"] for e in followed] == ["files"]


async def test_truncated_file_is_read_again_from_the_start(
    start_agent, containers, containers_dir
) -> None:
    agent = await start_agent(logs={"source": "files", "containers_dir": containers_dir})
    cid = await containers.run(
        'i=0; while [ $i -lt 20 ]; do echo "before $i"; i=$((i+1)); done; sleep 1.5; '
        'i=0; while [ $i -lt 20 ]; do echo "after $i"; i=$((i+1)); done; sleep 30'
    )
    await agent.wait_for(lambda: len(agent.logs(cid)) == 20, what="the first 20 lines")
    os.truncate(log_path(containers_dir, cid), 0)  # the engine appends: lines go on at 0
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 40, what="the next 20 lines")
    await asyncio.sleep(0.3)
    expected = [f"before {i}" for i in range(20)] + [f"after {i}" for i in range(20)]
    assert [r["message"] for r in agent.logs(cid)] == expected
    assert files_source(agent).lost == 0


async def test_removed_container_is_read_to_the_end(
    start_agent, containers, containers_dir
) -> None:
    agent = await start_agent(logs={"source": "files", "containers_dir": containers_dir})
    cid = await containers.run("seq 1 20000; sleep 30")
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 1, what="a first line")
    await containers.docker.containers.container(cid).delete(force=True)
    followers = agent.runtime.followers
    await agent.wait_for(lambda: followers.readers.get(cid) is None, timeout=10, what="the end")
    # (the exporter writes what was read within its linger)
    await agent.wait_for(lambda: len(agent.logs(cid)) >= 20000, timeout=5, what="every line")
    assert [r["message"] for r in agent.logs(cid)] == [str(i) for i in range(1, 20001)]
    assert not os.path.exists(os.path.join(containers_dir, cid))


async def test_short_lived_containers_are_read_and_left(
    start_agent, containers, containers_dir
) -> None:
    """Each reader ends once its container stopped (the engine closed the file) and every
    line is delivered, also for auto-removed containers living 100 ms."""
    agent = await start_agent(logs={"source": "files", "containers_dir": containers_dir})
    ids = [await containers.run(f"echo first {i}; echo second {i} >&2") for i in range(10)]
    ids += [
        await containers.run(f"echo a {i}; echo b {i}; sleep 0.1", auto_remove=True)
        for i in range(5)
    ]
    followers = agent.runtime.followers
    for cid in ids:
        await agent.wait_for(lambda cid=cid: len(agent.logs(cid)) == 2, what="2 lines")
    await agent.wait_for(
        lambda: not set(ids) & set(followers.readers), timeout=10, what="every reader to end"
    )
    assert all(len(agent.logs(cid)) == 2 for cid in ids)


@pytest.mark.parametrize("problem", ["missing", "a-file"])
async def test_unreadable_directory_falls_back_with_one_line(
    start_agent, containers, tmp_path: Path, problem: str
) -> None:
    """The tests run as root, who reads everything: "unreadable" is simulated with a path
    that does not exist or is a file (both fail ``listdir`` as EACCES would)."""
    path = tmp_path / problem
    if problem == "a-file":
        path.write_text("")
    with capture_logs() as logs:
        agent = await start_agent(logs={"source": "files", "containers_dir": str(path)})
        ids = [await containers.run(f"echo hello {i}") for i in range(3)]
        for cid in ids:
            await agent.wait_for(lambda cid=cid: len(agent.logs(cid)) == 1, what="a line")
    assert all(source_of(agent, cid) == "api" for cid in ids)
    unreadable = [e for e in logs if e["event"] == "log_files_unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["containers_dir"] == str(path)
    assert not [e for e in logs if e["event"] == "log_source_fallback"]


def _unix(ts: str) -> float:
    base, frac = ts.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float("0." + frac)


async def test_latency_from_write_to_record(
    start_agent, containers, containers_dir, tmp_path
) -> None:
    """The reader's own latency: the file exporter writes each batch as it comes (its
    linger, 0.25 s by default, would add up to that much). The files source's own linger
    (``logs.files_linger_seconds``, default 0.25 s) holds a line up to that long, so a
    line is written within it plus a little slack."""
    records = {"type": "file", "path": str(tmp_path / "records-0.ndjson"), "linger_seconds": 0}
    agent = await start_agent(
        logs={"source": "files", "containers_dir": containers_dir},
        exporters={"records": records},
    )
    cid = await containers.run(
        'i=0; while [ $i -lt 10 ]; do echo "tick $i"; i=$((i+1)); sleep 0.2; done'
    )
    seen: dict[str, float] = {}
    deadline = time.monotonic() + 20
    while len(seen) < 10 and time.monotonic() < deadline:
        for r in agent.logs(cid):
            seen.setdefault(r["message"], time.time() - _unix(r["timestamp"]))
        await asyncio.sleep(0.005)
    assert len(seen) == 10
    assert max(seen.values()) < LogsConfig().files_linger_seconds + 0.15, seen


async def test_engine_restart_with_files(start_agent, containers, own_engine) -> None:
    """The engine stops (--live-restore: the containers go on) and comes back while its
    containers print (about 12 s): the files are read on, nothing lost or repeated."""
    directory, host = own_engine
    docker = aiodocker.Docker(url=host)
    mine = Containers(docker, containers.run_id)
    try:
        info = await docker.system.info()
        cdir = os.path.join(info["DockerRootDir"], "containers")
        agent = await start_agent(host=host, logs={"source": "files", "containers_dir": cdir})
        # The containers must outlive the outage: what a container prints while the engine
        # is down waits in a pipe, and is lost (by the engine, whatever reads its logs) when
        # the container exits before the engine is back.
        n = 1000
        script = (
            f'i=0; while [ $i -lt {n} ]; do echo "out $i"; echo "err $i" >&2; '
            "i=$((i+1)); usleep 10000; done"
        )
        ids = [await mine.run(script) for _ in range(2)]
        await agent.wait_for(lambda: all(len(agent.logs(c)) > 100 for c in ids), what="output")
        assert all(source_of(agent, c) == "files" for c in ids)
        await asyncio.to_thread(engine_script, "stop", directory)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(engine_script, "start", directory)
        for cid in ids:
            await mine.wait(cid, timeout=60)
        await agent.wait_for(
            lambda: all(len(agent.logs(c)) >= 2 * n for c in ids),
            timeout=30,
            what="every line after the restart",
        )
        await agent.wait_for(
            lambda: not set(ids) & set(agent.runtime.followers.readers),
            timeout=30,
            what="the readers to end",
        )
        for cid in ids:
            logs = agent.logs(cid)
            for stream, word in (("stdout", "out"), ("stderr", "err")):
                got = [r["message"] for r in logs if r["stream"] == stream]
                assert got == [f"{word} {i}" for i in range(n)], f"{stream} lost or duplicated"
    finally:
        await mine.remove_all()
        await docker.close()
