"""The image, built and run for real on the test engine (issue 13).

``scripts/build-image.sh`` builds it as ``make image`` does: a base image made from
Debian's packages (mmdebstrap, once per engine: ~2 minutes, then reused), a wheelhouse
made on this host, ``docker build --network none``. Then the image runs as an operator
would run it, hardened: no network, read-only root filesystem, every capability dropped,
no-new-privileges, the engine socket and a state volume mounted. Two modes:

- API mode: the image's own user (10001) with the socket's group added, logs read through
  the engine's API;
- files mode: uid 0 (the json-file logs are root's, mode 0640) with still no capability,
  the engine's container directory mounted read-only, ``logs.source: files``.

Each run must turn healthy through the image's own HEALTHCHECK (interval shortened), follow
a labelled busybox container and write its records to the volume, read from the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import orjson
import pytest
import yaml

from tests.integration.conftest import ROOT, Containers, read_ndjson

pytestmark = pytest.mark.timeout(900)  # the first test builds the image (and maybe the base)

TAG = os.environ.get("CA_TEST_AGENT_IMAGE", "container-agent:dev")
BASE = "container-agent-base:bookworm"
UID = 10001
CONFIG = "/etc/container-agent/config.yaml"
VOLUME = "/var/lib/container-agent"
LINES = 200
# What the runtime stage may add to the base (the venv: 31 MB when written): no compiler,
# no headers, no pip, no caches.
MAX_ADDED_BYTES = 45_000_000


def _docker(host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DOCKER_HOST": host},
    )


@dataclass(frozen=True)
class Image:
    tag: str
    build_seconds: float
    default_config: dict[str, Any]
    contents: str  # what the check of the image's files printed


@pytest.fixture(scope="module")
def image(engine_host: str) -> Image:
    t0 = time.monotonic()
    out = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh"), TAG],
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "DOCKER_HOST": engine_host},
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    seconds = time.monotonic() - t0
    print(f"\nimage build: {seconds:.0f} s\n{out.stderr.strip()}")
    script = (
        f"cat {CONFIG}; echo ---; "
        "for f in /usr/bin/gcc /usr/bin/cc /usr/include/python3.11/Python.h "
        "/usr/local/include/python3.11/Python.h /opt/venv/bin/pip /root/.cache/pip; do "
        '[ -e "$f" ] && echo "present: $f"; done; '
        "ls /opt/venv/lib/python3.11/site-packages/agent/ | grep _speedups; id"
    )
    check = _docker(
        engine_host,
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/bin/sh",
        TAG,
        "-c",
        script,
    )
    assert check.returncode == 0, check.stderr
    config_text, _, contents = check.stdout.partition("---\n")
    return Image(TAG, seconds, yaml.safe_load(config_text), contents)


def test_image_metadata_and_contents(image: Image, engine_host: str) -> None:
    info = orjson.loads(_docker(engine_host, "image", "inspect", image.tag).stdout)[0]
    config = info["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["container-agent"]
    assert config["Cmd"] == ["run", "--config", CONFIG]
    assert VOLUME in config["Volumes"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert "agent.ops.health" in config["Healthcheck"]["Test"]
    labels = config["Labels"]
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}" in labels, key
    assert labels["org.opencontainers.image.title"] == "container-agent"
    from agent import __version__

    assert labels["org.opencontainers.image.version"] == __version__

    # The runtime stage is the venv on the base: no compiler, headers, pip or caches.
    assert "present:" not in image.contents, image.contents
    assert "_speedups.cpython-311-x86_64-linux-gnu.so" in image.contents
    assert f"uid={UID}" in image.contents
    base = orjson.loads(_docker(engine_host, "image", "inspect", BASE).stdout)[0]
    added = info["Size"] - base["Size"]
    print(f"\nimage {image.tag}: {info['Size']} bytes, {added} over the base {BASE}")
    assert added < MAX_ADDED_BYTES

    # The default config: state and records on the volume, metrics on loopback.
    assert image.default_config["state_dir"] == f"{VOLUME}/state"
    assert image.default_config["exporters"]["records"]["path"] == f"{VOLUME}/records.ndjson"
    assert image.default_config["exporters"]["metrics"]["listen"] == "127.0.0.1:9811"


@pytest.fixture
async def docker(engine_host: str) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=engine_host)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """The host directory bind-mounted as the state volume."""
    path = tmp_path / "volume"
    path.mkdir()
    return path


class AgentContainer:
    def __init__(self, docker: aiodocker.Docker, cid: str, volume: Path) -> None:
        self.docker = docker
        self.id = cid
        self.volume = volume

    async def inspect(self) -> dict[str, Any]:
        return await self.docker.containers.container(self.id).show()

    async def logs(self) -> list[dict[str, Any]]:
        lines = await self.docker.containers.container(self.id).log(stdout=True, stderr=True)
        out = []
        for line in "".join(lines).splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"event": "not-json", "line": line})
        return out

    def records(self, cid: str) -> list[dict[str, Any]]:
        path = self.volume / "records.ndjson"
        if not path.exists():
            return []
        return [r for r in read_ndjson(path) if r.get("container_id") == cid]

    async def wait_healthy(self, timeout: float = 120) -> float:
        t0 = time.monotonic()
        while True:
            state = (await self.inspect())["State"]
            if state["Health"]["Status"] == "healthy":
                return time.monotonic() - t0
            if not state["Running"] or time.monotonic() - t0 > timeout:
                logs = "\n".join(map(str, (await self.logs())[-20:]))
                raise AssertionError(
                    f"not healthy (state {state['Status']}, health "
                    f"{orjson.dumps(state['Health']).decode()[-1500:]}); its log:\n{logs}"
                )
            await asyncio.sleep(0.5)


@pytest.fixture
async def run_agent(
    image: Image, docker: aiodocker.Docker, engine_host: str, containers: Containers, tmp_path: Path
) -> AsyncIterator[Any]:
    started: list[str] = []
    sock = engine_host.removeprefix("unix://")

    async def run(
        volume: Path, *, user: str | None = None, binds: tuple[str, ...] = (), **config: Any
    ) -> AgentContainer:
        # The image's own config, narrowed to this test's containers (others share the engine).
        data = {
            **image.default_config,
            "containers": {"include": {"label": [f"ca-test-run={containers.run_id}"]}},
            **config,
        }
        cfg = tmp_path / f"config-{len(started)}.yaml"
        cfg.write_text(yaml.safe_dump(data))
        cfg.chmod(0o644)
        host_config: dict[str, Any] = {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "GroupAdd": [str(os.stat(sock).st_gid)],
            "Binds": [
                f"{sock}:/var/run/docker.sock",
                f"{volume}:{VOLUME}",
                f"{cfg}:{CONFIG}:ro",
                *binds,
            ],
        }
        body: dict[str, Any] = {
            "Image": image.tag,
            "Labels": {"ca-test-agent": containers.run_id},
            # The image's HEALTHCHECK command, asked every second instead of every 30 s.
            "Healthcheck": {"Interval": 1_000_000_000, "Timeout": 20_000_000_000, "Retries": 3},
            "HostConfig": host_config,
        }
        if user is not None:
            body["User"] = user
        container = await docker.containers.create(body)
        started.append(container.id)
        await container.start()
        return AgentContainer(docker, container.id, volume)

    yield run
    for cid in started:
        with contextlib.suppress(aiodocker.DockerError):
            await docker.containers.container(cid).delete(force=True)


async def _follows_a_container(
    agent: AgentContainer, containers: Containers, source: str
) -> dict[str, Any]:
    healthy = await agent.wait_healthy()
    cid = await containers.run(f"for i in $(seq 1 {LINES}); do echo line-$i; done")
    assert await containers.wait(cid) == 0
    deadline = time.monotonic() + 60
    while len([r for r in agent.records(cid) if r["kind"] == "log"]) < LINES:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(agent.records(cid))} records of {cid[:12]} after 60 s; agent log:\n"
                + "\n".join(map(str, (await agent.logs())[-20:]))
            )
        await asyncio.sleep(0.2)
    logs = [r for r in agent.records(cid) if r["kind"] == "log"]
    assert [r["message"] for r in logs] == [f"line-{i}" for i in range(1, LINES + 1)]
    events = await agent.logs()
    started = next(e for e in events if e["event"] == "agent_started")
    assert started["speedups"] == "c"
    followed = [e for e in events if e["event"] == "container_followed" and e["id"] == cid[:12]]
    assert followed and followed[0]["source"] == source, followed
    assert not [e for e in events if e.get("level") in ("error", "critical")], events
    print(f"\n{source} mode: healthy after {healthy:.1f} s")
    return started


async def test_api_mode_non_root_with_the_socket_group(
    run_agent: Any, containers: Containers, volume: Path, engine_host: str
) -> None:
    os.chown(volume, UID, UID)
    agent = await run_agent(volume)
    await _follows_a_container(agent, containers, "api")
    assert (volume / "records.ndjson").stat().st_uid == UID  # written by the image's user
    assert (volume / "state").is_dir()

    # `container-agent health` (the CLI) answers the same inside the container.
    out = _docker(
        engine_host,
        "exec",
        agent.id,
        "container-agent",
        "health",
        "--config",
        CONFIG,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("healthy: http://127.0.0.1:9811/healthz answered 200")

    # SIGTERM to the agent (PID 1): it drains and exits 0.
    await containers.docker.containers.container(agent.id).stop(t=30)
    state = (await agent.inspect())["State"]
    assert state["ExitCode"] == 0, state
    assert any(e["event"] == "agent_stopped" for e in await agent.logs())


async def test_files_mode_as_root_without_capabilities(
    run_agent: Any, containers: Containers, volume: Path, docker: aiodocker.Docker
) -> None:
    root_dir = (await docker.system.info())["DockerRootDir"]
    containers_dir = f"{root_dir}/containers"
    agent = await run_agent(
        volume,
        user="0",
        binds=(f"{containers_dir}:/var/lib/docker/containers:ro",),
        logs={"source": "files"},
    )
    inspect = await agent.inspect()
    assert inspect["HostConfig"]["CapDrop"] == ["ALL"] and inspect["Config"]["User"] == "0"
    await _follows_a_container(agent, containers, "files")
    assert (volume / "records.ndjson").stat().st_uid == 0
