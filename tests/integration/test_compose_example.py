"""examples/compose/: every agent config passes ``container-agent check-config``, and the
compose file is checked by ``docker compose config`` (or ``docker-compose config``) for
each profile when either is installed.

Without them (Debian's docker.io has no compose v2, and docker-compose v1 is not installed
here) a structural check stands in: the compose specification's JSON schema is not
reachable offline, so the test checks what the example relies on itself: top-level keys,
every service has a tagged image, ports bind 127.0.0.1, named volumes and networks are
declared, bind-mounted files exist, each profile has one agent with its config and its
backend, the socket is mounted read-only, and the agent configs, Prometheus' target and
the published ports agree with each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "compose"
COMPOSE = EXAMPLE / "docker-compose.yml"
PROFILES = {  # profile: (agent service, backend service, agent config)
    "loki": ("agent-loki", "loki", "agent-loki.yaml"),
    "elasticsearch": ("agent-elasticsearch", "elasticsearch", "agent-elasticsearch.yaml"),
    "otlp": ("agent-otlp", "otel-collector", "agent-otlp.yaml"),
}
CONFIGS = sorted(EXAMPLE.glob("agent-*.yaml"))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def dotenv() -> dict[str, str]:
    pairs = {}
    for line in (EXAMPLE / ".env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def test_every_config_is_in_a_profile() -> None:
    assert [p.name for p in CONFIGS] == sorted(c for _, _, c in PROFILES.values())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_agent_config_passes_check_config(path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    out = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == f"{path}: OK"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_agent_config_matches_the_compose_file(profile: str) -> None:
    agent, backend, config_name = PROFILES[profile]
    services = compose()["services"]
    config = load(EXAMPLE / config_name)
    assert config.engine.host == "unix:///var/run/docker.sock"
    assert config.state_dir.startswith("/var/lib/container-agent/")  # on the volume
    [http] = [e for e in config.exporters.values() if e.type == "http"]
    [metrics] = [e for e in config.exporters.values() if e.type == "prometheus"]
    # The exporter names the backend's service, at a port the backend listens on.
    url = re.fullmatch(r"http://([^:/]+):(\d+)/?", http.url)  # type: ignore[attr-defined]
    assert url and url.group(1) == backend
    assert any(p.endswith(f":{url.group(2)}") for p in services[backend]["ports"])
    # Prometheus reaches the agent by its alias, at the port the config listens on.
    assert metrics.listen == "0.0.0.0:9811"  # type: ignore[attr-defined]
    prometheus = yaml.safe_load((EXAMPLE / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["agent:9811"]
    assert "agent" in services[agent]["networks"]["default"]["aliases"]
    assert "127.0.0.1:9811:9811" in services[agent]["ports"]
    assert f"./{config_name}:/etc/container-agent/config.yaml:ro" in services[agent]["volumes"]


def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1] if v1 else None


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_file(profile: str) -> None:
    command = _compose_command()
    if command is not None:
        out = subprocess.run(
            [*command, "-f", str(COMPOSE), "--profile", profile, "config", "-q"],
            cwd=EXAMPLE,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
    structural_check(compose(), profile)


def structural_check(doc: dict[str, Any], profile: str) -> None:
    assert set(doc) <= {"services", "volumes", "networks", "configs", "secrets"} | {
        k for k in doc if k.startswith("x-")
    }, "unknown top-level keys"
    services = doc["services"]
    volumes = set(doc.get("volumes") or {})
    networks = set(doc.get("networks") or {}) | {"default"}
    env = dotenv()
    text = COMPOSE.read_text()
    for var in re.findall(r"\$\{(\w+)(?::?-[^}]*)?\}", text):
        assert var in env or re.search(rf"\$\{{{var}:?-", text), f"${{{var}}}: no default"
    assert env["COMPOSE_PROFILES"] in PROFILES

    running = {
        name: s for name, s in services.items() if not s.get("profiles") or profile in s["profiles"]
    }
    agent, backend, _ = PROFILES[profile]
    assert {agent, backend, "prometheus"} <= set(running)
    assert [n for n in running if n.startswith("agent")] == [agent], "one agent per profile"
    for name, service in services.items():
        image = service.get("image")
        assert isinstance(image, str) and re.fullmatch(r"[\w./-]+:[\w.-]+", image), name
        for port in service.get("ports") or []:
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), (name, port)
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), (name, port)
        for mount in service.get("volumes") or []:
            source, target, *mode = mount.split(":")
            assert target.startswith("/"), (name, mount)
            if source.startswith("./"):
                assert (EXAMPLE / source).is_file(), f"{name}: {source} is not in the example"
                assert mode == ["ro"], f"{name}: bind-mounted files are read-only"
            elif not source.startswith("/"):
                assert source in volumes, f"{name}: volume {source} is not declared"
        attached = service.get("networks") or []
        assert set(attached) <= networks, name
        if "network_mode" in service:
            assert not attached, name
        for dependency in service.get("depends_on") or []:
            assert dependency in services, (name, dependency)
            assert set(services[dependency].get("profiles") or [profile]) >= set(
                service.get("profiles") or []
            ), f"{name} depends on {dependency}, which its profile does not start"
        if name.startswith("agent"):
            assert service["image"] == "container-agent:dev"
            assert "/var/run/docker.sock:/var/run/docker.sock:ro" in service["volumes"]
            assert "agent-state:/var/lib/container-agent" in service["volumes"]
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
            assert service["group_add"] == ["${DOCKER_GID:-999}"]
