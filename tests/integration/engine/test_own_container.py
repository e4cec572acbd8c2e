"""The agent's own container found from what a real container of the test engine sees:
its /proc/self/cgroup, /proc/self/mountinfo, $HOSTNAME and /.dockerenv, read by a busybox
container and given to ``own_container_id`` (running the agent's image is another test's)."""

from __future__ import annotations

from pathlib import Path

import aiodocker
import pytest

from agent.engine.discovery import own_container_id

SCRIPT = (
    "cat /proc/self/cgroup; echo '#--'; cat /proc/self/mountinfo; echo '#--'; "
    "echo $HOSTNAME; echo '#--'; [ -e /.dockerenv ] && echo dockerenv; true"
)


async def sample(engine_host: str, containers, tmp_path: Path, **host_config: str) -> str:
    cid = await containers.run(SCRIPT, host_config=host_config)
    assert await containers.wait(cid) == 0
    docker = aiodocker.Docker(url=engine_host)
    try:
        lines = await docker.containers.container(cid).log(stdout=True)
    finally:
        await docker.close()
    cgroup, mountinfo, hostname, marker = "".join(lines).split("#--\n")
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(cgroup)
    (tmp_path / "proc" / "self" / "mountinfo").write_text(mountinfo)
    (tmp_path / "root").mkdir()
    if marker.strip() == "dockerenv":
        (tmp_path / "root" / ".dockerenv").write_text("")
    (tmp_path / "hostname").write_text(hostname.strip())
    return cid


def found(tmp_path: Path) -> tuple[str, str] | None:
    hostname = (tmp_path / "hostname").read_text()
    return own_container_id(tmp_path / "proc", {"HOSTNAME": hostname}, tmp_path / "root")


async def test_found_from_what_a_container_sees(engine_host, containers, tmp_path: Path) -> None:
    cid = await sample(engine_host, containers, tmp_path)
    # cgroup v1, or v2 in the host's cgroup namespace, name the container's cgroup.
    in_cgroup = cid in (tmp_path / "proc/self/cgroup").read_text()
    assert found(tmp_path) == (cid, "cgroup" if in_cgroup else "mountinfo")


async def test_found_in_a_private_cgroup_namespace(engine_host, containers, tmp_path) -> None:
    """Docker's default on cgroup v2: the container's cgroup reads ``/``; the engine's
    bind mounts (/etc/hostname, …) still name it, and then $HOSTNAME does."""
    try:
        cid = await sample(engine_host, containers, tmp_path, CgroupnsMode="private")
    except aiodocker.DockerError as exc:  # an engine or kernel without cgroup namespaces
        pytest.skip(f"no private cgroup namespace here: {exc}")
    assert "docker" not in (tmp_path / "proc/self/cgroup").read_text()
    assert found(tmp_path) == (cid, "mountinfo")
    (tmp_path / "proc/self/mountinfo").write_text("")
    assert found(tmp_path) == (cid[:12], "hostname")
