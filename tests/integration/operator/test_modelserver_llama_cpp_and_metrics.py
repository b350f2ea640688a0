"""ModelServer on a real API server: runtime llama-cpp, and metrics on a port that scrapers alone reach."""

from __future__ import annotations

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from operator_helpers import create
from support.cluster import wait_for

BUILTIN = {"source": {"builtin": "smollm2-135m-instruct"}}
SCRAPERS = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def ports(items) -> dict[str, object]:
    return {p.name: p for p in items}


def test_llama_cpp_runtime_runs_llama_server_with_the_key_from_the_secret(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "smol", {
        "model": BUILTIN, "runtime": "llama-cpp", "auth": {"apiKeySecretRef": {"name": "smol-key", "key": "token"}},
        "networkPolicy": {"metricsFrom": SCRAPERS}, "resources": {"cpu": "2"},
    })
    apps = kubernetes.client.AppsV1Api(api_client)
    deployment = wait_for(lambda: apps.read_namespaced_deployment("smol-serve", namespace), what="the Deployment")
    container = deployment.spec.template.spec.containers[0]
    assert container.command[0] == "llama-server"
    assert container.command[container.command.index("--model") + 1].endswith("/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert container.command[container.command.index("--threads") + 1] == "2"
    assert container.readiness_probe.http_get.path == "/health"
    (key,) = container.env
    assert key.name == "LLAMA_API_KEY" and key.value_from.secret_key_ref.name == "smol-key"
    service = kubernetes.client.CoreV1Api(api_client).read_namespaced_service("smol-serve", namespace)
    assert ports(service.spec.ports)["metrics"].target_port == "http"  # llama-server's /metrics is on its API port
    policy = wait_for(lambda: kubernetes.client.NetworkingV1Api(api_client).read_namespaced_network_policy("smol-serve", namespace),
                      what="the NetworkPolicy")
    assert [[p.port for p in rule.ports] for rule in policy.spec.ingress] == [[8000], [8000]]


def test_alpaca_serve_metrics_port_is_reached_by_the_scrapers_alone(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "chat", {"model": BUILTIN, "networkPolicy": {"metricsFrom": SCRAPERS}})
    apps = kubernetes.client.AppsV1Api(api_client)
    deployment = wait_for(lambda: apps.read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
    container = deployment.spec.template.spec.containers[0]
    assert ports(container.ports)["metrics"].container_port == 9090
    assert deployment.spec.template.metadata.annotations["prometheus.io/port"] == "9090"
    service = kubernetes.client.CoreV1Api(api_client).read_namespaced_service("chat-serve", namespace)
    assert ports(service.spec.ports)["metrics"].target_port == "metrics"
    policy = wait_for(lambda: kubernetes.client.NetworkingV1Api(api_client).read_namespaced_network_policy("chat-serve", namespace),
                      what="the NetworkPolicy")
    api_rule, scrape_rule = policy.spec.ingress
    assert [p.port for p in api_rule.ports] == [8000] and [p.port for p in scrape_rule.ports] == [9090]
    assert scrape_rule._from[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "monitoring"}


def test_admission_refuses_llama_cpp_on_gpus(crds, custom, namespace: str) -> None:
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, "modelservers", "ModelServer", "gpu", {"model": BUILTIN, "runtime": "llama-cpp", "gpusPerReplica": 1})
    assert refused.value.status == 422 and "runtime llama-cpp serves on CPU" in refused.value.body, refused.value.body
