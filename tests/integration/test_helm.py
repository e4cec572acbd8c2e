"""Tests of the Helm chart in helm/container-agent.

They run a real helm v3 binary (.tools/bin/helm, installed by scripts/install-helm.sh
when missing) offline: `helm lint` and `helm template` only, no cluster. Every values file
under helm/container-agent/ci/ is linted, rendered, checked against the Kubernetes OpenAPI
schemas shipped by the kubernetes-validate package, and its agent config is checked with
the agent's own validation. The PrometheusRule's expressions are checked, and its alerts
unit-tested, with promtool (Debian's prometheus package, `make tools`) when it is installed.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "container-agent"
HELM = REPO / ".tools" / "bin" / "helm"
INSTALL_SCRIPT = REPO / "scripts" / "install-helm.sh"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))

# A Kubernetes version kubernetes-validate ships schemas for (it has 1.x up to its
# own version; 1.31 matches the helm/kubectl bundle used by install-helm.sh).
K8S_VERSION = "1.31.0"
# Kinds defined by CRDs: kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
MONITORING = ("--api-versions", "monitoring.coreos.com/v1")
RELEASE = "agent"
NAMESPACE = "logging"
# The image's non-root user (Dockerfile: USER 10001).
IMAGE_UID = 10001
SCHEMA_ERROR = "values don't meet the specifications of the schema"

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


def template(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return helm(env, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


def render(env: dict[str, str], *args: str) -> list[Doc]:
    """`helm template` the chart with extra args; returns the parsed documents."""
    proc = template(env, *args)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


_ci_cache: dict[Path, list[Doc]] = {}


def render_ci(env: dict[str, str], values: Path) -> list[Doc]:
    """A ci/ values file rendered as a cluster with the Prometheus Operator would see it."""
    if values not in _ci_cache:
        _ci_cache[values] = render(env, "-f", str(values), *MONITORING)
    return _ci_cache[values]


def ci_values(values: Path) -> Doc:
    """The chart's values.yaml with a ci/ file on top (maps merged, null removes a key)."""

    def merge(base: Any, top: Any) -> Any:
        if isinstance(base, dict) and isinstance(top, dict):
            out = dict(base)
            for key, value in top.items():
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = merge(base.get(key), value)
            return out
        return top

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    return merge(defaults, yaml.safe_load(values.read_text()) or {})


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc.get("kind") == kind]


def one(docs: list[Doc], kind: str) -> Doc:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, got {len(found)}"
    return found[0]


def pod_spec(docs: list[Doc]) -> Doc:
    return one(docs, "DaemonSet")["spec"]["template"]["spec"]


def agent_container(docs: list[Doc]) -> Doc:
    containers = pod_spec(docs)["containers"]
    assert len(containers) == 1
    return containers[0]


def config_checksum(docs: list[Doc]) -> str:
    annotations = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    return annotations["checksum/config"]


def rendered_config(docs: list[Doc]) -> Doc:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["config.yaml"])


def host_path_volumes(docs: list[Doc]) -> dict[str, str]:
    """Volume name -> node path, for every hostPath volume of the pod."""
    return {v["name"]: v["hostPath"]["path"] for v in pod_spec(docs)["volumes"] if "hostPath" in v}


def check_crd_object(doc: Doc) -> None:
    """The little that can be checked of a CRD's object without its schema."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["name"] and doc["metadata"]["namespace"]
    for value in doc["metadata"].get("labels", {}).values():
        assert isinstance(value, str), doc["metadata"]
    if doc["kind"] == "PrometheusRule":
        for group in doc["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str) and rule["expr"].strip()
                for key in ("labels", "annotations"):
                    for value in rule.get(key, {}).values():
                        assert isinstance(value, str), rule


def validate_all(docs: list[Doc]) -> None:
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            check_crd_object(doc)
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


# -- every ci/ values file: lint, render, Kubernetes schemas, agent config, security -----

ci = pytest.mark.parametrize("values", CI_FILES, ids=[p.name for p in CI_FILES])


def test_ci_values_files_cover_the_variants() -> None:
    names = {p.name for p in CI_FILES}
    assert {
        "default-values.yaml",
        "files-mode-values.yaml",
        "monitoring-values.yaml",
        "http-secret-env-values.yaml",
    } <= names


def test_helm_lint(helm_env: dict[str, str]) -> None:
    proc = helm(helm_env, "lint", "--strict", str(CHART))
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}\n{proc.stderr}"


@ci
def test_ci_lint(helm_env: dict[str, str], values: Path) -> None:
    proc = helm(helm_env, "lint", "--strict", str(CHART), "-f", str(values))
    assert proc.returncode == 0, f"helm lint failed:\n{proc.stdout}\n{proc.stderr}"


@ci
def test_ci_render_passes_kubernetes_schemas(helm_env: dict[str, str], values: Path) -> None:
    docs = render_ci(helm_env, values)
    validate_all(docs)
    for doc in docs:
        assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


@ci
def test_ci_config_is_valid_for_the_agent_and_matches_the_mounts(
    helm_env: dict[str, str], values: Path, tmp_path: Path
) -> None:
    """The rendered config passes the agent's own validation (what `container-agent
    check-config` runs), and every path it names is mounted as it needs to be: the socket,
    the container directory and cgroups read-only where the sources use them, everything
    the agent writes on a writable volume (the root filesystem is read-only), relative
    paths resolved from the working directory."""
    from agent.config import load

    docs = render_ci(helm_env, values)
    path = tmp_path / "config.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["config.yaml"])
    config = load(path)

    container = agent_container(docs)
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    workdir = container["workingDir"]

    def mount_of(p: str) -> Doc | None:
        p = posixpath.normpath(posixpath.join(workdir, p))
        best = None
        for mount_path, mount in mounts.items():
            inside = p == mount_path or p.startswith(mount_path.rstrip("/") + "/")
            if inside and (best is None or len(mount_path) > len(best["mountPath"])):
                best = mount
        return best

    def assert_writable(p: str, what: str) -> None:
        mount = mount_of(p)
        assert mount is not None, f"{what} {p} is on the read-only root filesystem"
        assert not mount.get("readOnly", False), f"{what} {p} is on a read-only mount"
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or volume.get("hostPath", {}).get("type") != "Socket"

    assert config.engine.host.startswith("unix://")
    socket_mount = mounts[config.engine.host.removeprefix("unix://")]
    assert volumes[socket_mount["name"]]["hostPath"]["type"] == "Socket"

    if config.logs.source in ("files", "auto"):
        assert mounts[config.logs.containers_dir]["readOnly"] is True
    if config.stats.enabled and config.stats.source != "api":
        assert mounts[config.stats.cgroup_root]["readOnly"] is True

    assert_writable(config.state_dir, "state_dir")
    assert mount_of(config.state_dir)["name"] == "state"  # type: ignore[index]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name, exporter in config.exporters.items():
        if exporter.type == "file":
            assert_writable(exporter.path, f"exporters.{name}.path")
        elif exporter.type == "http":
            dead = exporter.dead_letter_path or f"./var/dead-letter/{name}.ndjson"
            assert_writable(dead, f"exporters.{name}.dead_letter_path")
            if exporter.tls.ca_file:
                assert mount_of(exporter.tls.ca_file), f"exporters.{name}.tls.ca_file not mounted"
        elif exporter.type == "prometheus":
            assert int(exporter.listen.rsplit(":", 1)[1]) == ports["metrics"]
            assert not exporter.listen.startswith("127."), "the Service and probes need it"


@ci
def test_ci_security_context(helm_env: dict[str, str], values: Path) -> None:
    """api mode: the image's non-root uid with the socket's group, nothing of the node
    but the socket (and the state directory); files mode: uid 0 and the container
    directory read-only. Both: no capability, read-only root, no escalation."""
    docs = render_ci(helm_env, values)
    vals = ci_values(values)
    pod = pod_spec(docs)
    container = agent_container(docs)
    sc = container["securityContext"]

    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostPID" not in pod and "hostNetwork" not in pod

    hostpaths = host_path_volumes(docs)
    expected = {"docker-socket"}
    if vals["state"]["type"] == "hostPath":
        expected.add("state")
    if vals["hostCgroup"]["enabled"]:
        expected.add("host-cgroup")
    if vals["mode"] == "files":
        assert sc["runAsUser"] == 0 and sc["runAsGroup"] == 0
        assert sc["runAsNonRoot"] is False
        expected.add("docker-containers")
        assert hostpaths["docker-containers"] == vals["containersDir"]["hostPath"]
        assert "supplementalGroups" not in pod.get("securityContext", {})
    else:
        assert vals["mode"] == "api"
        assert sc["runAsUser"] == IMAGE_UID and sc["runAsGroup"] == IMAGE_UID
        assert sc["runAsNonRoot"] is True
        gid = vals["engineSocket"]["groupId"]
        assert pod["securityContext"]["supplementalGroups"] == [gid]
        assert pod["securityContext"]["fsGroup"] == gid
    assert set(hostpaths) == expected
    writable_host = {
        m["name"] for m in container["volumeMounts"] if not m.get("readOnly", False)
    } & set(hostpaths)
    assert writable_host <= {"docker-socket", "state"}

    init = pod.get("initContainers", [])
    if vals["state"]["type"] != "hostPath":
        assert init == []
        return
    # The state directory's owner is set by a root init container that can do nothing
    # but chown.
    [chown] = init
    assert chown["command"] == [
        "chown",
        "-R",
        "-h",
        f"{sc['runAsUser']}:{sc['runAsGroup']}",
        vals["state"]["mountPath"],
    ]
    isc = chown["securityContext"]
    assert isc["runAsUser"] == 0
    assert isc["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert isc["readOnlyRootFilesystem"] is True
    assert isc["allowPrivilegeEscalation"] is False
    assert isc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert [m["name"] for m in chown["volumeMounts"]] == ["state"]


@ci
def test_ci_prometheus_operator_objects(helm_env: dict[str, str], values: Path) -> None:
    docs = render_ci(helm_env, values)
    vals = ci_values(values)
    want_sm = vals["serviceMonitor"]["enabled"] and vals["service"]["enabled"]
    assert len(by_kind(docs, "ServiceMonitor")) == (1 if want_sm else 0)
    assert len(by_kind(docs, "PrometheusRule")) == (1 if vals["prometheusRule"]["enabled"] else 0)


def test_files_mode_variant(helm_env: dict[str, str]) -> None:
    docs = render_ci(helm_env, CHART / "ci" / "files-mode-values.yaml")
    config = rendered_config(docs)
    assert config["logs"] == {
        "source": "auto",
        "start_at": "now",
        "containers_dir": "/host/var/lib/docker/containers",
    }
    assert config["stats"] == {"source": "auto", "cgroup_root": "/host/sys/fs/cgroup"}
    pod = pod_spec(docs)
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert host_path_volumes(docs)["docker-containers"] == "/data/docker/containers"


def test_http_secret_env_variant(helm_env: dict[str, str]) -> None:
    docs = render_ci(helm_env, CHART / "ci" / "http-secret-env-values.yaml")
    container = agent_container(docs)
    assert {
        "name": "ES_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "elasticsearch-credentials", "key": "password"}},
    } in container["env"]
    config = rendered_config(docs)
    assert set(config["exporters"]) == {"es", "metrics"}  # records: null removed it
    assert config["exporters"]["es"]["auth"]["basic"]["password_env"] == "ES_PASSWORD"
    # The secret itself is nowhere in the ConfigMap, only the variable's name.
    assert "password:" not in one(docs, "ConfigMap")["data"]["config.yaml"]
    pod = pod_spec(docs)
    state = next(v for v in pod["volumes"] if v["name"] == "state")
    assert state == {"name": "state", "emptyDir": {"sizeLimit": "2Gi"}}
    assert pod["securityContext"] == {"fsGroup": 998, "supplementalGroups": [998]}


# -- defaults --------------------------------------------------------------------------


def test_default_render_has_expected_objects(default_docs: list[Doc]) -> None:
    kinds = sorted(doc["kind"] for doc in default_docs)
    assert kinds == ["ConfigMap", "DaemonSet", "Service", "ServiceAccount"]


def test_validation_catches_an_invalid_manifest(default_docs: list[Doc]) -> None:
    # Guard against a validator that accepts anything.
    broken = yaml.safe_load(yaml.safe_dump(one(default_docs, "DaemonSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["notAField"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_configmap_holds_agent_config(default_docs: list[Doc]) -> None:
    config = rendered_config(default_docs)
    # api mode: everything through the Engine API, nothing of the node but the socket.
    assert config["engine"] == {"host": "unix:///var/run/docker.sock"}
    assert config["logs"] == {"source": "api"}
    assert config["stats"] == {"source": "api"}
    assert config["exporters"]["records"] == {
        "type": "file",
        "path": "/var/lib/container-agent/records.ndjson",
    }
    pod = pod_spec(default_docs)
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert config_volume["configMap"]["name"] == one(default_docs, "ConfigMap")["metadata"]["name"]


def test_daemonset_container(default_docs: list[Doc]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = agent_container(default_docs)
    assert container["image"] == f"container-agent:{chart['appVersion']}"
    assert container["args"] == ["run", "--config", "/etc/container-agent/config.yaml"]
    assert container["workingDir"] == "/var/lib/container-agent"
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


def test_probes_can_be_disabled(helm_env: dict[str, str]) -> None:
    container = agent_container(render(helm_env, "--set", "probes.enabled=false"))
    assert "livenessProbe" not in container and "readinessProbe" not in container


def test_default_mounts(default_docs: list[Doc]) -> None:
    volumes = {v["name"]: v for v in pod_spec(default_docs)["volumes"]}
    mounts = {m["mountPath"]: m for m in agent_container(default_docs)["volumeMounts"]}
    assert volumes[mounts["/var/run/docker.sock"]["name"]]["hostPath"] == {
        "path": "/var/run/docker.sock",
        "type": "Socket",
    }
    assert volumes[mounts["/var/lib/container-agent"]["name"]]["hostPath"] == {
        "path": "/var/lib/container-agent",
        "type": "DirectoryOrCreate",
    }
    assert mounts["/etc/container-agent"]["readOnly"] is True
    assert "/host/var/lib/docker/containers" not in mounts
    assert "/host/sys/fs/cgroup" not in mounts


def test_root_only_in_files_mode(helm_env: dict[str, str]) -> None:
    """The mode switch, not a securityContext edit, is what flips the uid."""
    api = agent_container(render(helm_env))["securityContext"]
    files = agent_container(render(helm_env, "--set", "mode=files"))["securityContext"]
    assert (api["runAsUser"], api["runAsNonRoot"]) == (IMAGE_UID, True)
    assert (files["runAsUser"], files["runAsNonRoot"]) == (0, False)
    assert {k: v for k, v in api.items() if not k.startswith("runAs")} == {
        k: v for k, v in files.items() if not k.startswith("runAs")
    }


def test_socket_group_is_configurable(helm_env: dict[str, str]) -> None:
    pod = pod_spec(
        render(
            helm_env,
            "--set",
            "engineSocket.groupId=0,podSecurityContext.supplementalGroups[0]=4242",
        )
    )
    assert pod["securityContext"] == {"fsGroup": 0, "supplementalGroups": [0, 4242]}
    pod = pod_spec(render(helm_env, "--set", "engineSocket.groupId=null"))
    assert "securityContext" not in pod


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
    assert pod_spec(default_docs)["serviceAccountName"] == sa["metadata"]["name"]


def test_config_change_changes_checksum(helm_env: dict[str, str], default_docs: list[Doc]) -> None:
    default = config_checksum(default_docs)
    assert default == config_checksum(render(helm_env)), "checksum is not deterministic"
    changed = render(
        helm_env, "--set", "config.exporters.records.path=/var/lib/container-agent/other.ndjson"
    )
    assert config_checksum(changed) != default
    # The mode changes the config too (logs.source), so it rolls the pods.
    assert config_checksum(render(helm_env, "--set", "mode=files")) != default
    # A change outside the config does not roll the pods.
    unrelated = render(helm_env, "--set", "resources.limits.memory=512Mi")
    assert config_checksum(unrelated) == default


# -- ServiceMonitor and PrometheusRule: only with the API and when enabled ---------------


@pytest.mark.parametrize("kind", ["ServiceMonitor", "PrometheusRule"])
def test_monitoring_objects_need_the_api_and_the_switch(
    helm_env: dict[str, str], kind: str
) -> None:
    switch = (
        "serviceMonitor.enabled=true" if kind == "ServiceMonitor" else "prometheusRule.enabled=true"
    )
    assert by_kind(render(helm_env, "--set", switch), kind) == []
    assert by_kind(render(helm_env, *MONITORING), kind) == []
    [obj] = by_kind(render(helm_env, "--set", switch, *MONITORING), kind)
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"


def test_service_monitor_selects_the_service(helm_env: dict[str, str]) -> None:
    docs = render(helm_env, "--set", "serviceMonitor.enabled=true", *MONITORING)
    sm = one(docs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    # The job label the rules' default selector expects.
    assert sm["spec"]["jobLabel"] == "app.kubernetes.io/instance"
    assert svc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


def prometheus_rule(helm_env: dict[str, str], *args: str) -> Doc:
    return one(
        render(helm_env, "--set", "prometheusRule.enabled=true", *MONITORING, *args),
        "PrometheusRule",
    )


def test_prometheus_rule_alerts(helm_env: dict[str, str]) -> None:
    rule = prometheus_rule(helm_env)
    [group] = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {
        "ContainerAgentDown",
        "ContainerAgentRecordsDropped",
        "ContainerAgentRecordsDeadLettered",
        "ContainerAgentLogReadLag",
        "ContainerAgentEngineDisconnected",
    }
    sel = f'job="{RELEASE}",namespace="{NAMESPACE}"'
    assert alerts["ContainerAgentDown"]["expr"] == f"up{{{sel}}} == 0 or absent(up{{{sel}}})"
    dropped = alerts["ContainerAgentRecordsDropped"]["expr"]
    assert f"increase(container_agent_records_dropped_total{{{sel}}}[5m]) > 0" in dropped
    assert alerts["ContainerAgentRecordsDeadLettered"]["expr"] == (
        f"increase(container_agent_exporter_dead_lettered_records_total{{{sel}}}[5m]) > 0"
    )
    lag = alerts["ContainerAgentLogReadLag"]["expr"]
    assert f"container_agent_log_read_lag_seconds{{{sel}}} > 600" in lag
    assert f"rate(container_log_lines_total{{{sel}}}[5m])) > 0" in lag
    assert alerts["ContainerAgentEngineDisconnected"]["expr"] == (
        f"container_agent_engine_connected{{{sel}}} == 0"
    )
    assert alerts["ContainerAgentEngineDisconnected"]["for"] == "1m"
    assert alerts["ContainerAgentDown"]["labels"] == {"severity": "critical"}


def test_prometheus_rule_values(helm_env: dict[str, str]) -> None:
    rule = prometheus_rule(
        helm_env,
        "--set",
        'prometheusRule.selector=job="container-agent"',
        "--set",
        "prometheusRule.alerts.logReadLag.thresholdSeconds=120,prometheusRule.alerts.logReadLag.recentLinesWindow=2m",
        "--set",
        "prometheusRule.alerts.deadLettered.enabled=false,prometheusRule.alerts.agentDown.for=3m",
        "--set",
        "prometheusRule.additionalAlertLabels.team=platform",
    )
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert "ContainerAgentRecordsDeadLettered" not in alerts
    assert alerts["ContainerAgentDown"]["for"] == "3m"
    assert alerts["ContainerAgentDown"]["expr"].startswith('up{job="container-agent"} == 0')
    lag = alerts["ContainerAgentLogReadLag"]["expr"]
    assert "> 120" in lag and "[2m]" in lag
    assert all(a["labels"]["team"] == "platform" for a in alerts.values())


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: `make tools`)")
    return path


def _rule_groups(docs: list[Doc]) -> list[Doc]:
    return typing.cast(list[Doc], one(docs, "PrometheusRule")["spec"]["groups"])


@pytest.mark.parametrize(
    "values",
    [None, *(p for p in CI_FILES if ci_values(p)["prometheusRule"]["enabled"])],
    ids=lambda p: "all-alerts" if p is None else p.name,
)
def test_prometheus_rule_expressions_parse(
    helm_env: dict[str, str], values: Path | None, tmp_path: Path
) -> None:
    """`promtool check rules` on the rendered groups: every expression parses, every
    duration and annotation template is valid."""
    promtool = _promtool()
    docs = (
        render(helm_env, "--set", "prometheusRule.enabled=true", *MONITORING)
        if values is None
        else render_ci(helm_env, values)
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups(docs)}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}"
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_prometheus_rule_alerts_fire_when_they_should(
    helm_env: dict[str, str], tmp_path: Path
) -> None:
    """`promtool test rules` with the default values: each alert fires on the series it
    is about, and the lag alert not for a container that is merely quiet."""
    promtool = _promtool()
    groups = _rule_groups(render(helm_env, "--set", "prometheusRule.enabled=true", *MONITORING))
    for group in groups:  # annotations are checked by check rules; compare labels only
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))

    target = {
        "job": RELEASE,
        "namespace": NAMESPACE,
        "pod": "agent-x1",
        "instance": "10.0.0.1:9811",
    }

    def series(metric: str, values: str, /, **labels: str) -> Doc:
        inner = ",".join(f'{k}="{v}"' for k, v in {**target, **labels}.items())
        return {"series": f"{metric}{{{inner}}}", "values": values}

    def alert(**labels: str) -> Doc:
        return {"exp_labels": {**target, **labels}}

    busy = {"id": "/docker/busy", "name": "busy", "image": "app"}
    quiet = {"id": "/docker/quiet", "name": "quiet", "image": "app"}
    prompt = {"id": "/docker/prompt", "name": "prompt", "image": "app"}
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("up", "1 1 0x20"),
                    series("container_agent_engine_connected", "1 1 0x20"),
                    series(
                        "container_agent_exporter_dead_lettered_records_total",
                        "0 0 0 10x20",
                        exporter="loki",
                    ),
                    series(
                        "container_agent_records_dropped_total",
                        "0x22",
                        exporter="loki",
                        reason="queue_full",
                    ),
                    # A series that appears with drops already counted: increase() alone
                    # would miss it.
                    series(
                        "container_agent_records_dropped_total",
                        "_x4 7x20",
                        exporter="loki",
                        reason="buffer_full",
                    ),
                    # Behind: writing, and its lines are 700 s old when delivered.
                    series("container_agent_log_read_lag_seconds", "700x40", **busy),
                    series("container_log_lines_total", "0+100x40", stream="stdout", **busy),
                    series("container_log_lines_total", "0x40", stream="stderr", **busy),
                    # Quiet: its lag grows by 60 s a minute, but it writes nothing.
                    series("container_agent_log_read_lag_seconds", "0+60x40", **quiet),
                    series("container_log_lines_total", "5x40", stream="stdout", **quiet),
                    # Writing and read promptly.
                    series("container_agent_log_read_lag_seconds", "1x40", **prompt),
                    series("container_log_lines_total", "0+100x40", stream="stdout", **prompt),
                ],
                "alert_rule_test": [
                    {"eval_time": "5m", "alertname": "ContainerAgentDown", "exp_alerts": []},
                    {
                        "eval_time": "8m",
                        "alertname": "ContainerAgentDown",
                        "exp_alerts": [alert(severity="critical")],
                    },
                    {
                        "eval_time": "2m",
                        "alertname": "ContainerAgentEngineDisconnected",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "ContainerAgentEngineDisconnected",
                        "exp_alerts": [alert(severity="critical")],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "ContainerAgentRecordsDeadLettered",
                        "exp_alerts": [alert(severity="warning", exporter="loki")],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "ContainerAgentRecordsDeadLettered",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "ContainerAgentRecordsDropped",
                        "exp_alerts": [
                            alert(severity="warning", exporter="loki", reason="buffer_full")
                        ],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "ContainerAgentRecordsDropped",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "8m",
                        "alertname": "ContainerAgentLogReadLag",
                        "exp_alerts": [],  # not for 10m yet
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "ContainerAgentLogReadLag",
                        "exp_alerts": [alert(severity="warning", **busy)],
                    },
                    {
                        "eval_time": "35m",
                        "alertname": "ContainerAgentLogReadLag",
                        "exp_alerts": [alert(severity="warning", **busy)],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [],
                "alert_rule_test": [
                    {
                        "eval_time": "6m",
                        "alertname": "ContainerAgentDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "job": RELEASE,
                                    "namespace": NAMESPACE,
                                    "severity": "critical",
                                }
                            }
                        ],
                    }
                ],
            },
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"promtool test rules failed:\n{proc.stdout}\n{proc.stderr}"


# -- values.schema.json ------------------------------------------------------------------


def _schema() -> Doc:
    return typing.cast(Doc, json.loads((CHART / "values.schema.json").read_text()))


def test_schema_is_draft_07_and_accepts_the_defaults() -> None:
    schema = _schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    for values in CI_FILES:
        jsonschema.Draft7Validator(schema).validate(ci_values(values))


def test_schema_config_matches_the_agent() -> None:
    """The schema's `config` lists exactly the agent's keys and choices, so neither can
    drift: a key added to agent/config.py needs a line in the schema."""
    from pydantic import BaseModel

    import exporters
    from agent.config import Config
    from exporters.base import REGISTRY

    config = _schema()["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(Config.model_fields)
    for name, field in Config.model_fields.items():
        model = field.annotation
        if name == "containers" or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        section = config["properties"][name]
        assert section["additionalProperties"] is False, name
        assert set(section["properties"]) == set(model.model_fields), name
        for key, sub in model.model_fields.items():
            if typing.get_origin(sub.annotation) is typing.Literal:
                assert section["properties"][key]["enum"] == list(
                    typing.get_args(sub.annotation)
                ), f"config.{name}.{key}"
    exporters.load_all()
    types = config["properties"]["exporters"]["additionalProperties"]["properties"]["type"]
    assert sorted(types["enum"]) == sorted(REGISTRY)


# Maps whose schema lists more keys than values.yaml sets: the agent's config and
# Kubernetes objects passed through.
PASSTHROUGH = {"config", "securityContext", "resources", "state.initChown.resources"}


def test_schema_and_values_have_the_same_keys() -> None:
    """Every map of the chart's own values has the same keys in values.yaml (where each is
    documented) and in the schema (closed): a key added to one needs the other."""
    schema = _schema()

    def walk(node: Doc, values: Doc, path: str) -> None:
        props = set(node["properties"]) - {"global"}
        if path not in PASSTHROUGH:
            assert set(values) == props, path or "(root)"
        for key, value in values.items():
            sub = node["properties"][key]
            child = f"{path}.{key}".lstrip(".")
            if isinstance(value, dict) and "properties" in sub and child not in PASSTHROUGH:
                assert sub.get("additionalProperties") is False, child
                walk(sub, value, child)

    walk(schema, yaml.safe_load((CHART / "values.yaml").read_text()), "")


BAD_VALUES = [
    pytest.param(
        {"mode": "sidecar"}, 'mode: mode must be one of the following: "api", "files"', id="mode"
    ),
    pytest.param(
        {"config": {"logs": {"source": "journald"}}},
        "config.logs.source: config.logs.source must be one of the following: "
        '"auto", "api", "files"',
        id="logs-source",
    ),
    pytest.param(
        {"config": {"logs": {"sorce": "api"}}},
        "config.logs: Additional property sorce is not allowed",
        id="config-typo",
    ),
    pytest.param(
        {"hostPaths": []},
        "(root): Additional property hostPaths is not allowed",
        id="removed-0.1-key",
    ),
    pytest.param(
        {"config": {"exporters": {"out": {"path": "/tmp/x"}}}},
        "config.exporters.out: type is required",
        id="exporter-without-type",
    ),
    pytest.param(
        {"config": {"exporters": {"out": {"type": "kafka"}}}},
        "config.exporters.out.type: config.exporters.out.type must be one of the following",
        id="exporter-type",
    ),
    pytest.param(
        {"securityContext": {"runAsUser": "root"}},
        "securityContext.runAsUser: Invalid type. Expected: integer, given: string",
        id="uid-type",
    ),
    pytest.param(
        {"securityContext": {"runAsUser": 0}},
        "securityContext.runAsUser: Must be greater than or equal to 1",
        id="root-with-runAsNonRoot",
    ),
    pytest.param(
        {"engineSocket": {"groupId": "docker"}},
        "engineSocket.groupId: Invalid type. Expected: [integer,null], given: string",
        id="gid-type",
    ),
    pytest.param(
        {"state": {"type": "pvc"}},
        'state.type: state.type must be one of the following: "hostPath", "emptyDir"',
        id="state-type",
    ),
    pytest.param(
        {"service": {"port": 70000}}, "service.port: Must be less than or equal to 65535", id="port"
    ),
    pytest.param(
        {"prometheusRule": {"alerts": {"engineDisconnected": {"for": "one minute"}}}},
        "prometheusRule.alerts.engineDisconnected.for: Does not match pattern",
        id="duration",
    ),
    pytest.param(
        {"extraHostPaths": [{"name": "proc", "hostPath": "/proc"}]},
        "extraHostPaths.0: mountPath is required",
        id="hostpath-shape",
    ),
]


@pytest.mark.parametrize(("values", "error"), BAD_VALUES)
def test_bad_values_fail_with_a_schema_error(
    helm_env: dict[str, str], tmp_path: Path, values: Doc, error: str
) -> None:
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    for proc in (
        template(helm_env, "-f", str(path)),
        helm(helm_env, "lint", "--strict", str(CHART), "-f", str(path)),
    ):
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"accepted: {values}"
        assert SCHEMA_ERROR in out, out
        assert error in out, out


BAD_COMBINATIONS = [
    pytest.param(
        {"config": {"logs": {"source": "files"}}},
        'config.logs.source is "files" but mode is api',
        id="files-source-in-api-mode",
    ),
    pytest.param(
        {"mode": "files", "config": {"logs": {"source": "api"}}},
        'config.logs.source is "api" but mode is files',
        id="api-source-in-files-mode",
    ),
    pytest.param(
        {"config": {"stats": {"source": "cgroup"}}},
        'config.stats.source is "cgroup" but hostCgroup.enabled is false',
        id="cgroup-without-mount",
    ),
    pytest.param(
        {
            "prometheusRule": {
                "enabled": True,
                "alerts": {"logReadLag": {"thresholdSeconds": 60, "recentLinesWindow": "5m"}},
            }
        },
        "recentLinesWindow (5m) must not be longer than thresholdSeconds (60)",
        id="lag-window-longer-than-threshold",
    ),
]


@pytest.mark.parametrize(("values", "error"), BAD_COMBINATIONS)
def test_values_the_pod_cannot_serve_fail(
    helm_env: dict[str, str], tmp_path: Path, values: Doc, error: str
) -> None:
    """Combinations the schema cannot see, refused by the templates with the fix."""
    path = tmp_path / "bad-values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = template(helm_env, "-f", str(path), *MONITORING)
    assert proc.returncode != 0, f"accepted: {values}"
    assert error in proc.stderr, proc.stderr
