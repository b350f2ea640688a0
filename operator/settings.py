"""Operator-wide settings: images, prices, GPU-pool placement, and how the operator runs.

They come from one YAML or JSON file (the Helm chart renders its values into it), so prices and
images change without a code change. Every field has a default, so an empty file is valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from . import __version__
from .api.base import ApiModel
from .api.common import Queue, Toleration
from .api.instructdataset import TokenPricing

Price = Annotated[float, Field(ge=0, le=1e6)]


class Images(ApiModel):
    """Container images of the workloads (a resource's spec.image overrides them)."""

    generate: str = f"ghcr.io/alpaca-operator/generate:{__version__}"
    train: str = f"ghcr.io/alpaca-operator/train:{__version__}"
    serve: str = f"ghcr.io/alpaca-operator/serve:{__version__}"
    # `alpaca evaluate` only calls OpenAI-compatible APIs, as generation does: the generate image carries it.
    evaluate: str = f"ghcr.io/alpaca-operator/generate:{__version__}"
    vllm: str = "docker.io/vllm/vllm-openai:v0.10.2"
    llama_cpp: str = f"ghcr.io/alpaca-operator/llama-cpp:{__version__}"
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class GPUPool(ApiModel):
    """Where pods asking for one GPU type go, unless their spec says otherwise."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None


class LeaderElection(ApiModel):
    """Timing of the Lease that picks the one active replica (client-go's defaults)."""

    lease_duration_seconds: float = Field(
        default=15.0, gt=0, le=3600,
        description="How long followers wait after the last renewal they saw before taking over.",
    )
    renew_deadline_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="The leader stops writing when it could not renew for this long (less than the duration).",
    )
    retry_period_seconds: float = Field(default=2.0, gt=0, le=600, description="How often to renew or try to acquire.")

    @model_validator(mode="after")
    def _ordered(self) -> LeaderElection:
        if not self.lease_duration_seconds > self.renew_deadline_seconds > self.retry_period_seconds:
            raise ValueError("leaseDurationSeconds > renewDeadlineSeconds > retryPeriodSeconds is required")
        return self


class TeacherHosts(ApiModel):
    """Where an InstructDataset may send its teacher API key (operator/teacher_hosts.py)."""

    allowed: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=list,
        description="Host patterns (fnmatch, e.g. api.openai.com, *.example.com); empty allows any host but the ones below.",
    )
    allow_link_local: bool = Field(
        default=False, description="Allow link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, metadata.google.internal).",
    )


class OperatorSettings(ApiModel):
    images: Images = Field(default_factory=Images)
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means all namespaces."
    )
    gpu_hour_usd: dict[str, Price] = Field(
        default_factory=dict, alias="gpuHourUSD", description="Price of one GPU-hour by GPU type."
    )
    token_prices: dict[str, TokenPricing] = Field(
        default_factory=dict, description="Token prices of API models by name (teachers, evaluation contestants and judges)."
    )
    gpu_pools: dict[str, GPUPool] = Field(
        default_factory=dict, description="Default node selector, tolerations and affinity by GPU type."
    )
    workload_service_account: str = Field(
        default="alpaca-workload", min_length=1, max_length=253,
        description="ServiceAccount (and Role, RoleBinding) the workload pods run as in each namespace.",
    )
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="Prometheus port; 0 turns metrics off.")
    resync_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="How often each resource's observed state is written into its status (level-based).",
    )
    cost_interval_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="How often running GPU time is added to the cost."
    )
    request_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    watch_inactivity_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600,
        description="Restart a watch that has been silent this long (idle watches can go deaf).",
    )
    workers: int = Field(default=16, ge=1, le=256, description="Threads running the synchronous handlers.")
    leader_election: LeaderElection = Field(default_factory=LeaderElection)
    teacher_hosts: TeacherHosts = Field(default_factory=TeacherHosts)
    queue: Queue | None = Field(
        default=None,
        description="The Kueue queue of every top-level child whose resource names none (label kueue.x-k8s.io/queue-name).",
    )

    def gpu_price(self, gpu_type: str) -> float | None:
        return self.gpu_hour_usd.get(gpu_type)

    def token_price(self, model: str) -> TokenPricing | None:
        return self.token_prices.get(model)


class SettingsError(ValueError):
    """A settings file that cannot be used, naming the file and the fields at fault."""


def load_settings(path: str | Path | None) -> OperatorSettings:
    """Settings from a YAML or JSON file (JSON is YAML); None gives the defaults."""
    if path is None:
        return OperatorSettings()
    source = Path(path)
    try:
        text = source.read_text()
    except OSError as exc:
        raise SettingsError(f"{source}: cannot read settings: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text) if source.suffix != ".json" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{source}: not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: the settings must be a mapping, got {type(data).__name__}")
    try:
        return OperatorSettings.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in e['loc'])}: {'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"{source}: invalid settings:\n{problems}") from None
