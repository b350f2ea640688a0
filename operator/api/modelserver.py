"""ModelServer: an OpenAI-compatible inference Deployment with a chat page."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .base import API_VERSION, ApiModel, ShortStr, StatusModel, cel
from .common import (
    USD,
    Artifact,
    ComputeResources,
    LocalObjectReference,
    ModelSource,
    Placement,
    Queue,
    SecretKeyRef,
    StatusBase,
)
from .resource import Resource


class Runtime(str, Enum):
    TRANSFORMERS = "transformers"
    VLLM = "vllm"
    # llama.cpp's own llama-server on a GGUF file: the faster engine for small quantised models on CPU.
    LLAMA_CPP = "llama-cpp"


class Dtype(str, Enum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class ServerPhase(str, Enum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    FAILED = "Failed"
    BLOCKED = "Blocked"


class ServedModel(ApiModel):
    """What to serve: the output of a FineTune (waited for), or a model source."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.fineTuneRef) != has(self.source)", "exactly one of fineTuneRef or source must be set"),
            ]
        }
    )

    fine_tune_ref: LocalObjectReference | None = Field(
        default=None, description="A FineTune in this namespace; the server waits until it has Succeeded."
    )
    source: ModelSource | None = Field(default=None, description="A model folder, URI or builtin model.")


class Auth(ApiModel):
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Bearer token clients must send to /v1."
    )


class Batching(ApiModel):
    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Sequences decoded together.")
    max_queue: int = Field(default=64, ge=1, le=100000, description="Requests waiting before new ones get 429.")
    max_new_tokens: int = Field(default=512, ge=1, le=131072, description="Upper bound on max_tokens per request.")


class NetworkPolicy(ApiModel):
    """A NetworkPolicy in front of the server: only these peers reach its API port."""

    from_: Annotated[list[dict[str, Any]], Field(max_length=32)] = Field(
        default_factory=list,
        alias="from",
        description="NetworkPolicyPeers (podSelector, namespaceSelector, ipBlock) allowed to connect; "
        "empty: only pods in this namespace.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    metrics_from: Annotated[list[dict[str, Any]], Field(max_length=32)] = Field(
        default_factory=list,
        description="NetworkPolicyPeers (e.g. the Prometheus namespace) allowed to scrape metrics; empty: no scrapes. "
        "Runtime transformers serves /metrics on a port of its own, so these peers reach nothing else; "
        "llama-cpp and vllm serve it on the API port, which these peers then reach too (API key still required).",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )


# A Prometheus metric name, as a custom-metrics adapter exposes it (e.g. alpaca_serve_queue_depth).
METRIC_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"
# A Kubernetes quantity such as 4, 500m or 1.5.
QUANTITY = r"^[0-9]+(\.[0-9]+)?([mkMGTPE]|[KMGTPE]i)?$"


class PodsMetric(ApiModel):
    """A per-pod custom metric, read through the custom metrics API (a metrics adapter must serve it)."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=METRIC_NAME)] = Field(
        description="Metric name as the custom metrics API serves it, e.g. alpaca_serve_queue_depth "
        "(sequences waiting) or alpaca_serve_running_sequences (sequences being decoded).",
    )
    average_value: Annotated[str, Field(max_length=64, pattern=QUANTITY)] = Field(
        description="Target average per pod, a quantity (e.g. '4', '500m'): above it the HPA adds pods.",
    )


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (autoscaling/v2) on the server's Deployment; it then owns the replica count."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas", field_path=".minReplicas"),
                cel(
                    "has(self.targetCPUUtilizationPercentage) || has(self.podsMetric)",
                    "set a target: targetCPUUtilizationPercentage and/or podsMetric",
                ),
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="Fewest pods.")
    max_replicas: int = Field(ge=1, le=1000, description="Most pods.")
    target_cpu_utilization_percentage: int | None = Field(
        default=None, ge=1, le=1000, alias="targetCPUUtilizationPercentage",
        description="Average CPU use as a percentage of the pods' CPU request (resource metrics API; needs resources.cpu).",
    )
    pods_metric: PodsMetric | None = Field(
        default=None, description="A per-pod custom metric and its target average (custom metrics API).",
    )
    scale_down_stabilization_seconds: int | None = Field(
        default=None, ge=0, le=3600,
        description="How long the HPA looks back before removing pods (its default: 300).",
    )

    @model_validator(mode="after")
    def _sound(self) -> Autoscaling:
        # The same rules as the CEL above, for manifests that never meet an API server (local mode).
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed maxReplicas")
        if self.target_cpu_utilization_percentage is None and self.pods_metric is None:
            raise ValueError("autoscaling: set a target: targetCPUUtilizationPercentage and/or podsMetric")
        return self


# The name clients send as `model`.
ServedName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][-._:/A-Za-z0-9]*$")]


class Adapter(ApiModel):
    """A LoRA adapter served beside the base model, chosen by the request's `model`."""

    name: ServedName = Field(description="The model name clients send to get this adapter.")
    fine_tune_ref: LocalObjectReference = Field(
        description="A FineTune with method lora on the same base as the server's model.source; served once it has Succeeded.",
    )


class ModelServerSpec(ApiModel):
    """Serve a model with an OpenAI-compatible API (/v1) and a chat page (/)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.autoscaling) || !has(self.autoscaling.targetCPUUtilizationPercentage) || "
                    "(has(self.resources) && has(self.resources.cpu))",
                    "autoscaling on CPU utilisation needs resources.cpu (the request utilisation is measured against)",
                    field_path=".autoscaling.targetCPUUtilizationPercentage",
                ),
                cel(
                    "!has(self.adapters) || size(self.adapters) == 0 || has(self.model.source)",
                    "adapters need model.source: the base model the adapters were trained on",
                    field_path=".adapters",
                ),
                cel(
                    "!has(self.adapters) || size(self.adapters) == 0 || self.runtime != 'llama-cpp'",
                    "runtime llama-cpp does not serve adapters: use transformers or vllm",
                    field_path=".adapters",
                ),
                cel(
                    "self.runtime != 'vllm' || self.gpusPerReplica >= 1",
                    "runtime vllm needs gpusPerReplica >= 1",
                    field_path=".gpusPerReplica",
                ),
                cel(
                    "!has(self.dtype) || self.dtype == 'auto' || self.runtime != 'llama-cpp'",
                    "runtime llama-cpp takes its weight types from the GGUF file: dtype must be auto",
                    field_path=".dtype",
                ),
                cel(
                    "self.runtime != 'llama-cpp' || self.gpusPerReplica == 0",
                    "runtime llama-cpp serves on CPU: gpusPerReplica must be 0",
                    field_path=".gpusPerReplica",
                ),
            ]
        }
    )

    model: ServedModel = Field(description="The model to serve.")
    served_model_name: Annotated[str, Field(max_length=253, pattern=r"^[A-Za-z0-9][-._:/A-Za-z0-9]*$")] | None = Field(
        default=None, description="Model name clients send; defaults to the resource name."
    )
    runtime: Runtime = Field(
        default=Runtime.TRANSFORMERS, description="transformers (alpaca serve, CPU or GPU), vllm (GPU) or llama-cpp (llama.cpp's llama-server "
        "on a GGUF file, CPU: the builtin model, a source with ggufFile, or a FineTune with export.gguf)."
    )
    dtype: Dtype = Field(
        default=Dtype.AUTO,
        description="Type of the weights and activations. auto: for transformers float32 on CPU (answers equal "
        "transformers' generate) and bfloat16 on GPU; for vllm vLLM's own auto (the checkpoint's type, float16 for a "
        "float32 one). bfloat16 on a CPU with bf16 instructions (AVX512-BF16, AMX) serves about 2-3x faster than "
        "float32, with answers that may differ slightly. llama-cpp: auto only (a GGUF file carries its own types).",
    )
    replicas: int = Field(default=1, ge=0, le=1000, description="Pods serving the model.")
    gpus_per_replica: int = Field(
        default=0, ge=0, le=16, description="GPUs per pod (vLLM tensor parallel size). 0 serves on CPU."
    )
    gpu_type: Annotated[str, Field(max_length=128)] = Field(
        default="nvidia-a100-80gb", description="GPU type, the key of the operator's price table."
    )
    gpu_hour_usd: USD | None = Field(
        default=None, alias="gpuHourUSD", description="Price of one GPU-hour; falls back to the operator's price table."
    )
    replica_hour_usd: USD | None = Field(
        default=None, alias="replicaHourUSD", description="Price of one pod-hour beside GPUs (e.g. a CPU node)."
    )
    batching: Batching = Field(default_factory=Batching, description="Dynamic batching and queue bounds.")
    auth: Auth | None = Field(default=None, description="Bearer-token auth on /v1.")
    resources: ComputeResources | None = Field(default=None, description="CPU and memory per pod.")
    placement: Placement | None = Field(default=None, description="Node selector, tolerations and affinity.")
    image: ShortStr | None = Field(default=None, description="Overrides the operator's serve (or vLLM) image.")
    network_policy: NetworkPolicy | None = Field(
        default=None, description="When set, a NetworkPolicy lets only the given peers reach the server.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="When set, an HPA scales the Deployment between minReplicas and maxReplicas and replicas is no longer "
        "written to it (the HPA owns the count).",
    )
    adapters: Annotated[list[Adapter], Field(max_length=32)] = Field(
        default_factory=list,
        description="LoRA adapters (FineTunes with method lora on the same base) served beside the base model, one model name each.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    queue: Queue | None = Field(
        default=None, description="A Kueue queue for the Deployment; falls back to the operator's default queue.",
    )


class ServedAdapter(StatusModel):
    name: ShortStr = Field(description="The model name clients send.")
    model: Artifact = Field(description="The adapter folder in its FineTune's output.")


class ModelServerStatus(StatusBase):
    phase: ServerPhase | None = Field(default=None, description="Pending, Progressing, Ready, Failed, or Blocked (a child the API server refused for now: quota, policy).")
    url: Annotated[str, Field(max_length=2048)] | None = Field(default=None, description="In-cluster base URL of the API.")
    replicas: int | None = Field(default=None, ge=0, description="Pods asked for.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Pods ready to serve.")
    model: Artifact | None = Field(default=None, description="The model being served.")
    served_model_name: ShortStr | None = Field(default=None, description="The name clients send as model.")
    gpu_hours: float | None = Field(default=None, ge=0, alias="gpuHours", description="GPU-hours used so far.")
    deployment_name: ShortStr | None = Field(default=None, description="The Deployment.")
    autoscaler_name: ShortStr | None = Field(default=None, description="The HorizontalPodAutoscaler, while autoscaling is on.")
    selector: Annotated[str, Field(max_length=1024)] | None = Field(
        default=None, description="Label selector of the server's pods, as a string (the scale subresource's labelSelector).",
    )
    adapters: Annotated[list[ServedAdapter], Field(max_length=32)] | None = Field(
        default=None, description="The adapters being served, each pinned to its FineTune's output.",
    )


class ModelServer(Resource[ModelServerSpec, ModelServerStatus]):
    api_version: Literal["alpaca.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["ModelServer"] = "ModelServer"
