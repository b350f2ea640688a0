"""FineTune: supervised fine-tuning of a base model on Alpaca-format data (FSDP or LoRA)."""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from .base import API_VERSION, ApiModel, ShortStr, StatusModel, cel
from .common import (
    USD,
    Artifact,
    BuiltinModel,
    ComputeResources,
    LocalObjectReference,
    ModelSource,
    Phase,
    Placement,
    Queue,
    StatusBase,
    Storage,
    URI_PATTERN,
    VolumePath,
)
from .resource import Resource
from .results import WorkloadResult


# A word in braces: what a template author writes for a placeholder, known or misspelt.
_WORD_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Method(str, Enum):
    FULL = "full"
    LORA = "lora"


class Scheduler(str, Enum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class Backend(str, Enum):
    """The Kubeflow API that runs the training pods."""

    PYTORCHJOB = "pytorchjob"  # Training Operator v1, kubeflow.org/v1 PyTorchJob
    TRAINJOB = "trainjob"  # Trainer v2, trainer.kubeflow.org/v1alpha1 TrainJob on a training runtime


class RuntimeKind(str, Enum):
    CLUSTER = "ClusterTrainingRuntime"
    NAMESPACED = "TrainingRuntime"


class Precision(str, Enum):
    BF16 = "bf16"
    FP32 = "fp32"


class GGUFType(str, Enum):
    """How a GGUF export stores its weight matrices (norms stay float32 in each)."""

    F32 = "f32"
    F16 = "f16"
    Q8_0 = "q8_0"


GGUF_FILE = "model.gguf"  # in the output folder, with spec.export.gguf


class Export(ApiModel):
    """Other formats written next to the Hugging Face model folder."""

    gguf: GGUFType | None = Field(
        default=None,
        description=(
            "Also write model.gguf (llama.cpp's format, what a ModelServer with runtime llama-cpp serves): "
            "f32 (greedy answers as transformers'), f16 (half the size; rounding may flip near-tied tokens) or q8_0."
        ),
    )


class DatasetSource(ApiModel):
    """Training data: an InstructDataset (waited for, then pinned by digest) or a JSONL file."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.instructDatasetRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
                    "exactly one of instructDatasetRef, uri or pvc must be set",
                ),
            ]
        }
    )

    instruct_dataset_ref: LocalObjectReference | None = Field(
        default=None, description="An InstructDataset in this namespace; training waits until it has Succeeded."
    )
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        default=None, description="An Alpaca-format JSONL file at an fsspec URI."
    )
    pvc: "PVCFile | None" = Field(default=None, description="An Alpaca-format JSONL file on a PVC.")
    sha256: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="Expected sha256 of the file; training refuses data that does not match."
    )


class PVCFile(ApiModel):
    """A file on a PersistentVolumeClaim."""

    claim_name: Annotated[str, Field(min_length=1, max_length=253)] = Field(description="Name of the claim.")
    path: Annotated[VolumePath, Field(min_length=1)] = Field(
        description="Path of the file inside the volume (relative)."
    )


DatasetSource.model_rebuild()


class LoRA(ApiModel):
    """Low-rank adapters (peft) instead of updating every weight."""

    r: int = Field(default=8, ge=1, le=1024, description="Rank of the adapters.")
    alpha: int = Field(default=16, ge=1, le=4096, description="Scaling numerator (alpha / r).")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: Annotated[list[Annotated[str, Field(max_length=128)]], Field(min_length=1, max_length=64)] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Names of the linear layers that get adapters.",
    )


class Hyperparameters(ApiModel):
    """The training recipe. Defaults are Stanford Alpaca's."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.globalBatchSize % self.microBatchSize == 0",
                    "globalBatchSize must be a multiple of microBatchSize",
                    field_path=".globalBatchSize",
                ),
            ]
        }
    )

    epochs: float = Field(default=3.0, gt=0, le=1000, description="Passes over the dataset.")
    learning_rate: float = Field(default=2e-5, gt=0, le=1, description="Peak learning rate (AdamW).")
    global_batch_size: int = Field(
        default=128, ge=1, le=65536, description="Examples per optimizer step across all devices (gradient accumulation fills the gap)."
    )
    micro_batch_size: int = Field(default=4, ge=1, le=4096, description="Examples per device per forward pass.")
    max_seq_length: int = Field(default=512, ge=16, le=131072, description="Tokens per example; longer ones are truncated.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Fraction of steps spent warming up.")
    lr_scheduler: Scheduler = Field(default=Scheduler.COSINE, description="cosine, linear or constant after warmup.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0, le=1000, description="Gradient clipping norm.")
    precision: Precision = Field(default=Precision.BF16, description="bf16 mixed precision on GPU; CPU runs use fp32.")
    tf32: bool = Field(default=True, description="Allow TF32 matmuls on Ampere and newer GPUs.")
    packing: bool = Field(
        default=True, description="Pack several examples into one row, attention kept inside each example."
    )
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations to save memory.")
    compile: bool = Field(
        default=False,
        description="torch.compile each decoder layer (GPU only): a 7B shape went from 35% to 41% MFU on one H200.",
    )
    seed: int = Field(default=42, ge=0, description="Random seed for data order and initialisation.")
    checkpoint_every_steps: int = Field(default=50, ge=1, le=1_000_000, description="Save a resumable checkpoint every N optimizer steps.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    validation_fraction: float = Field(
        default=0.03,
        ge=0,
        le=0.5,
        description=(
            "Fraction of the rows held out to measure a validation loss: at least 8, at most half, none under 16 rows; "
            "rows with the same instruction and input stay on one side. 0 trains on every row."
        ),
    )
    eval_every_steps: int = Field(
        default=100, ge=1, le=1_000_000, description="Measure the validation loss every N optimizer steps, and after the last one."
    )


class GPUs(ApiModel):
    """The accelerators: nodes x GPUs per node. Zero GPUs means a CPU run (gloo)."""

    nodes: int = Field(default=1, ge=1, le=512, description="Training pods: the PyTorchJob's Master + Workers, or the TrainJob's numNodes.")
    per_node: int = Field(default=8, ge=0, le=16, description="GPUs per pod (torchrun nproc per node).")
    type: Annotated[str, Field(max_length=128)] = Field(
        default="nvidia-a100-80gb", description="GPU type, the key of the operator's price table and GPU-pool defaults."
    )
    resource_name: Annotated[str, Field(max_length=253)] = Field(
        default="nvidia.com/gpu", description="Extended resource name requested per pod."
    )


class RunPolicy(ApiModel):
    """Passed to the PyTorchJob's runPolicy (a TrainJob takes activeDeadlineSeconds only)."""

    backoff_limit: int = Field(default=3, ge=0, le=100, description="Restarts before the job is Failed.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Hard time limit. A budget sets a tighter one when it allows less time."
    )
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, description="Delete the job this long after it ends.")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        default="None", description="Which pods to delete when the job ends (None keeps logs readable)."
    )


class RuntimeRef(ApiModel):
    """The Trainer v2 runtime a TrainJob runs on. Its trainer step must be a replicated job with a
    container, both named `node`, as in Trainer's own `torch-distributed`."""

    name: Annotated[str, Field(min_length=1, max_length=253)] = Field(
        default="torch-distributed", description="Name of the runtime."
    )
    kind: RuntimeKind = Field(
        default=RuntimeKind.CLUSTER,
        description="ClusterTrainingRuntime, or TrainingRuntime (in the FineTune's namespace).",
    )


_PLACEHOLDER_RULES = "only {instruction} and {input} are placeholders"


class PromptTemplate(ApiModel):
    """The instruction templates the model is trained with, stored with it (its chat template renders them).

    `{instruction}` and `{input}` are replaced by the task's text; every other character is kept as
    written, except that any other word in braces is refused as a misspelt placeholder.
    """

    with_input: Annotated[str, Field(min_length=1, max_length=8192)] = Field(
        description="Template for tasks with an input: holds {instruction} and {input}.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.contains('{instruction}') && self.contains('{input}')", "withInput must contain {instruction} and {input}"),
            ]
        },
    )
    without_input: Annotated[str, Field(min_length=1, max_length=8192)] = Field(
        description="Template for tasks without an input: holds {instruction}, and no {input}.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.contains('{instruction}') && !self.contains('{input}')", "withoutInput must contain {instruction} and not {input}"),
            ]
        },
    )

    @field_validator("with_input", "without_input")
    @classmethod
    def _placeholders(cls, value: str, info: ValidationInfo) -> str:
        field = info.field_name
        unknown = sorted(set(_WORD_PLACEHOLDER.findall(value)) - {"instruction", "input"})
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}: {_PLACEHOLDER_RULES}")
        if "{instruction}" not in value:
            raise ValueError("must contain the placeholder {instruction}")
        if field == "with_input" and "{input}" not in value:
            raise ValueError("must contain the placeholder {input}")
        if field == "without_input" and "{input}" in value:
            raise ValueError("must not contain {input}: it renders tasks that have none")
        return value


class FineTuneSpec(ApiModel):
    """Fine-tune a base model on instruction data, Alpaca style."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("self.method == 'lora' || !has(self.lora)", "lora is only allowed with method: lora", field_path=".lora"),
                cel(
                    "self.backend == 'trainjob' || !has(self.runtimeRef)",
                    "runtimeRef is only allowed with backend: trainjob",
                    field_path=".runtimeRef",
                ),
                # The field's own rule compares values; this one also stops it being added or removed
                # later, when training may already have run without (or with) the export.
                cel("has(self.export) == has(oldSelf.export)", "export is immutable", field_path=".export"),
            ]
        }
    )

    base_model: ModelSource = Field(
        default_factory=lambda: ModelSource(builtin=BuiltinModel.SMOLLM2_135M_INSTRUCT),
        description="The model to fine-tune.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "baseModel is immutable")]},
    )
    dataset: DatasetSource = Field(
        description="The training data.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "dataset is immutable")]},
    )
    method: Method = Field(
        default=Method.FULL,
        description="full (FSDP, every weight) or lora (adapters through peft).",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "method is immutable")]},
    )
    lora: LoRA | None = Field(default=None, description="LoRA settings, with method: lora.")
    prompt_template: PromptTemplate | None = Field(
        default=None,
        description="Instruction templates to train with; the project's own when unset. Written into the model's chat template.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "promptTemplate is immutable")]},
    )
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="The training recipe.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "hyperparameters are immutable")]},
    )
    gpus: GPUs = Field(default_factory=GPUs, description="Nodes and GPUs per node.")
    resources: ComputeResources | None = Field(default=None, description="CPU and memory per training pod.")
    placement: Placement | None = Field(default=None, description="Node selector, tolerations and affinity.")
    shm_size: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+([EPTGMK]i?)?$")] = Field(
        default="16Gi", description="Size of the memory-backed /dev/shm (NCCL and data loaders need it)."
    )
    gpu_hour_usd: USD | None = Field(
        default=None, alias="gpuHourUSD", description="Price of one GPU-hour; falls back to the operator's price table."
    )
    budget_usd: USD | None = Field(
        default=None, alias="budgetUSD", description="Stop training when the cost reaches this many US dollars."
    )
    backend: Backend = Field(
        default=Backend.PYTORCHJOB,
        description=(
            "pytorchjob (Kubeflow Training Operator, kubeflow.org/v1) or trainjob (Kubeflow Trainer v2, "
            "trainer.kubeflow.org/v1alpha1 TrainJob)."
        ),
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "backend is immutable")]},
    )
    runtime_ref: RuntimeRef | None = Field(
        default=None,
        description="With backend: trainjob, the training runtime; Trainer's torch-distributed ClusterTrainingRuntime when unset.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "runtimeRef is immutable")]},
    )
    run_policy: RunPolicy = Field(
        default_factory=RunPolicy,
        description=(
            "Restart and cleanup policy (PyTorchJob). A TrainJob takes activeDeadlineSeconds only: its runtime "
            "decides restarts and cleanup."
        ),
    )
    output: Storage = Field(
        description="Where the model, checkpoints, metrics and loss curve are written.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "output is immutable")]},
    )
    export: Export | None = Field(
        default=None,
        description="Formats written besides the model folder, e.g. {gguf: f16} for runtime llama-cpp.",
        json_schema_extra={"x-kubernetes-validations": [cel("self == oldSelf", "export is immutable")]},
    )
    image: ShortStr | None = Field(default=None, description="Overrides the operator's train image.")
    queue: Queue | None = Field(
        default=None, description="A Kueue queue for the top-level child; falls back to the operator's default queue.",
    )


class TrainingProgress(StatusModel):
    step: int = Field(default=0, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    epoch: float = Field(default=0.0, ge=0, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    tokens_per_second: float | None = Field(default=None, ge=0, description="Training throughput in real tokens.")
    validation_loss: float | None = Field(default=None, description="Latest loss on the held-out rows (response tokens).")
    validation_step: int | None = Field(default=None, ge=0, description="The optimizer step validationLoss was measured after.")


class FineTuneStatus(StatusBase):
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, Failed, or Blocked (a child the API server refused for now).")
    progress: TrainingProgress | None = Field(default=None, description="Live training progress.")
    dataset: Artifact | None = Field(default=None, description="The dataset consumed, pinned by sha256.")
    model: Artifact | None = Field(default=None, description="The fine-tuned model.")
    gpu_hours: float | None = Field(default=None, ge=0, alias="gpuHours", description="GPU-hours used so far.")
    result: WorkloadResult | None = Field(
        default=None, description="What the workload produced, written by the workload when it succeeded."
    )
    job_name: ShortStr | None = Field(default=None, description="The PyTorchJob or TrainJob.")
    start_time: Annotated[str, Field(max_length=64)] | None = Field(default=None, description="When training started.")
    completion_time: Annotated[str, Field(max_length=64)] | None = Field(default=None, description="When it finished.")


class FineTune(Resource[FineTuneSpec, FineTuneStatus]):
    api_version: Literal["alpaca.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["FineTune"] = "FineTune"
