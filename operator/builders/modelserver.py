"""ModelServer -> ConfigMap (ServeConfig) + Deployment + Service: `alpaca serve`, the vLLM OpenAI server or
llama.cpp's `llama-server`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..api.finetune import GGUF_FILE, FineTuneSpec
from ..api.modelserver import Dtype, ModelServerSpec, Runtime
from ..api.workloads import ResolvedModel, ServeAdapter, ServeConfig
from ..cost import hourly_rate
from ..naming import SERVE, child_name, labels, selector, spec_hash
from ..settings import OperatorSettings
from .common import (
    CONFIG_FILE,
    IN_CLUSTER,
    MODEL_MOUNT,
    SERVER_API_KEY_ENV,
    Manifest,
    Mounts,
    Parent,
    Where,
    compute_resources,
    config_map,
    config_mounts,
    container,
    placement,
    pod_spec,
    secret_env,
    shm_mount,
    stamp,
)
from .inputs import Input
from .queue import queue_labels

PORT = 8000
# alpaca serve answers /metrics on a port of its own, so that a NetworkPolicy can let scrapers reach
# the metrics and nothing else. vLLM and llama-server serve them on the API port.
METRICS_PORT = 9090
# Where the llama-cpp image keeps the builtin models' GGUF files (images/llama-cpp/Dockerfile).
LLAMA_CPP_MODELS = "/opt/alpaca/models"
BUILTIN_GGUF = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
LLAMA_API_KEY_ENV = "LLAMA_API_KEY"  # what llama-server reads its key from
VLLM_API_KEY_ENV = "VLLM_API_KEY"  # what the vLLM server reads its key from
GPU_RESOURCE = "nvidia.com/gpu"
CONFIG_HASH_ANNOTATION = "alpaca.dev/config-hash"
ADAPTERS_MOUNT = "/var/lib/alpaca/adapters"
# The ranks vLLM's --max-lora-rank accepts (vllm/config: LoRAConfig.max_lora_rank).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class AdapterInput:
    """A LoRA adapter to serve: its model name, its folder as the pod reaches it, its rank."""

    name: str
    input: Input
    rank: int


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


def serve_config(
    parent: Parent, spec: ModelServerSpec, model: ResolvedModel, where: Where = IN_CLUSTER, port: int = PORT,
    metrics_port: int | None = None, adapters: tuple[AdapterInput, ...] = (),
) -> ServeConfig:
    """The one derivation of a server's config, for the cluster and for local mode."""
    key_ref = spec.auth.api_key_secret_ref if spec.auth else None
    return ServeConfig(
        name=parent.name, spec=spec, model=model, served_model_name=served_model_name(parent.name, spec),
        host=where.host, port=port, api_key_env=where.secret_env(key_ref, SERVER_API_KEY_ENV) if key_ref else None,
        metrics_port=metrics_port, adapters=[ServeAdapter(name=a.name, location=a.input.location) for a in adapters],
    )


def metrics_port(spec: ModelServerSpec) -> int:
    """The container port /metrics answers on."""
    return METRICS_PORT if spec.runtime is Runtime.TRANSFORMERS else PORT


def gguf_path(model: ResolvedModel, builtin_folder: str = LLAMA_CPP_MODELS) -> str:
    """The GGUF file llama-server loads: a builtin model's, or the source's ggufFile in its folder."""
    if model.builtin is not None:
        return f"{builtin_folder.rstrip('/')}/{model.gguf_file or BUILTIN_GGUF[model.builtin]}"
    if not model.gguf_file or model.location is None:
        raise UnsupportedModel(
            "model: runtime llama-cpp serves a GGUF file: a builtin model, a source with ggufFile, "
            "or a FineTune whose spec.export.gguf is set"
        )
    location = model.location
    if "://" in location:
        scheme = location.split("://", 1)[0]
        if scheme != "file":
            raise UnsupportedModel(
                f"model.source.uri: runtime llama-cpp reads its GGUF file from a mounted folder (pvc or file://), not {scheme}://"
            )
        location = location.removeprefix("file://")
    return f"{location.rstrip('/')}/{model.gguf_file}"


def fine_tune_gguf(runtime: Runtime, name: str, tuned: FineTuneSpec) -> str | None:
    """The file a FineTune's output is served from by this runtime: for llama-cpp the GGUF file its
    spec.export.gguf made training write beside the model folder; None (the folder) for the others."""
    if runtime is not Runtime.LLAMA_CPP:
        return None
    if tuned.export is None or tuned.export.gguf is None:
        raise UnsupportedModel(
            f"model.fineTuneRef: runtime llama-cpp serves a GGUF file and FineTune {name!r} writes none "
            "(its output is a transformers folder): set the FineTune's spec.export.gguf (f16, f32 or q8_0)"
        )
    return GGUF_FILE


def cpu_threads(spec: ModelServerSpec) -> int | None:
    """Compute threads for a CPU limit (llama-server would start one per core of the node and be throttled)."""
    cpu = spec.resources.cpu if spec.resources else None
    if cpu is None:
        return None
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(cores))


# Kubernetes memory quantities: a number and a decimal or binary suffix.
_MEMORY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([EPTGMK]i?)?$")
_MEMORY_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def prompt_cache_mib(spec: ModelServerSpec) -> int | None:
    """A quarter of the pod's memory limit for llama-server's prompt cache, whose default (8 GiB) would
    outgrow a smaller pod and get it OOM-killed; None (the default) when the pod has no limit."""
    memory = spec.resources.memory if spec.resources else None
    match = _MEMORY.match(memory) if memory else None
    if match is None:
        return None
    return int(float(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""] / 4 / 2**20)


def llama_server_args(config: ServeConfig, gguf: str) -> list[str]:
    """llama-server's flags for a ServeConfig (checked against `llama-server --help`), for the cluster and local mode.

    One KV pool shared by the slots (--kv-unified, the model's context): a long answer may use the
    whole context while short ones leave room. --n-predict (maxNewTokens) is what a request without
    max_tokens gets; unlike alpaca serve, llama-server does not cap a larger max_tokens.
    """
    batching = config.spec.batching
    args = [
        "--model", gguf,
        "--host", config.host,
        "--port", str(config.port),
        "--alias", config.served_model_name,
        "--parallel", str(batching.max_batch_size),
        "--kv-unified",
        "--n-predict", str(batching.max_new_tokens),
        "--metrics",
    ]
    if (threads := cpu_threads(config.spec)) is not None:
        args += ["--threads", str(threads), "--threads-batch", str(threads)]
    if (cache := prompt_cache_mib(config.spec)) is not None:
        args += ["--cache-ram", str(cache)]  # 0 turns the cache off
    return args


def adapter_input(name: str, index: int, upstream: Input, rank: int) -> AdapterInput:
    """The adapter folder of a LoRA FineTune's output (`<output>/adapter`, what training saves),
    mounted at a path of its own when it lives on a PVC."""
    if upstream.mounts.volumes:
        mount_path, volume = f"{ADAPTERS_MOUNT}/{index}", f"adapter-{index}"
        volumes = [{**v, "name": volume} for v in upstream.mounts.volumes]
        mounts = [{**m, "name": volume, "mountPath": mount_path} for m in upstream.mounts.mounts]
        location = mount_path + upstream.location[len(MODEL_MOUNT):]
        upstream = Input(location, Mounts(volumes, mounts), upstream.pinned)
    return AdapterInput(name, Input(f"{upstream.location.rstrip('/')}/adapter", upstream.mounts, upstream.pinned), rank)


def vllm_lora_flags(adapters: tuple[AdapterInput, ...]) -> list[str]:
    """--enable-lora with one --lora-modules name=path per adapter; every adapter may share one batch."""
    if not adapters:
        return []
    rank = max(a.rank for a in adapters)
    allowed = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if allowed is None:
        raise UnsupportedModel(f"adapters: runtime vllm serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}, an adapter has rank {rank}")
    return [
        "--enable-lora",
        "--max-loras", str(len(adapters)),
        "--max-lora-rank", str(allowed),
        "--lora-modules", *(f"{a.name}={a.input.location}" for a in adapters),
    ]


def dtype_flags(spec: ModelServerSpec) -> list[str]:
    """--dtype for alpaca serve and for vLLM, which take the same names. Nothing for auto, the default of
    both, so a server that never set dtype keeps the command it had."""
    return [] if spec.dtype is Dtype.AUTO else ["--dtype", spec.dtype.value]


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
        *dtype_flags(spec),
    ]


def _probe(path: str, *, period: int, failures: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures}


def build(
    parent: Parent, spec: ModelServerSpec, settings: OperatorSettings, model: ResolvedModel, model_mounts: Mounts,
    adapters: tuple[AdapterInput, ...] = (),
) -> tuple[Manifest, Manifest, Manifest]:
    """(ConfigMap, Deployment, Service) for one ModelServer whose model (and adapters) are resolved."""
    name = served_model_name(parent.name, spec)
    cm_name = config_map_name(parent.name)
    key_ref = spec.auth.api_key_secret_ref if spec.auth else None
    own_metrics_port = METRICS_PORT if spec.runtime is Runtime.TRANSFORMERS else None
    config = serve_config(parent, spec, model, metrics_port=own_metrics_port, adapters=adapters)
    cm = config_map(parent, cm_name, SERVE, config)

    mounts = Mounts()
    mounts.extend(model_mounts)
    for adapter in adapters:
        mounts.extend(adapter.input.mounts)
    env: list[Manifest] = []
    if spec.runtime is Runtime.LLAMA_CPP:
        image = spec.image or settings.images.llama_cpp
        command = ["llama-server", *llama_server_args(config, gguf_path(model))]
        health, ready, live = "/health", "/health", "/health"  # 503 while the model loads
        if key_ref:
            env.append(secret_env(LLAMA_API_KEY_ENV, key_ref.name, key_ref.key))
    elif spec.runtime is Runtime.VLLM:
        image = spec.image or settings.images.vllm
        command = [*_vllm_command(spec, model, name), *vllm_lora_flags(adapters)]
        health, ready, live = "/health", "/health", "/health"
        mounts.extend(shm_mount(None))  # tensor parallel workers talk through shared memory
        if key_ref:
            env.append(secret_env(VLLM_API_KEY_ENV, key_ref.name, key_ref.key))
    else:
        image = spec.image or settings.images.serve
        command = ["alpaca", "serve", "--config", CONFIG_FILE, *dtype_flags(spec)]
        health, ready, live = "/healthz", "/readyz", "/healthz"
        mounts.extend(config_mounts(cm_name))
        if key_ref:
            env.append(secret_env(SERVER_API_KEY_ENV, key_ref.name, key_ref.key))

    gpus = spec.gpus_per_replica
    server = container(
        "server", image, command, mounts, compute_resources(spec.resources, {GPU_RESOURCE: gpus}),
        pull_policy=settings.images.pull_policy, env=env,
        ports=[
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            *([{"name": "metrics", "containerPort": own_metrics_port, "protocol": "TCP"}] if own_metrics_port else []),
        ],
        # Loading weights takes minutes: the startup probe holds liveness off until the server is up.
        startupProbe=_probe(health, period=10, failures=90),
        readinessProbe=_probe(ready, period=5, failures=3),
        livenessProbe=_probe(live, period=15, failures=4),
    )
    pod_labels = labels(parent.name, SERVE)
    config_digest = rollout_digest(config)
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(parent.name), "namespace": parent.namespace,
            "labels": {**pod_labels, **queue_labels(spec.queue, settings)},
        },
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector(parent.name, SERVE)},
            # GPUs are scarce: replace a pod rather than ask for one more during a rollout.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0 if gpus else 1, "maxUnavailable": 1 if gpus else 0}},
            "template": {
                # A changed config rolls the pods, since a mounted file change alone would not restart them.
                "metadata": {"labels": dict(pod_labels), "annotations": {CONFIG_HASH_ANNOTATION: config_digest, **scrape_annotations(spec)}},
                "spec": pod_spec(
                    settings.workload_service_account, [server], mounts,
                    # A server reports nothing to the API: no token in its pods (only generation and training report).
                    automountServiceAccountToken=False,
                    **placement(spec.placement, settings.gpu_pools.get(spec.gpu_type) if gpus > 0 else None),
                ),
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
            # A ServiceMonitor selects the Service by its labels and scrapes the port named metrics.
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics" if own_metrics_port else "http", "protocol": "TCP"},
            ],
        },
    }
    hashed: dict[str, object] = {"deployment": deployment["spec"]}
    if adapters:
        hashed["adapters"] = [a.name + "=" + a.input.location for a in adapters]
    if spec.autoscaling is not None:
        # The HPA owns the count: the field is left out, so server-side apply never takes it back.
        del deployment["spec"]["replicas"]
        hashed["autoscaler"] = autoscaler_spec(parent, spec)
    if queue := queue_labels(spec.queue, settings):
        hashed["queue"] = queue
    return cm, stamp(deployment, parent, hashed), service


def rollout_digest(config: ServeConfig) -> str:
    """A digest of what a running pod would serve differently: the pods roll when it changes.

    The replica count, autoscaling and queue change how many pods run, not what each one does, so
    scaling never restarts the running ones. alpaca serve reloads its adapters from the mounted
    config when the file changes, so adding or removing one (when it needs no new volume) does not
    restart them either.
    """
    spec = config.spec.model_copy(update={"replicas": 1, "autoscaling": None, "queue": None})
    kept = config
    if config.spec.runtime is Runtime.TRANSFORMERS:
        spec = spec.model_copy(update={"adapters": []})
        kept = config.model_copy(update={"adapters": []})
    return spec_hash(kept.model_copy(update={"spec": spec}).to_wire())


def autoscaler_name(parent: str) -> str:
    return child_name(parent, SERVE)


def autoscaler_spec(parent: Parent, spec: ModelServerSpec) -> Manifest:
    assert spec.autoscaling is not None
    scaling = spec.autoscaling
    metrics: list[Manifest] = []
    if scaling.target_cpu_utilization_percentage is not None:
        metrics.append({"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": scaling.target_cpu_utilization_percentage},
        }})
    if scaling.pods_metric is not None:
        metrics.append({"type": "Pods", "pods": {
            "metric": {"name": scaling.pods_metric.name},
            "target": {"type": "AverageValue", "averageValue": scaling.pods_metric.average_value},
        }})
    out: Manifest = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name(parent.name)},
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": metrics,
    }
    if scaling.scale_down_stabilization_seconds is not None:
        out["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}}
    return out


def autoscaler(parent: Parent, spec: ModelServerSpec) -> Manifest | None:
    """The autoscaling/v2 HorizontalPodAutoscaler of the server's Deployment, when autoscaling is set."""
    if spec.autoscaling is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": autoscaler_name(parent.name), "namespace": parent.namespace, "labels": labels(parent.name, SERVE)},
        "spec": autoscaler_spec(parent, spec),
    }


def autoscaler_stub(parent: Parent) -> Manifest:
    """Enough of the HPA to find it (and delete it once autoscaling is turned off)."""
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": autoscaler_name(parent.name), "namespace": parent.namespace}}


def replicas_handover(parent: Parent, replicas: int) -> Manifest:
    """The Deployment's replicas alone, applied by a manager of its own: it keeps the count set while
    the operator's own apply leaves the field out, until the HPA's writes take it over."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": deployment_name(parent.name), "namespace": parent.namespace},
            "spec": {"replicas": replicas}}


def pod_selector(parent: str) -> str:
    """The server's pod selector as a string, as the scale subresource reports it."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector(parent, SERVE).items()))


def scrape_annotations(spec: ModelServerSpec) -> dict[str, str]:
    """The prometheus.io annotations that annotation-based scrape configs read from pods."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(metrics_port(spec)), "prometheus.io/path": "/metrics"}


def network_policy(parent: Parent, spec: ModelServerSpec) -> Manifest | None:
    """Ingress to the server's pods on its API port, from the spec's peers (default: this namespace's pods),
    and on its metrics port from the scrapers named in metricsFrom."""
    if spec.network_policy is None:
        return None
    peers = [dict(peer) for peer in spec.network_policy.from_] or [{"podSelector": {}}]
    ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": PORT}]}]
    if spec.network_policy.metrics_from:
        scrapers = [dict(peer) for peer in spec.network_policy.metrics_from]
        ingress.append({"from": scrapers, "ports": [{"protocol": "TCP", "port": metrics_port(spec)}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": service_name(parent.name), "namespace": parent.namespace, "labels": labels(parent.name, SERVE)},
        "spec": {
            "podSelector": {"matchLabels": selector(parent.name, SERVE)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
