"""Tests of the Helm chart in helm/container-agent.

They run a real helm v3 binary (.tools/bin/helm, installed by scripts/install-helm.sh
when missing) offline: `helm lint` and `helm template` only, no cluster. Rendered
manifests are checked against the Kubernetes OpenAPI schemas shipped by the
kubernetes-validate package.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "container-agent"
HELM = REPO / ".tools" / "bin" / "helm"
INSTALL_SCRIPT = REPO / "scripts" / "install-helm.sh"

# A Kubernetes version kubernetes-validate ships schemas for (it has 1.x up to its
# own version; 1.31 matches the helm/kubectl bundle used by install-helm.sh).
K8S_VERSION = "1.31.0"
# Kinds defined by CRDs: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor"}
RELEASE = "agent"
NAMESPACE = "logging"

Doc = dict[str, Any]


def _helm_works() -> bool:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        return False
    try:
        proc = subprocess.run(
            [str(HELM), "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return False
    return proc.returncode == 0 and proc.stdout.startswith("v3.")


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for helm: installs helm if needed, isolates its home dirs."""
    if not _helm_works():
        proc = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0 or not _helm_works():
            pytest.fail(
                f"helm v3 is not available at {HELM} and {INSTALL_SCRIPT} could not install "
                f"it (exit {proc.returncode}). It needs npm and access to the npm registry.\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}",
                pytrace=False,
            )
    home = tmp_path_factory.mktemp("helm-home")
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_DATA_HOME=str(home / "data"),
        # helm template/lint never need a cluster; make sure none is picked up.
        KUBECONFIG=str(home / "no-kubeconfig"),
    )
    return env


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, env=env, timeout=60)


def render(env: dict[str, str], *args: str) -> list[Doc]:
    """`helm template` the chart with extra args; returns the parsed documents."""
    proc = helm(env, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
    return found[0]


def agent_container(docs: list[Doc]) -> Doc:
    containers = one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_checksum(docs: list[Doc]) -> str:
    annotations = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


def validate_all(docs: list[Doc]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes "
                f"{K8S_VERSION}: {exc}",
                pytrace=False,
            )


@pytest.fixture(scope="module")
def default_docs(helm_env: dict[str, str]) -> list[Doc]:
    return render(helm_env)


def test_helm_lint(helm_env: dict[str, str]) -> None:
    proc = helm(helm_env, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}\n{proc.stderr}"


def test_lint_with_everything_enabled(helm_env: dict[str, str]) -> None:
    proc = helm(
        helm_env,
        "lint",
        "--strict",
        str(CHART),
        "--set",
        "probes.enabled=true,serviceMonitor.enabled=true,state.type=emptyDir",
    )
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}\n{proc.stderr}"


def test_default_render_has_expected_objects(default_docs: list[Doc]) -> None:
    kinds = sorted(doc["kind"] for doc in default_docs)
    assert kinds == ["ConfigMap", "DaemonSet", "Service", "ServiceAccount"]
    for doc in default_docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_default_render_passes_kubernetes_schemas(default_docs: list[Doc]) -> None:
    validate_all(default_docs)


def test_validation_catches_an_invalid_manifest(default_docs: list[Doc]) -> None:
    # Guard against a validator that accepts anything.
    broken = yaml.safe_load(yaml.safe_dump(one(default_docs, "DaemonSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["notAField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_non_default_renders_pass_kubernetes_schemas(helm_env: dict[str, str]) -> None:
    docs = render(
        helm_env,
        "--set",
        "probes.enabled=true,state.type=emptyDir,state.emptyDir.sizeLimit=1Gi",
        "--set",
        "priorityClassName=system-node-critical,tolerations[0].operator=Exists",
        "--set",
        "serviceMonitor.enabled=true,image.tag=9.9.9",
        "--api-versions",
        "monitoring.coreos.com/v1",
    )
    validate_all(docs)
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "emptyDir": {"sizeLimit": "1Gi"}}
    assert agent_container(docs)["image"] == "container-agent:9.9.9"


def test_configmap_holds_agent_config(default_docs: list[Doc]) -> None:
    cm = one(default_docs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["engine"]["host"] == "unix:///var/run/docker.sock"
    assert "exporters" in config
    assert config["exporters"]["records"] == {
        "type": "file",
        "path": "/var/lib/container-agent/records.ndjson",
    }
    pod = one(default_docs, "DaemonSet")["spec"]["template"]["spec"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == cm["metadata"]["name"]


def test_chart_config_is_valid_for_the_agent_and_matches_the_mounts(
    default_docs: list[Doc], tmp_path: Path
) -> None:
    """The chart's default config passes the agent's own validation (check-config), and
    every host path it names is mounted into the container."""
    from agent.config import load

    cm = one(default_docs, "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(cm["data"]["config.yaml"])
    config = load(path)
    mounts = {m["mountPath"]: m for m in agent_container(default_docs)["volumeMounts"]}
    assert mounts[config.logs.containers_dir]["readOnly"] is True
    assert mounts[config.stats.cgroup_root]["readOnly"] is True
    assert config.state_dir.startswith("/var/lib/container-agent")
    assert config.exporters["metrics"].listen.endswith(":9811")


def test_daemonset_container(default_docs: list[Doc]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = agent_container(default_docs)
    assert container["image"] == f"container-agent:{chart['appVersion']}"
    assert container["args"] == ["run", "--config", "/etc/container-agent/config.yaml"]
    assert {
        "name": "CONTAINER_AGENT_HOSTNAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    } in container["env"]
    assert {"name": "metrics", "containerPort": 9811, "protocol": "TCP"} in container["ports"]
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }
    # Probes are on by default: the default config serves /healthz and /readyz.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_probes_when_enabled(helm_env: dict[str, str]) -> None:
    container = agent_container(render(helm_env, "--set", "probes.enabled=true"))
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_container_security_context_is_hardened(default_docs: list[Doc]) -> None:
    sc = agent_container(default_docs)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "add" not in sc["capabilities"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsUser"] == 0  # the engine socket is root-owned
    assert sc.get("privileged", False) is False


def test_host_mounts(default_docs: list[Doc]) -> None:
    pod = one(default_docs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent_container(default_docs)["volumeMounts"]}

    containers_mount = mounts["/host/var/lib/docker/containers"]
    assert containers_mount["readOnly"] is True
    assert volumes[containers_mount["name"]]["hostPath"]["path"] == "/var/lib/docker/containers"

    socket_mount = mounts["/var/run/docker.sock"]
    assert volumes[socket_mount["name"]]["hostPath"] == {
        "path": "/var/run/docker.sock",
        "type": "Socket",
    }

    state_mount = mounts["/var/lib/container-agent"]
    assert volumes[state_mount["name"]]["hostPath"]["path"] == "/var/lib/container-agent"

    assert mounts["/etc/container-agent"]["readOnly"] is True


def test_service_exposes_metrics(default_docs: list[Doc]) -> None:
    svc = one(default_docs, "Service")
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9811, "targetPort": "metrics", "protocol": "TCP"}
    ]
    ds = one(default_docs, "DaemonSet")
    assert svc["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]


def test_service_can_be_disabled(helm_env: dict[str, str]) -> None:
    assert by_kind(render(helm_env, "--set", "service.enabled=false"), "Service") == []


def test_service_account_is_used(default_docs: list[Doc]) -> None:
    sa = one(default_docs, "ServiceAccount")
    pod = one(default_docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_config_change_changes_checksum(helm_env: dict[str, str], default_docs: list[Doc]) -> None:
    default = config_checksum(default_docs)
    assert default == config_checksum(render(helm_env)), "checksum is not deterministic"
    changed = render(
        helm_env, "--set", "config.exporters.records.path=/var/lib/container-agent/other.ndjson"
    )
    assert config_checksum(changed) != default
    # A change outside the config does not roll the pods.
    unrelated = render(helm_env, "--set", "resources.limits.memory=512Mi")
    assert config_checksum(unrelated) == default


def test_service_monitor_absent_by_default(default_docs: list[Doc]) -> None:
    assert by_kind(default_docs, "ServiceMonitor") == []


def test_service_monitor_absent_without_api_version(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "serviceMonitor.enabled=true")
    assert by_kind(docs, "ServiceMonitor") == []


def test_service_monitor_absent_when_disabled_even_with_api_version(
    helm_env: dict[str, str],
) -> None:
    docs = render(helm_env, "--api-versions", "monitoring.coreos.com/v1")
    assert by_kind(docs, "ServiceMonitor") == []


def test_service_monitor_present_with_api_version(helm_env: dict[str, str]) -> None:
    docs = render(
        helm_env,
        "--set",
        "serviceMonitor.enabled=true",
        "--api-versions",
        "monitoring.coreos.com/v1",
    )
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
