"""ModelServer -> Deployment + Service: probes, readiness, spec edits rolled out, cost accrued."""

from __future__ import annotations

import kubernetes.client

from operator_helpers import condition, create, status_of
from support.cluster import wait_for

SPEC = {
    "model": {"source": {"builtin": "smollm2-135m-instruct"}},
    "replicas": 1,
    "replicaHourUSD": 3600.0,  # a dollar a second, so a test sees cost move
}


def test_deployment_service_readiness_edits_and_cost(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "chat", SPEC)
    apps = kubernetes.client.AppsV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)

    deployment = wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
    container = deployment.spec.template.spec.containers[0]
    assert container.command == ["alpaca", "serve", "--config", "/etc/alpaca/config.json"]
    assert container.readiness_probe.http_get.path == "/readyz"
    assert container.liveness_probe.http_get.path == "/healthz"
    service = core.read_namespaced_service("chat-serve", namespace)
    assert service.spec.selector == deployment.spec.selector.match_labels
    assert service.spec.ports[0].port == 8000

    status = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "chat")).get("phase") and s, what="a phase")
    assert status["phase"] == "Progressing"
    apps.patch_namespaced_deployment_status("chat-serve", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1}})
    ready = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "chat")).get("phase") == "Ready" and s, what="Ready")
    assert ready["url"] == f"http://chat-serve.{namespace}.svc.cluster.local:8000/v1"
    assert condition(ready, "Ready")["status"] == "True"
    assert ready["servedModelName"] == "chat"

    # Pods are paid for while they exist.
    wait_for(lambda: (status_of(custom, namespace, "modelservers", "chat").get("costUSD") or 0) > 0, timeout=10, what="cost")

    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "modelservers", "chat", {"spec": {"replicas": 3, "resources": {"cpu": "2"}}})
    updated = wait_for(lambda: (d := apps.read_namespaced_deployment("chat-serve", namespace)).spec.replicas == 3 and d, what="replicas 3")
    assert updated.spec.template.spec.containers[0].resources.limits["cpu"] == "2"
    progressing = wait_for(lambda: (s := status_of(custom, namespace, "modelservers", "chat")).get("phase") == "Progressing" and s, what="Progressing")
    assert progressing["replicas"] == 3


def test_vllm_runtime(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "big", {
        "model": {"source": {"uri": "s3://bucket/models/alpaca-7b"}}, "runtime": "vllm", "gpusPerReplica": 4,
    })
    deployment = wait_for(lambda: kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment("big-serve", namespace), what="the Deployment")
    container = deployment.spec.template.spec.containers[0]
    assert container.command[:3] == ["vllm", "serve", "s3://bucket/models/alpaca-7b"]
    assert container.command[container.command.index("--tensor-parallel-size") + 1] == "4"
    assert container.readiness_probe.http_get.path == "/health"
    assert container.resources.limits["nvidia.com/gpu"] == "4"


def test_keys_removed_from_the_spec_are_removed_from_the_deployment(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "placed", {
        **SPEC, "placement": {"nodeSelector": {"pool": "cpu", "zone": "a"}},
    })
    apps = kubernetes.client.AppsV1Api(api_client)
    first = wait_for(lambda: apps.read_namespaced_deployment("placed-serve", namespace), what="the Deployment")
    assert first.spec.template.spec.node_selector == {"pool": "cpu", "zone": "a"}
    # Someone else's field on the same object is left alone.
    apps.patch_namespaced_deployment("placed-serve", namespace, {"metadata": {"labels": {"team": "search"}}})

    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "modelservers", "placed",
                                          {"spec": {"placement": {"nodeSelector": {"zone": None}}}})
    updated = wait_for(lambda: (d := apps.read_namespaced_deployment("placed-serve", namespace)).spec.template.spec.node_selector == {"pool": "cpu"} and d,
                       what="the removed key gone")
    assert updated.metadata.labels["team"] == "search"
    managers = {(f.manager, f.operation) for f in updated.metadata.managed_fields}
    assert ("alpaca-operator", "Apply") in managers


def test_an_optional_network_policy_guards_the_server(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "guarded", {
        **SPEC, "networkPolicy": {"from": [{"namespaceSelector": {"matchLabels": {"team": "research"}}}]},
    })
    policy = wait_for(lambda: kubernetes.client.NetworkingV1Api(api_client).read_namespaced_network_policy("guarded-serve", namespace), what="the NetworkPolicy")
    deployment = kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment("guarded-serve", namespace)
    assert policy.spec.pod_selector.match_labels == deployment.spec.selector.match_labels
    assert policy.spec.ingress[0].to_dict()["_from"][0]["namespace_selector"]["match_labels"] == {"team": "research"}
    assert policy.metadata.owner_references[0].kind == "ModelServer"
