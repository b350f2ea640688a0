"""ModelServer -> ConfigMap (ServeConfig) + Deployment + Service: `alpaca serve` or the vLLM OpenAI server."""

from __future__ import annotations

from ..api.modelserver import ModelServerSpec, Runtime
from ..api.workloads import ResolvedModel, ServeConfig
from ..cost import hourly_rate
from ..naming import SERVE, child_name, labels, selector, spec_hash
from ..settings import OperatorSettings
from .common import (
    CONFIG_FILE,
    IN_CLUSTER,
    SERVER_API_KEY_ENV,
    Manifest,
    Mounts,
    Parent,
    Where,
    compute_resources,
    config_map,
    config_mounts,
    container_security,
    pod_security,
    placement,
    secret_env,
    shm_mount,
    stamp,
)

PORT = 8000
VLLM_API_KEY_ENV = "VLLM_API_KEY"  # what the vLLM server reads its key from
GPU_RESOURCE = "nvidia.com/gpu"
CONFIG_HASH_ANNOTATION = "alpaca.dev/config-hash"


class UnsupportedModel(ValueError):
    """A model the chosen runtime cannot load (a spec problem)."""


def deployment_name(parent: str) -> str:
    return child_name(parent, SERVE)


def service_name(parent: str) -> str:
    return child_name(parent, SERVE)


def config_map_name(parent: str) -> str:
    return child_name(parent, f"{SERVE}-config")


def served_model_name(parent: str, spec: ModelServerSpec) -> str:
    return spec.served_model_name or parent


def url(parent: Parent) -> str:
    """The in-cluster base URL of the OpenAI API, as an openai client's base_url."""
    return f"http://{service_name(parent.name)}.{parent.namespace}.svc.cluster.local:{PORT}/v1"


def gpu_price(spec: ModelServerSpec, settings: OperatorSettings) -> float | None:
    return spec.gpu_hour_usd if spec.gpu_hour_usd is not None else settings.gpu_price(spec.gpu_type)


def replica_rate(spec: ModelServerSpec, settings: OperatorSettings) -> float:
    """US dollars per hour of one replica (its GPUs plus its pod price)."""
    return hourly_rate(spec.gpus_per_replica, gpu_price(spec, settings), spec.replica_hour_usd)


def serve_config(parent: Parent, spec: ModelServerSpec, model: ResolvedModel, where: Where = IN_CLUSTER, port: int = PORT) -> ServeConfig:
    """The one derivation of a server's config, for the cluster and for local mode."""
    key_ref = spec.auth.api_key_secret_ref if spec.auth else None
    return ServeConfig(
        name=parent.name, spec=spec, model=model, served_model_name=served_model_name(parent.name, spec),
        host=where.host, port=port, api_key_env=where.secret_env(key_ref, SERVER_API_KEY_ENV) if key_ref else None,
    )


def _vllm_command(spec: ModelServerSpec, model: ResolvedModel, name: str) -> list[str]:
    if model.location is None:
        raise UnsupportedModel("model: runtime vllm needs a model folder (pvc or uri), not a builtin model")
    target = f"{model.location.rstrip('/')}/{model.gguf_file}" if model.gguf_file else model.location
    return [
        "vllm", "serve", target,
        "--host", "0.0.0.0",
        "--port", str(PORT),
        "--served-model-name", name,
        "--tensor-parallel-size", str(spec.gpus_per_replica),
        "--max-num-seqs", str(spec.batching.max_batch_size),
    ]


def _probe(path: str, *, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def build(
    parent: Parent, spec: ModelServerSpec, settings: OperatorSettings, model: ResolvedModel, model_mounts: Mounts
) -> tuple[Manifest, Manifest, Manifest]:
    """(ConfigMap, Deployment, Service) for one ModelServer whose model is resolved."""
    name = served_model_name(parent.name, spec)
    cm_name = config_map_name(parent.name)
    key_ref = spec.auth.api_key_secret_ref if spec.auth else None
    cm = config_map(parent, cm_name, SERVE, serve_config(parent, spec, model))

    mounts = Mounts()
    mounts.extend(model_mounts)
    env: list[Manifest] = []
    if spec.runtime is Runtime.VLLM:
        image = spec.image or settings.images.vllm
        command = _vllm_command(spec, model, name)
        health, ready, live = "/health", "/health", "/health"
        mounts.extend(shm_mount(None))  # tensor parallel workers talk through shared memory
        if key_ref:
            env.append(secret_env(VLLM_API_KEY_ENV, key_ref.name, key_ref.key))
    else:
        image = spec.image or settings.images.serve
        command = ["alpaca", "serve", "--config", CONFIG_FILE]
        health, ready, live = "/healthz", "/readyz", "/healthz"
        mounts.extend(config_mounts(cm_name))
        if key_ref:
            env.append(secret_env(SERVER_API_KEY_ENV, key_ref.name, key_ref.key))

    gpus = spec.gpus_per_replica
    container: Manifest = {
        "name": "server",
        "image": image,
        "imagePullPolicy": settings.images.pull_policy,
        "command": command,
        "env": env,
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Loading weights takes minutes: the startup probe holds liveness off until the server is up.
        "startupProbe": _probe(health, period=10, failures=90),
        "readinessProbe": _probe(ready, period=5, failures=3),
        "livenessProbe": _probe(live, period=15, failures=4),
        "volumeMounts": mounts.mounts,
        "resources": compute_resources(spec.resources, {GPU_RESOURCE: gpus}),
        "securityContext": container_security(),
    }
    pod_labels = labels(parent.name, SERVE)
    config_digest = spec_hash(cm["data"])
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": deployment_name(parent.name), "namespace": parent.namespace, "labels": dict(pod_labels)},
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(parent.name, SERVE)},
            # GPUs are scarce: replace a pod rather than ask for one more during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0 if gpus else 1, "maxUnavailable": 1 if gpus else 0}},
            "template": {
                # A changed config rolls the pods, since a mounted file change alone would not restart them.
                "metadata": {"labels": dict(pod_labels), "annotations": {CONFIG_HASH_ANNOTATION: config_digest}},
                "spec": {
                    "serviceAccountName": settings.workload_service_account,
                    "securityContext": pod_security(),
                    # A server reports nothing to the API: no token in its pods (only generation and training report).
                    "automountServiceAccountToken": False,
                    "containers": [container],
                    "volumes": mounts.volumes,
                    **placement(spec.placement, settings.gpu_pools.get(spec.gpu_type) if gpus > 0 else None),
                },
            },
        },
    }
    service: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service_name(parent.name), "namespace": parent.namespace, "labels": dict(pod_labels)},
        "spec": {
            "type": "ClusterIP",
            "selector": selector(parent.name, SERVE),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return cm, stamp(deployment, parent, {"deployment": deployment["spec"]}), service


def network_policy(parent: Parent, spec: ModelServerSpec) -> Manifest | None:
    """Ingress to the server's pods on its API port, from the spec's peers (default: this namespace's pods)."""
    if spec.network_policy is None:
        return None
    peers = [dict(peer) for peer in spec.network_policy.from_] or [{"podSelector": {}}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": service_name(parent.name), "namespace": parent.namespace, "labels": labels(parent.name, SERVE)},
        "spec": {
            "podSelector": {"matchLabels": selector(parent.name, SERVE)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": PORT}]}],
        },
    }
