"""The contract between the operator (or local mode) and the workloads it starts.

The operator resolves everything that needs the cluster (references, Secrets, prices, mount
paths) and hands each workload one of these as a JSON file; `alpaca generate|train|serve --config`
reads it back. Nothing secret is ever in here: API keys travel as the *name* of an env var.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .base import ApiModel, ShortStr
from .evaluation import EvaluationSpec
from .finetune import FineTuneSpec
from .instructdataset import InstructDatasetSpec, TokenPricing
from .modelserver import ModelServerSpec

# Where each workload puts its results inside its output location; consumers find them here.
# A FineTune's output folder is itself the Hugging Face model folder.
DATASET_FILE = "dataset.jsonl"
MANIFEST_FILE = "manifest.json"

# Folder path or fsspec URI: a PVC is mounted and appears as a path; local mode uses folders.
Location = Annotated[str, Field(min_length=1, max_length=4096)]

# A PVC output's public name, pvc://<claimName>/<subPath>: the workload reports its results under
# it, because the path its pod mounts the claim at is the same for every resource and means
# nothing outside the pod. Absent for URI outputs (their URI is public already) and in configs
# written before it existed.
PvcUri = Annotated[str, Field(max_length=4096, pattern=r"^pvc://[^/]+(/.*)?$")]
OUTPUT_URI_DESCRIPTION = "The output's public name when it is a PVC folder (pvc://claim/subPath), reported instead of its mount path."


class StatusTarget(ApiModel):
    """The resource a workload reports progress to (in-cluster credentials, status subresource)."""

    group: ShortStr = "alpaca.dev"
    version: ShortStr = "v1alpha1"
    plural: ShortStr
    namespace: ShortStr
    name: ShortStr


class ResolvedModel(ApiModel):
    """A model as a workload loads it: a folder (path or URI) and optionally a GGUF file inside it.

    `builtin` names a model shipped in the image; the workload finds its files itself.
    """

    location: Location | None = None
    gguf_file: ShortStr | None = None
    builtin: ShortStr | None = None


class GenerateConfig(ApiModel):
    name: ShortStr = Field(description="Name of the InstructDataset (for logs and the manifest).")
    spec: InstructDatasetSpec
    output: Location = Field(description="Folder or URI for dataset.jsonl, manifest.json and the checkpoint.")
    output_uri: PvcUri | None = Field(default=None, alias="outputURI", description=OUTPUT_URI_DESCRIPTION)
    teacher_url: Annotated[str, Field(max_length=2048)] = Field(alias="teacherURL")
    teacher_model: ShortStr
    api_key_env: ShortStr | None = Field(default=None, description="Env var holding the teacher's API key.")
    pricing: TokenPricing = Field(default_factory=TokenPricing, description="Resolved token prices.")
    seed_tasks: Location | None = Field(default=None, description="Seed tasks JSONL; None means the built-in set.")
    prompt_template: Location | None = Field(default=None, description="Prompt template text file; None means the built-in prompt.")
    status_target: StatusTarget | None = None


class TrainConfig(ApiModel):
    name: ShortStr
    spec: FineTuneSpec
    dataset: Location = Field(description="The Alpaca-format JSONL file.")
    dataset_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    base_model: ResolvedModel
    output: Location = Field(description="Folder or URI for the model, checkpoints, metrics and loss curve.")
    output_uri: PvcUri | None = Field(default=None, alias="outputURI", description=OUTPUT_URI_DESCRIPTION)
    status_target: StatusTarget | None = None


class ServeAdapter(ApiModel):
    """A LoRA adapter (a peft adapter folder) served on the base model under its own name."""

    name: ShortStr
    location: Location = Field(description="The adapter folder (adapter_config.json + weights), a path or URI.")


class ServeConfig(ApiModel):
    name: ShortStr
    spec: ModelServerSpec
    model: ResolvedModel
    served_model_name: ShortStr
    adapters: Annotated[list[ServeAdapter], Field(max_length=32)] = Field(
        default_factory=list, description="LoRA adapters on the base model, each chosen by its name as the request's model.",
    )
    host: ShortStr = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key_env: ShortStr | None = Field(default=None, description="Env var holding the Bearer token for /v1.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Serve /metrics on this port of its own (then not on the API port); None: on the API port.",
    )


class ResolvedEndpoint(ApiModel):
    """An OpenAI-compatible endpoint as a workload calls it; the key only as an env var's name."""

    url: Annotated[str, Field(max_length=2048)]
    model: ShortStr
    api_key_env: ShortStr | None = Field(default=None, description="Env var holding the API key.")
    pricing: TokenPricing = Field(default_factory=TokenPricing, description="Resolved token prices.")


class ResolvedContestant(ApiModel):
    """One side of an evaluation: an endpoint to ask, or a JSONL file of answers written beforehand."""

    label: ShortStr = Field(description="What it is, for the report: 'ModelServer/chat', a model name, a file.")
    endpoint: ResolvedEndpoint | None = None
    outputs: Location | None = Field(default=None, description="JSONL of instruction, input, output.")


class EvaluateConfig(ApiModel):
    name: ShortStr = Field(description="Name of the Evaluation (for logs and the report).")
    spec: EvaluationSpec
    output: Location = Field(description="Folder or URI for the report and the verdict journal.")
    output_uri: PvcUri | None = Field(default=None, alias="outputURI", description=OUTPUT_URI_DESCRIPTION)
    candidate: ResolvedContestant
    baseline: ResolvedContestant
    judge: ResolvedEndpoint
    tasks: Location | None = Field(default=None, description="Tasks JSONL; None means the built-in evaluation tasks.")
    status_target: StatusTarget | None = None
