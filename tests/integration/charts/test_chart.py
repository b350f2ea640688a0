"""The chart through helm lint, helm template and the real API server (server-side dry run)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from alpaca_operator.settings import OperatorSettings, load_settings
from chart_helpers import CHART, REPO, Documents, as_json_list, find, run

pytestmark = pytest.mark.integration

EXAMPLE_VALUES = REPO / "examples" / "alpaca-7b" / "helm" / "values.yaml"


def settings_of(documents: Documents, tmp_path: Path) -> OperatorSettings:
    """The settings file the chart renders, read by the operator's own loader (unknown fields fail)."""
    (config_map,) = find(documents, "ConfigMap")
    path = tmp_path / "settings.yaml"
    path.write_text(config_map["data"]["settings.yaml"])
    return load_settings(path)


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("values", [[], ["--set", "watchNamespaces={team-a}"], ["-f", str(EXAMPLE_VALUES)]])
def test_helm_lint(helm: str, kube_version: str, values: list[str]) -> None:
    out = run([helm, "lint", "--strict", str(CHART), "--kube-version", kube_version, *values])
    assert "0 chart(s) failed" in out


def test_default_render_watches_every_namespace(render: Callable[..., Documents], tmp_path: Path) -> None:
    documents = render()
    # Cluster-wide grants for the work; the only Role is the leader election's, in the release namespace.
    assert find(documents, "ClusterRole") and [r["metadata"]["name"] for r in find(documents, "Role")] == ["alpaca-alpaca-operator-leader-election"]
    (binding,) = find(documents, "ClusterRoleBinding")
    (account,) = find(documents, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "alpaca-system"}]
    (lease_role,) = find(documents, "Role")
    (deployment,) = find(documents, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and "strategy" not in deployment["spec"]  # rolling, safe with the lease
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    lease = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--lease="))
    assert lease_role["metadata"]["namespace"] == "alpaca-system"
    assert ("coordination.k8s.io", "leases", "create") in rules_of(lease_role)
    assert all(rule.get("resourceNames") == [lease] for rule in lease_role["rules"] if "create" not in rule["verbs"])
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    settings = settings_of(documents, tmp_path)
    assert settings.namespaces == []
    assert settings.images.train == "ghcr.io/alpaca-operator/train:0.1.0"
    assert settings.metrics_port == 9090 and settings.log_format == "json"
    assert {p["name"] for p in container["ports"]} == {"health", "metrics"}


def test_namespaced_render_uses_roles_only(render: Callable[..., Documents], tmp_path: Path) -> None:
    documents = render("--set", "watchNamespaces={team-a,team-b}")
    roles = [r for r in find(documents, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = [b for b in find(documents, "RoleBinding") if not b["metadata"]["name"].endswith("-leader-election")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    # The one cluster-wide grant left: reading CRDs, which are cluster-scoped.
    (cluster_role,) = find(documents, "ClusterRole")
    assert rules_of(cluster_role) == {("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("list", "watch")}
    assert not any(group == "coordination.k8s.io" for group, _, _ in rules_of(roles[0]))
    assert settings_of(documents, tmp_path).namespaces == ["team-a", "team-b"]

    strict = render("--set", "watchNamespaces={team-a}", "--set", "rbac.watchCRDs=false")
    assert not find(strict, "ClusterRole") and not find(strict, "ClusterRoleBinding")


def test_without_leader_election_the_single_replica_is_recreated(render: Callable[..., Documents], helm: str, kube_version: str) -> None:
    documents = render("--set", "leaderElection.enabled=false", "--set", "replicaCount=1")
    (deployment,) = find(documents, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not find(documents, "Role")
    with pytest.raises(AssertionError, match="replicaCount > 1 needs leaderElection"):
        run([helm, "template", "x", str(CHART), "--kube-version", kube_version, "--set", "leaderElection.enabled=false"])


def test_values_feed_the_operator_settings(render: Callable[..., Documents], tmp_path: Path) -> None:
    documents = render(
        "-f", str(EXAMPLE_VALUES),
        "--set", "workloads.images.train.tag=1.2.3", "--set", "settings.resyncSeconds=5", "--set", "metrics.enabled=false",
    )
    settings = settings_of(documents, tmp_path)
    example = yaml.safe_load(EXAMPLE_VALUES.read_text())
    assert settings.gpu_hour_usd == example["prices"]["gpuHourUSD"]
    pool = settings.gpu_pools["nvidia-a100-80gb"]
    assert pool.node_selector == example["gpuPools"]["nvidia-a100-80gb"]["nodeSelector"]
    assert pool.tolerations[0].key == "nvidia.com/gpu"
    assert settings.token_price("gpt-4.1-mini") is not None
    assert settings.images.train == "ghcr.io/alpaca-operator/train:1.2.3"
    assert settings.resync_seconds == 5
    assert settings.metrics_port == 0 and not find(documents, "Service")


def test_a_misspelt_setting_is_refused_by_the_operator(render: Callable[..., Documents], tmp_path: Path) -> None:
    documents = render("--set", "settings.resyncSecnds=5")
    with pytest.raises(ValueError, match="resyncSecnds: unknown field"):
        settings_of(documents, tmp_path)


def test_service_monitor_selects_the_metrics_service(render: Callable[..., Documents]) -> None:
    documents = render("--set", "metrics.serviceMonitor.enabled=true")
    (monitor,) = find(documents, "ServiceMonitor")
    (service,) = find(documents, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


@pytest.mark.usefixtures("chart_crds")
@pytest.mark.parametrize("variant", ["all-namespaces", "namespaced", "example"])
def test_rendered_chart_passes_server_side_dry_run(
    variant: str, render: Callable[..., Documents], kubectl: Callable[..., str], api_client: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    suffix = uuid.uuid4().hex[:8]
    release_namespace = f"alpaca-system-{suffix}"
    watched = [f"team-a-{suffix}", f"team-b-{suffix}"]
    for name in [release_namespace, *watched]:
        core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    args = {
        "all-namespaces": [],
        "namespaced": ["--set", "watchNamespaces={" + ",".join(watched) + "}"],
        "example": ["-f", str(EXAMPLE_VALUES)],
    }[variant]
    documents = render(*args, namespace=release_namespace, release=f"r{suffix}")
    out = kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", stdin=as_json_list(documents))
    applied = out.split()
    assert len(applied) == len(documents), out
    assert any(line.startswith("deployment.apps/") for line in applied)


@pytest.mark.usefixtures("chart_crds")
def test_helm_install_dry_run_against_the_cluster(helm: str, control_plane: Any, api_client: kubernetes.client.ApiClient) -> None:
    namespace = f"alpaca-system-{uuid.uuid4().hex[:8]}"
    kubernetes.client.CoreV1Api(api_client).create_namespace(
        kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=namespace))
    )
    out = run([
        helm, "install", "alpaca", str(CHART), "--namespace", namespace, "--dry-run=server",
        "--kubeconfig", control_plane.kubeconfig,
    ])
    # The chart's kubeVersion is checked against the live server, and NOTES render.
    assert "alpaca-operator 0.1.0 is installed" in out
    assert "never upgrades or deletes" in out


def test_teacher_hosts_and_lease_timing_reach_the_operator(render: Callable[..., Documents], tmp_path: Path) -> None:
    documents = render("--set", "teacherHosts.allowed={api.openai.com,*.example.com}", "--set", "leaderElection.leaseDurationSeconds=30")
    settings = settings_of(documents, tmp_path)
    assert settings.teacher_hosts.allowed == ["api.openai.com", "*.example.com"]
    assert settings.teacher_hosts.allow_link_local is False
    assert settings.leader_election.lease_duration_seconds == 30
