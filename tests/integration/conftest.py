"""Fixtures for tests against the real test engine (scripts/test-engine.sh, `make test`).

Each test labels its containers with a run id and the agent under test follows only those,
so tests do not see each other's containers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import orjson
import pytest

from agent.config import parse
from agent.runtime import Runtime

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("CA_TEST_IMAGE", "ca-busybox:latest")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration/ needs the test engine: marked ``integration``,
    so that ``pytest -m "not integration"`` runs the unit tests alone."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def engine_host() -> str:
    host = os.environ.get("CA_TEST_DOCKER_HOST")
    if not host:
        pytest.fail("CA_TEST_DOCKER_HOST is not set: run `make test`, which starts the test engine")
    return host


class Containers:
    """Creates labelled containers (network mode none) and removes them afterwards."""

    def __init__(self, docker: aiodocker.Docker, run_id: str) -> None:
        self.docker = docker
        self.run_id = run_id
        self.labels = {"ca-test-run": run_id}

    async def run(
        self,
        script: str,
        *,
        name: str | None = None,
        tty: bool = False,
        labels: dict[str, str] | None = None,
        auto_remove: bool = False,
        start: bool = True,
        host_config: dict[str, Any] | None = None,
        **config: Any,
    ) -> str:
        body: dict[str, Any] = {
            "Image": IMAGE,
            "Cmd": ["sh", "-c", script],
            "Tty": tty,
            "Labels": {**self.labels, **(labels or {})},
            "HostConfig": {"NetworkMode": "none", "AutoRemove": auto_remove, **(host_config or {})},
            **config,
        }
        container = await self.docker.containers.create(body, name=name)
        if start:
            await container.start()
        return container.id

    async def wait(self, cid: str, timeout: float = 60) -> int:
        result = await asyncio.wait_for(self.docker.containers.container(cid).wait(), timeout)
        return int(result["StatusCode"])

    async def remove_all(self) -> None:
        found = await self.docker.containers.list(
            all=True, filters=orjson.dumps({"label": [f"ca-test-run={self.run_id}"]}).decode()
        )
        await asyncio.gather(*(c.delete(force=True) for c in found), return_exceptions=True)


@pytest.fixture
async def containers(engine_host: str) -> AsyncIterator[Containers]:
    docker = aiodocker.Docker(url=engine_host)
    helper = Containers(docker, uuid.uuid4().hex[:12])
    try:
        yield helper
    finally:
        await helper.remove_all()
        await docker.close()


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """The complete records of an NDJSON file that an agent may be writing right now: a
    write in progress can leave half a line at the end, which is not a record yet."""
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


class AgentUnderTest:
    """The agent running in this test's event loop, writing to a file exporter."""

    def __init__(self, runtime: Runtime, path: Path) -> None:
        self.runtime = runtime
        self.path = path
        self.task: asyncio.Task[int] | None = None

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return read_ndjson(self.path)

    def logs(self, cid: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records()
            if r["kind"] == "log" and (cid is None or r["container_id"] == cid)
        ]

    def events(self, cid: str | None = None) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records()
            if r["kind"] == "event" and (cid is None or r["container_id"] == cid)
        ]

    async def wait_for(
        self, check: Callable[[], bool], timeout: float = 30, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        assert self.task is not None
        self.runtime.stopping.set()
        return await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def start_agent(
    engine_host: str, containers: Containers, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[AgentUnderTest] = []

    async def start(host: str | None = None, **overrides: Any) -> AgentUnderTest:
        path = tmp_path / f"records-{len(started)}.ndjson"
        data: dict[str, Any] = {
            "engine": {"host": host or engine_host, "reconnect_max_seconds": 1.0},
            "exporters": {"records": {"type": "file", "path": str(path)}},
            "containers": {"include": {"label": [f"ca-test-run={containers.run_id}"]}},
            "agent": {"hostname": "test-host", "shutdown_timeout_seconds": 10},
            "state_dir": str(tmp_path / f"state-{len(started)}"),
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        agent = AgentUnderTest(Runtime(parse(data)), path)
        agent.task = asyncio.create_task(agent.runtime.run())
        started.append(agent)
        deadline = time.monotonic() + 15
        while agent.runtime.discovery is None or not agent.runtime.discovery.connected.is_set():
            if agent.task.done():
                raise AssertionError(f"agent exited early with {agent.task.result()}")
            if time.monotonic() > deadline:
                raise AssertionError("agent did not connect within 15 s")
            await asyncio.sleep(0.02)
        return agent

    yield start
    for agent in started:
        if agent.task is not None and not agent.task.done():
            agent.runtime.stopping.set()
            await asyncio.wait_for(agent.task, 30)


def engine_script(*args: str) -> str:
    out = subprocess.run(
        [str(ROOT / "scripts" / "test-engine.sh"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = out.stdout.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
async def own_engine() -> AsyncIterator[tuple[str, str]]:
    """A private engine of the test's own (it may be stopped and restarted)."""
    directory = "/tmp/container-agent-engine-restart"
    host = engine_script("start", directory).removeprefix("DOCKER_HOST=")
    try:
        yield directory, host
    finally:
        docker = aiodocker.Docker(url=host)
        try:
            for c in await docker.containers.list(all=True):
                await c.delete(force=True)
        except (aiodocker.DockerError, OSError):
            pass
        finally:
            await docker.close()
        await asyncio.to_thread(engine_script, "stop", directory)
