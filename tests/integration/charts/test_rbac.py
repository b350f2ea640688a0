"""The chart's RBAC is enough and no broader.

The operator runs as deployed: the chart rendered and applied, its settings file, the Lease, and the
chart ServiceAccount's token (not admin credentials). It takes a dataset -> fine-tune -> server
chain through a full reconcile while the test plays the Job and PyTorchJob controllers and the
workloads. The API server's audit log then says what the ServiceAccount did: no request may have
been forbidden, and every permission the chart grants must have been used, save a few named below
with the code path that needs them. No broader: a SubjectAccessReview per dangerous verb.
"""

from __future__ import annotations

import functools
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from alpaca_operator.runner import OperatorThread, wire
from alpaca_operator.settings import load_settings
from alpaca_operator.testing.controlplane import ControlPlane
from chart_helpers import CHART, REPO, Documents, as_json_list, find, run
from support.cluster import audited_control_plane
from support.cluster import wait_for as support_wait_for

pytestmark = pytest.mark.integration

RELEASE_NAMESPACE = "alpaca-system"
Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted, but this chain need not exercise them: each with the code path that needs it.
NOT_EXERCISED: dict[Permission, str] = {
    ("kubeflow.org", "pytorchjobs", "patch"): "a FineTune out of budget before its deadline suspends the PyTorchJob",
    ("alpaca.dev", "instructdatasets/status", "get"): "held only to grant it to the workload Role",
    ("alpaca.dev", "finetunes/status", "get"): "held only to grant it to the workload Role",
    ("alpaca.dev", "modelservers/status", "get"): "held only to grant it to the workload Role",
    ("alpaca.dev", "evaluations/status", "get"): "held only to grant it to the workload Role",
    ("rbac.authorization.k8s.io", "roles", "create"): "server-side apply creates a missing Role: checked inside the PATCH, audited as patch",
    ("batch", "jobs", "get"): "a restarted operator reads back a Job that already exists",
    ("networking.k8s.io", "networkpolicies", "create"): "a ModelServer with spec.networkPolicy (applied: audited as patch)",
    ("networking.k8s.io", "networkpolicies", "patch"): "a ModelServer with spec.networkPolicy",
    ("", "services", "create"): "server-side apply creates a missing Service: checked inside the PATCH, audited as patch",
    ("apps", "deployments", "create"): "server-side apply creates a missing Deployment: checked inside the PATCH, audited as patch",
    ("autoscaling", "horizontalpodautoscalers", "create"): "server-side apply creates a missing HPA: checked inside the PATCH, audited as patch",
    ("kubeflow.org", "pytorchjobs", "get"): "a restarted operator reads back a PyTorchJob that already exists",
    ("trainer.kubeflow.org", "trainjobs", "create"): "a FineTune with backend: trainjob (tests/integration/operator/test_finetune_trainjob.py)",
    ("trainer.kubeflow.org", "trainjobs", "get"): "a restarted operator reads back a TrainJob that already exists",
    ("trainer.kubeflow.org", "trainjobs", "patch"): "a FineTune on a TrainJob out of budget before its deadline suspends it",
    ("trainer.kubeflow.org", "trainjobs", "list"): "kopf and the cache priming list TrainJobs where Trainer v2 is installed",
    ("trainer.kubeflow.org", "trainjobs", "watch"): "kopf watches TrainJobs where Trainer v2 is installed",
    ("apps", "deployments", "get"): "a restarted operator reads back a Deployment that already exists",
}


wait_for = functools.partial(support_wait_for, timeout=30.0, interval=0.2)


def _now_minus(seconds: float) -> str:
    return (datetime.now(timezone.utc) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Path]]:
    """A control plane of its own, auditing every request's metadata to a file."""
    with audited_control_plane(tmp_path_factory.mktemp("audit")) as (cp, log):
        yield cp, log


def _kubectl(cp: ControlPlane, *args: str, stdin: str | None = None) -> str:
    assert cp.assets_dir is not None
    return run([str(cp.assets_dir / "kubectl"), f"--kubeconfig={cp.kubeconfig}", *args], input=stdin)


def _install(cp: ControlPlane, helm: str, kube_version: str) -> Documents:
    for folder in (CHART / "crds", REPO / "tests" / "integration" / "crds"):
        _kubectl(cp, "apply", "--server-side", "-f", str(folder))
        _kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(folder))
    _kubectl(cp, "create", "namespace", RELEASE_NAMESPACE)
    out = run([
        helm, "template", "alpaca", str(CHART), "--namespace", RELEASE_NAMESPACE, "--kube-version", kube_version,
        "--set", "settings.resyncSeconds=0.5", "--set", "settings.costIntervalSeconds=1", "--set", "settings.workers=4",
        "--set", "prices.gpuHourUSD.nvidia-a100-80gb=2.0",
    ])
    documents = [d for d in yaml.safe_load_all(out) if d]
    _kubectl(cp, "apply", "-f", "-", stdin=as_json_list(documents))
    return documents


def _play_the_chain(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    custom = kubernetes.client.CustomObjectsApi(api_client)
    batch = kubernetes.client.BatchV1Api(api_client)
    apps = kubernetes.client.AppsV1Api(api_client)

    def create(plural: str, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": "alpaca.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        custom.create_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, plural, body)

    def status(plural: str, name: str) -> dict[str, Any]:
        return custom.get_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, plural, name).get("status") or {}

    create("instructdatasets", "InstructDataset", "data", {
        "teacher": {"baseURL": "https://api.example.com/v1", "model": "teacher", "apiKeySecretRef": {"name": "key", "key": "k"}},
        "output": {"pvc": {"claimName": "datasets", "subPath": "data"}},
    })
    create("finetunes", "FineTune", "tuned", {
        "dataset": {"instructDatasetRef": {"name": "data"}}, "gpus": {"nodes": 2, "perNode": 8},
        "output": {"pvc": {"claimName": "models", "subPath": "tuned"}},
    })
    create("modelservers", "ModelServer", "chat", {"model": {"fineTuneRef": {"name": "tuned"}}})

    wait_for(lambda: batch.read_namespaced_job("data-generate", namespace), what="the generation Job")
    custom.patch_namespaced_custom_object_status("alpaca.dev", "v1alpha1", namespace, "instructdatasets", "data",
        {"status": {"result": {"artifact": {"uri": "/var/lib/alpaca/output/dataset.jsonl", "sha256": "a" * 64}, "sizeBytes": 1, "finishedAt": _now_minus(0)}}})
    batch.patch_namespaced_job_status("data-generate", namespace, {"status": {
        "startTime": _now_minus(60), "completionTime": _now_minus(0), "succeeded": 1,
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": _now_minus(0)},
                       {"type": "Complete", "status": "True", "lastTransitionTime": _now_minus(0)}],
    }})
    wait_for(lambda: status("instructdatasets", "data").get("phase") == "Succeeded", what="the dataset Succeeded")

    wait_for(lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train"), what="the PyTorchJob")
    custom.patch_namespaced_custom_object_status("alpaca.dev", "v1alpha1", namespace, "finetunes", "tuned",
        {"status": {"result": {"artifact": {"uri": "/var/lib/alpaca/output", "sha256": "b" * 64}, "sizeBytes": 1, "finishedAt": _now_minus(0)}}})
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train", {"status": {
        "startTime": _now_minus(600), "completionTime": _now_minus(0),
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}],
    }})
    finished = wait_for(lambda: (s := status("finetunes", "tuned")).get("phase") == "Succeeded" and s, what="the FineTune Succeeded")
    # 16 GPUs for 10 minutes at the chart's price table: the settings file reached the operator.
    assert finished["costUSD"] == pytest.approx(16 * 2.0 * 600 / 3600, rel=0.05)

    wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
    apps.patch_namespaced_deployment_status("chat-serve", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}})
    wait_for(lambda: status("modelservers", "chat").get("phase") == "Ready", what="the ModelServer Ready")
    # The served model, evaluated against saved answers with the server itself judging.
    create("evaluations", "Evaluation", "chat-eval", {
        "candidate": {"modelServerRef": {"name": "chat"}}, "baseline": {"outputs": {"uri": "s3://answers/base.jsonl"}},
        "judge": {"modelServerRef": {"name": "chat"}}, "output": {"pvc": {"claimName": "reports", "subPath": "eval"}},
    })
    wait_for(lambda: batch.read_namespaced_job("chat-eval-evaluate", namespace), what="the evaluation Job")
    batch.patch_namespaced_job_status("chat-eval-evaluate", namespace, {"status": {
        "startTime": _now_minus(60), "completionTime": _now_minus(0), "succeeded": 1,
        "conditions": [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": _now_minus(0)},
                       {"type": "Complete", "status": "True", "lastTransitionTime": _now_minus(0)}],
    }})
    wait_for(lambda: status("evaluations", "chat-eval").get("phase") == "Succeeded", what="the Evaluation Succeeded")
    # An edit rolls the Deployment and its config.
    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "modelservers", "chat", {"spec": {"replicas": 2}})
    wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace).spec.replicas == 2, what="the Deployment scaled")
    # Autoscaling on (an HPA applied), then off (the HPA read back and deleted).
    scaling = kubernetes.client.AutoscalingV2Api(api_client)
    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "modelservers", "chat",
                                          {"spec": {"autoscaling": {"maxReplicas": 3, "podsMetric": {"name": "alpaca_serve_queue_depth", "averageValue": "4"}}}})
    wait_for(lambda: scaling.read_namespaced_horizontal_pod_autoscaler("chat-serve", namespace), what="the HPA")
    wait_for(lambda: status("modelservers", "chat").get("autoscalerName") == "chat-serve", what="the HPA recorded")
    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "modelservers", "chat", {"spec": {"autoscaling": None}})
    wait_for(lambda: status("modelservers", "chat").get("autoscalerName") is None, what="the HPA removed")

    # The workloads' identity, made by the operator in the namespace it worked in.
    kubernetes.client.CoreV1Api(api_client).read_namespaced_service_account("alpaca-workload", namespace)


def _audited_permissions(log: Path, username: str) -> tuple[set[Permission], list[str]]:
    used: set[Permission] = set()
    forbidden: list[str] = []
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["user"]["username"] != username or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        code = (event.get("responseStatus") or {}).get("code", 200)
        if code == 403:
            forbidden.append(f"{event['verb']} {ref.get('apiGroup', '')}/{resource} in {ref.get('namespace', '(cluster)')}")
        elif code < 400 or code in (404, 409):
            used.add((ref.get("apiGroup", ""), resource, event["verb"]))
    return used, forbidden


def _granted(documents: Documents, kind: str = "ClusterRole") -> set[Permission]:
    return {
        (group, resource, verb)
        for role in find(documents, kind)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_operator_reconciles_with_the_chart_service_account_and_needs_every_grant(
    audited: tuple[ControlPlane, Path], helm: str, kube_version: str, tmp_path: Path
) -> None:
    cp, log = audited
    documents = _install(cp, helm, kube_version)
    (account,) = find(documents, "ServiceAccount")
    (deployment,) = find(documents, "Deployment")
    lease = next(a.split("=", 1)[1] for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"] if a.startswith("--lease="))
    (config_map,) = find(documents, "ConfigMap")
    (tmp_path / "settings.yaml").write_text(config_map["data"]["settings.yaml"])
    settings = load_settings(tmp_path / "settings.yaml")

    token = cp.token_for_service_account(RELEASE_NAMESPACE, account["metadata"]["name"])
    kubeconfig = cp.kubeconfig_for_token(token, tmp_path / "operator.kubeconfig")
    namespace = f"work-{uuid.uuid4().hex[:8]}"
    _kubectl(cp, "create", "namespace", namespace)

    wiring = wire(settings, kubeconfig=str(kubeconfig), lease_name=lease, lease_namespace=RELEASE_NAMESPACE, identity="replica-0")
    assert wiring.namespaces == []  # the chart's default: every namespace, with the ClusterRole
    with OperatorThread(wiring), cp.api_client() as admin:
        _play_the_chain(admin, namespace)
        held = kubernetes.client.CoordinationV1Api(admin).read_namespaced_lease(lease, RELEASE_NAMESPACE)
        assert held.spec.holder_identity == "replica-0", "the operator never held the lease"

    username = f"system:serviceaccount:{RELEASE_NAMESPACE}:{account['metadata']['name']}"
    used, forbidden = _audited_permissions(log, username)
    assert not forbidden, "the chart's RBAC is not enough:\n" + "\n".join(forbidden)
    granted = _granted(documents) | _granted(documents, "Role")
    assert used <= granted  # holds when nothing was forbidden; says what was used if not
    unused = granted - used - set(NOT_EXERCISED)
    assert not unused, f"granted but never used (drop them, or name the code path in NOT_EXERCISED): {sorted(unused)}"
    stale = set(NOT_EXERCISED) - granted
    assert not stale, f"NOT_EXERCISED names permissions the chart no longer grants: {sorted(stale)}"


def test_the_service_account_cannot_do_more(audited: tuple[ControlPlane, Path]) -> None:
    cp, _ = audited
    user = "system:serviceaccount:alpaca-system:alpaca-alpaca-operator"
    checks = [
        ("", "secrets", "get"), ("", "secrets", "list"), ("", "pods", "create"), ("", "pods/exec", "create"),
        ("batch", "jobs", "delete"), ("apps", "deployments", "delete"), ("", "namespaces", "create"),
        ("rbac.authorization.k8s.io", "clusterroles", "create"), ("rbac.authorization.k8s.io", "roles", "bind"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "update"), ("alpaca.dev", "finetunes", "delete"),
    ]
    with cp.api_client() as admin:
        api = kubernetes.client.AuthorizationV1Api(admin)
        allowed = []
        for group, resource, verb in checks:
            name, _, sub = resource.partition("/")
            review = api.create_subject_access_review({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "resourceAttributes": {"group": group, "resource": name, "subresource": sub, "verb": verb, "namespace": "any"}},
            })
            if review.status.allowed:
                allowed.append((group, resource, verb))
    assert not allowed, f"the operator's ServiceAccount may {allowed}"
