"""The agent's own container: found from /proc samples as Docker writes them, and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.engine.discovery import Discovery, own_container_id
from agent.filters import ContainerFilter
from agent.record import Record
from agent.retry import Backoff
from tests.unit.engine.test_discovery import FakeFollowers, event

ID = "3f1b2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
OTHER = "aa" * 32

CGROUP_V1 = f"""12:pids:/docker/{ID}
11:hugetlb:/docker/{ID}
10:memory:/docker/{ID}
4:cpu,cpuacct:/docker/{ID}
1:name=systemd:/docker/{ID}
0::/system.slice/containerd.service
"""

CGROUP_V1_SYSTEMD_DRIVER = f"""11:memory:/system.slice/docker-{ID}.scope
1:name=systemd:/system.slice/docker-{ID}.scope
"""

# cgroup v2 with --cgroupns=host (the default on v1 hosts, an option on v2 ones).
CGROUP_V2_HOST_NS = f"0::/system.slice/docker-{ID}.scope\n"

# cgroup v2 with a private cgroup namespace (Docker's default on v2): nothing to see.
CGROUP_V2_PRIVATE = "0::/\n"

# Docker in Docker: the innermost container is ours.
CGROUP_NESTED = f"0::/docker/{OTHER}/docker/{ID}\n"

# Kubernetes with the Docker engine (dockershim): the pod's uid is not an id, the last part is.
CGROUP_KUBEPODS = f"11:memory:/kubepods/burstable/pod5b7d0c6e-2f4a-4b1e-9c3d-0a1b2c3d4e5f/{ID}\n"

CGROUP_HOST = """12:pids:/user.slice/user-1000.slice/session-3.scope
1:name=systemd:/user.slice/user-1000.slice/session-3.scope
0::/user.slice/user-1000.slice/session-3.scope
"""

# A process of this sandbox: a 32-digit hex name is not a container id.
CGROUP_OTHER_HEX = "4:memory:/process_api/ec8e261c8315cbba5d379e7331bfe8e4\n0::/\n"


def mountinfo(data_root_path: str) -> str:
    """A container's mountinfo with cgroup v2 (a few lines of a real one, Docker 20.10),
    including the agent's read-only mount of the engine's container directory."""
    return f"""\
1040 895 0:115 / / rw,relatime master:500 - overlay overlay rw,lowerdir=/var/lib/docker/l/A
1041 1040 0:118 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1045 1040 0:121 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw
1046 1040 254:1 /var/lib/docker/containers /var/lib/docker/containers ro - ext4 /dev/vda1 rw
1047 1040 254:1 {data_root_path}/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1048 1040 254:1 {data_root_path}/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1049 1040 254:1 {data_root_path}/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
1050 1040 0:123 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
"""


HOST_MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
"""

PODMAN_MOUNTINFO = (
    "700 600 0:50 / / rw - overlay overlay rw\n"
    f"710 700 0:60 /containers/storage/overlay-containers/{ID}/userdata/hostname /etc/hostname"
    " rw - tmpfs tmpfs rw\n"
)


def proc(
    tmp_path: Path, cgroup: str | None = None, mounts: str | None = None, dockerenv: bool = False
) -> dict[str, Path]:
    self_dir = tmp_path / "proc" / "self"
    self_dir.mkdir(parents=True)
    if cgroup is not None:
        (self_dir / "cgroup").write_text(cgroup)
    if mounts is not None:
        (self_dir / "mountinfo").write_text(mounts)
    root = tmp_path / "root"
    root.mkdir()
    if dockerenv:
        (root / ".dockerenv").write_text("")
    return {"proc": tmp_path / "proc", "root": root}


@pytest.mark.parametrize(
    "cgroup",
    [CGROUP_V1, CGROUP_V1_SYSTEMD_DRIVER, CGROUP_V2_HOST_NS, CGROUP_NESTED, CGROUP_KUBEPODS],
    ids=["v1", "v1-systemd-driver", "v2-host-cgroupns", "nested", "kubepods"],
)
def test_cgroup(tmp_path: Path, cgroup: str) -> None:
    paths = proc(tmp_path, cgroup, HOST_MOUNTINFO)
    assert own_container_id(**paths, environ={}) == (ID, "cgroup")


@pytest.mark.parametrize(
    "data_root_path",
    ["/var/lib/docker/containers", "/srv/docker/containers", "/containers"],
    ids=["default-data-root", "other-data-root", "data-root-own-partition"],
)
def test_cgroup_v2_private_namespace_uses_mountinfo(tmp_path: Path, data_root_path: str) -> None:
    paths = proc(tmp_path, CGROUP_V2_PRIVATE, mountinfo(data_root_path))
    assert own_container_id(**paths, environ={"HOSTNAME": "custom"}) == (ID, "mountinfo")


def test_podman_mountinfo(tmp_path: Path) -> None:
    paths = proc(tmp_path, CGROUP_V2_PRIVATE, PODMAN_MOUNTINFO)
    assert own_container_id(**paths, environ={}) == (ID, "mountinfo")


def test_hostname_prefix_only_in_a_container(tmp_path: Path) -> None:
    env = {"HOSTNAME": ID[:12]}
    inside = proc(tmp_path / "in", CGROUP_V2_PRIVATE, HOST_MOUNTINFO, dockerenv=True)
    assert own_container_id(**inside, environ=env) == (ID[:12], "hostname")
    outside = proc(tmp_path / "out", CGROUP_V2_PRIVATE, HOST_MOUNTINFO)
    assert own_container_id(**outside, environ=env) is None
    custom = proc(tmp_path / "custom", CGROUP_V2_PRIVATE, HOST_MOUNTINFO, dockerenv=True)
    assert own_container_id(**custom, environ={"HOSTNAME": "web-1"}) is None


@pytest.mark.parametrize("cgroup", [CGROUP_HOST, CGROUP_OTHER_HEX, None])
def test_not_in_a_container(tmp_path: Path, cgroup: str | None) -> None:
    paths = proc(tmp_path, cgroup, HOST_MOUNTINFO)
    assert own_container_id(**paths, environ={"HOSTNAME": "build-host"}) is None


def test_nothing_readable(tmp_path: Path) -> None:
    assert own_container_id(tmp_path / "nothing", environ={}, root=tmp_path / "nothing") is None


class ListingEngine:
    def __init__(self, listed: list[dict]) -> None:
        self.listed = listed

    async def list_containers(self, all: bool = False) -> list[dict]:
        return self.listed


def listed(cid: str, name: str) -> dict:
    return {"Id": cid, "Names": [f"/{name}"], "Image": "img", "State": "running", "Labels": {}}


@pytest.mark.parametrize("own", [ID, ID[:12]], ids=["full-id", "hostname-prefix"])
async def test_own_container_is_neither_followed_nor_reported(own: str) -> None:
    sent: list[Record] = []

    async def send(batch: list[Record]) -> None:
        sent.extend(batch)

    followers = FakeFollowers()
    engine = ListingEngine([listed(ID, "container-agent"), listed(OTHER, "web")])
    d = Discovery(engine, followers, send, ContainerFilter(), Backoff(0.1, 1), "h")  # type: ignore[arg-type]
    d.own = (own, "test")
    with capture_logs() as logs:
        await d._connect({"SystemTime": "2024-01-01T00:00:00Z"}, initial=True)
        await d._handle(event(ID, "die", 1_000))
        await d._handle(event(OTHER, "die", 1_001))
        await d.refollow()
    assert followers.followed == [OTHER, OTHER]
    assert [r.meta.id for r in sent] == [OTHER]
    assert ID not in d.inventory.containers
    [skipped] = [e for e in logs if e["event"] == "own_container_skipped"]  # logged once
    assert skipped["id"] == ID[:12] and skipped["container"] == "container-agent"


async def test_skip_own_container_false_follows_it() -> None:
    async def send(batch: list[Record]) -> None:
        pass

    followers = FakeFollowers()
    engine = ListingEngine([listed(ID, "container-agent")])
    d = Discovery(
        engine,  # type: ignore[arg-type]
        followers,  # type: ignore[arg-type]
        send,
        ContainerFilter(),
        Backoff(0.1, 1),
        "h",
        skip_own_container=False,
    )
    assert d.own is None
    await d._connect({"SystemTime": "2024-01-01T00:00:00Z"}, initial=True)
    assert followers.followed == [ID]
