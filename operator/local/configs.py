"""Workload configs for local mode: the same GenerateConfig / TrainConfig / ServeConfig the
operator hands its pods, with folders and localhost URLs in place of volumes and Services."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..api import FineTuneSpec, InstructDatasetSpec, ModelServerSpec
from ..api.instructdataset import TokenPricing
from ..api.workloads import DATASET_FILE, GenerateConfig, ResolvedModel, ServeConfig, TrainConfig
from ..manifests import Manifest, ManifestError
from .layout import Layout, secret_env_var


@dataclass
class Outputs:
    """What a finished (or running, for servers) step offers to the steps after it."""

    location: str | None = None
    sha256: str | None = None
    url: str | None = None
    served_model_name: str | None = None
    summary: dict[str, object] = field(default_factory=dict)


def generate_config(manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs]) -> GenerateConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, InstructDatasetSpec)
    teacher = spec.teacher
    if teacher.model_server_ref is not None:
        server = upstream[("ModelServer", teacher.model_server_ref.name)]
        assert server.url and server.served_model_name
        url, model, key_env = server.url, teacher.model or server.served_model_name, None
    else:
        assert teacher.base_url and teacher.model
        url, model = teacher.base_url, teacher.model
        key_env = secret_env_var(teacher.api_key_secret_ref) if teacher.api_key_secret_ref else None
    seeds: str | None = None
    if spec.seed_tasks.config_map_ref is not None:
        raise ManifestError(
            manifest.source, f"InstructDataset {manifest.name!r}",
            ["spec.seedTasks.configMapRef: ConfigMaps exist only in a cluster; use seedTasks.uri (file://...) locally"],
        )
    if spec.seed_tasks.uri is not None:
        seeds = spec.seed_tasks.uri.removeprefix("file://")
    return GenerateConfig(
        name=manifest.name,
        spec=spec,
        output=layout.location(spec.output),
        teacher_url=url,
        teacher_model=model,
        api_key_env=key_env,
        pricing=teacher.pricing or TokenPricing(),
        seed_tasks=seeds,
    )


def train_config(manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs]) -> TrainConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, FineTuneSpec)
    source = spec.dataset
    if source.instruct_dataset_ref is not None:
        dataset = upstream[("InstructDataset", source.instruct_dataset_ref.name)]
        assert dataset.location
        path, digest = str(Path(dataset.location) / DATASET_FILE), dataset.sha256
    elif source.pvc is not None:
        path, digest = str(layout.pvc_path(source.pvc.claim_name, source.pvc.path)), source.sha256
    else:
        assert source.uri is not None
        path, digest = source.uri.removeprefix("file://"), source.sha256
    return TrainConfig(
        name=manifest.name,
        spec=spec,
        dataset=path,
        dataset_sha256=digest,
        base_model=layout.model(spec.base_model),
        output=layout.location(spec.output),
    )


def serve_config(
    manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs], port: int
) -> ServeConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, ModelServerSpec)
    if spec.model.fine_tune_ref is not None:
        trained = upstream[("FineTune", spec.model.fine_tune_ref.name)]
        assert trained.location
        model = ResolvedModel(location=trained.location)
    else:
        assert spec.model.source is not None
        model = layout.model(spec.model.source)
    key_env = None
    if spec.auth and spec.auth.api_key_secret_ref:
        key_env = secret_env_var(spec.auth.api_key_secret_ref)
    return ServeConfig(
        name=manifest.name,
        spec=spec,
        model=model,
        served_model_name=spec.served_model_name or manifest.name,
        host="127.0.0.1",
        port=port,
        api_key_env=key_env,
    )
