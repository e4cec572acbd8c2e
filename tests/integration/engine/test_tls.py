"""A real dockerd listening with --tlsverify on 127.0.0.1: the agent follows a container's
logs and events over TLS, and a wrong CA is one clear line and exit 2 at start.

The engine is this module's own (its data root, exec root, pidfile and a unix socket for
the test's own calls under a short /tmp directory), started here with the certificates the
test makes (tests/unit/engine/tls_certs.py) and stopped in teardown; the busybox image is
copied into it from the test engine with ``docker save | docker load``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import orjson
import pytest

from agent.engine.client import Engine
from tests.integration.conftest import IMAGE, Containers
from tests.unit.engine.tls_certs import Certs, make_certs


@dataclass(frozen=True)
class TlsEngine:
    host: str  # tcp://127.0.0.1:<port>, TLS only
    socket: str  # unix://…: the test's own way in (no TLS), to run containers
    certs: Certs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _docker(host: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = host
    return subprocess.run(["docker", *args], env=env, capture_output=True, **kwargs)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def tls_engine(engine_host: str) -> Iterator[TlsEngine]:
    if shutil.which("dockerd") is None:
        pytest.skip("dockerd is not installed (scripts/test-engine.sh installs it)")
    directory = Path(tempfile.mkdtemp(prefix="ca-tls-", dir="/tmp"))  # short: socket paths
    certs = make_certs(directory / "certs")
    port = _free_port()
    unix = f"unix://{directory}/docker.sock"
    log = (directory / "dockerd.log").open("ab")
    proc = subprocess.Popen(
        [
            "dockerd",
            "--data-root", str(directory / "data"),
            "--exec-root", str(directory / "exec"),
            "--pidfile", str(directory / "dockerd.pid"),
            "-H", unix,
            "-H", f"tcp://127.0.0.1:{port}",
            "--tlsverify",
            "--tlscacert", str(certs.ca),
            "--tlscert", str(certs.server_cert),
            "--tlskey", str(certs.server_key),
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--log-level", "warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _docker(unix, "version", timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (directory / "dockerd.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the TLS engine did not start; its log:\n{tail}")
            time.sleep(0.1)
        saved = _docker(engine_host, "save", IMAGE, timeout=60, check=True).stdout
        _docker(unix, "load", input=saved, timeout=60, check=True)
        yield TlsEngine(f"tcp://127.0.0.1:{port}", unix, certs)
    finally:
        ids = _docker(unix, "ps", "-aq", timeout=30).stdout.split()
        if ids:
            _docker(unix, "rm", "-f", *(i.decode() for i in ids), timeout=60)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


def tls_config(certs: Certs, ca: Path | None = None) -> dict[str, object]:
    return {
        "verify": True,
        "ca_file": str(ca or certs.ca),
        "cert_file": str(certs.client_cert),
        "key_file": str(certs.client_key),
    }


async def test_logs_and_events_over_tls(start_agent, containers, tls_engine: TlsEngine) -> None:
    docker = aiodocker.Docker(url=tls_engine.socket)
    mine = Containers(docker, containers.run_id)
    try:
        agent = await start_agent(
            host=tls_engine.host, engine={"tls": tls_config(tls_engine.certs)}
        )
        assert agent.runtime.engine.secure
        busy = await mine.run(
            "i=0; while [ $i -lt 50 ]; do echo out $i; echo err $i >&2; i=$((i+1)); "
            "usleep 20000; done"
        )
        await agent.wait_for(lambda: len(agent.logs(busy)) >= 10, what="lines while it runs")
        assert await mine.wait(busy) == 0
        await agent.wait_for(
            lambda: {"start", "die"} <= {e["action"] for e in agent.events(busy)},
            what="the start and die events",
        )
        await agent.wait_for(lambda: len(agent.logs(busy)) >= 100, what="every line")
        logs = agent.logs(busy)
        for stream, word in (("stdout", "out"), ("stderr", "err")):
            got = [r["message"] for r in logs if r["stream"] == stream]
            assert got == [f"{word} {i}" for i in range(50)]
        assert await agent.stop() == 0
    finally:
        await mine.remove_all()
        await docker.close()


async def test_the_docker_cli_environment_reaches_it(
    tls_engine: TlsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem), as
    the docker command takes them, do for the agent too."""
    env = {
        "DOCKER_HOST": tls_engine.host,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tls_engine.certs.directory),
    }
    cli = await asyncio.to_thread(
        subprocess.run,
        ["docker", "version", "--format", "{{.Server.APIVersion}}"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    engine = Engine(tls_engine.host)
    try:
        assert (await engine.version())["ApiVersion"] == cli.stdout.strip()
        assert isinstance(await engine.list_containers(all=True), list)
    finally:
        await engine.close()


def test_a_wrong_ca_is_one_clear_line_and_exit_2(tls_engine: TlsEngine, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        orjson.dumps(
            {
                "engine": {
                    "host": tls_engine.host,
                    "tls": tls_config(tls_engine.certs, ca=tls_engine.certs.wrong_ca),
                },
                "state_dir": str(tmp_path / "state"),
                "exporters": {"records": {"type": "file", "path": str(tmp_path / "r.ndjson")}},
            }
        ).decode()  # JSON is YAML
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    out = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
    )
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    [line] = out.stderr.strip().splitlines()
    event = orjson.loads(line)
    assert event["event"] == "engine_unreachable"
    assert event["host"] == tls_engine.host
    assert event["error"].startswith("GET /version: the engine's certificate was not accepted: ")
    assert "unable to get local issuer certificate" in event["error"]
    assert f"ca_file={tls_engine.certs.wrong_ca}" in event["error"]
