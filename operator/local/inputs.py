"""Local mode's side of the workload configs: what finished steps offer, and folders for volumes.

The configs themselves come from the builders' functions, the same ones the operator puts into
its ConfigMaps (`generate_config`, `train_config`, `serve_config`); local mode only answers the
questions those functions leave to an applier (a `Where`): PVCs and file:// URIs are folders, a
Secret key is a local environment variable, a teacher or model is what an earlier step produced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..api import FineTuneSpec, InstructDatasetSpec, ModelServerSpec
from ..api.common import Artifact, SecretKeyRef
from ..api.modelserver import Runtime
from ..api.workloads import DATASET_FILE, GenerateConfig, ResolvedModel, ServeConfig, TrainConfig
from ..builders import finetune, instructdataset, modelserver
from ..builders.common import Parent, Where
from ..builders.inputs import Input, TeacherServer
from ..manifests import Manifest, ManifestError
from ..settings import OperatorSettings
from .layout import Layout, secret_env_var

# Local resources have no namespace; the name only labels the (unused) status target.
LOCAL_NAMESPACE = "local"


@dataclass
class Outputs:
    """What a finished (or running, for servers) step offers to the steps after it."""

    location: str | None = None
    sha256: str | None = None
    # The artifact its result names (the results contract), as this machine reaches it
    # (Layout.resolve): what a later step reads, as the operator reads status.result.
    artifact: str | None = None
    url: str | None = None
    served_model_name: str | None = None
    summary: dict[str, object] = field(default_factory=dict)
    # A server's API key as [Secret name, key]: a teacher step sends it, as in the cluster.
    api_key_secret: list[str] | None = None


def where(layout: Layout) -> Where:
    return Where(
        output=layout.location,
        model=layout.model,
        secret_env=lambda ref, _cluster_env: secret_env_var(ref),
        seeds_uri=lambda uri: uri.removeprefix("file://"),
        seeds_config_map=None,
        reports=False,
        host="127.0.0.1",
    )


def running_server(name: str, upstream: dict[tuple[str, str], Outputs]) -> TeacherServer:
    """A ModelServer an earlier step started, as an endpoint to ask."""
    running = upstream[("ModelServer", name)]
    assert running.url and running.served_model_name
    auth = SecretKeyRef(name=running.api_key_secret[0], key=running.api_key_secret[1]) if running.api_key_secret else None
    return TeacherServer(name=name, url=running.url, served_model_name=running.served_model_name, api_key_secret_ref=auth)


def _parent(manifest: Manifest, plural: str) -> Parent:
    return Parent(manifest.name, LOCAL_NAMESPACE, plural)


def generate_config(
    manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs], settings: OperatorSettings | None = None
) -> GenerateConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, InstructDatasetSpec)
    ref = spec.teacher.model_server_ref
    server = running_server(ref.name, upstream) if ref is not None else None
    prompt = None
    if (template := spec.prompt_template) is not None:
        if template.config_map_ref is not None:
            raise ManifestError(manifest.source, f"InstructDataset {manifest.name!r}", [
                "spec.promptTemplate.configMapRef: ConfigMaps exist only in a cluster; use promptTemplate.uri (file://...) or pvc locally"
            ])
        if template.pvc is not None:
            prompt = Input(str(layout.pvc_path(template.pvc.claim_name, template.pvc.path)))
        else:
            assert template.uri is not None  # the CEL rule: exactly one source
            prompt = Input(template.uri.removeprefix("file://"))
    try:
        teacher = instructdataset.resolve_teacher(spec, settings or OperatorSettings(), server)
        return instructdataset.generate_config(_parent(manifest, "instructdatasets"), spec, teacher, where(layout), prompt)
    except instructdataset.TeacherUnresolved as exc:
        field_name = "spec.seedTasks.configMapRef" if "configMapRef" in str(exc) else "spec.teacher"
        raise ManifestError(manifest.source, f"InstructDataset {manifest.name!r}", [f"{field_name}: {exc}"]) from None


def train_config(manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs]) -> TrainConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, FineTuneSpec)
    source = spec.dataset
    if source.instruct_dataset_ref is not None:
        dataset = upstream[("InstructDataset", source.instruct_dataset_ref.name)]
        assert dataset.location
        path, digest = dataset.artifact or str(Path(dataset.location) / DATASET_FILE), dataset.sha256
    elif source.pvc is not None:
        path, digest = str(layout.pvc_path(source.pvc.claim_name, source.pvc.path)), source.sha256
    else:
        assert source.uri is not None
        path, digest = source.uri.removeprefix("file://"), source.sha256
    return finetune.train_config(_parent(manifest, "finetunes"), spec, Input(path, pinned=Artifact(uri=path, sha256=digest)), where(layout))


def _model_folder(trained: Outputs) -> str:
    return trained.artifact or trained.location or ""


def serve_config(manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs], port: int) -> ServeConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, ModelServerSpec)
    if spec.model.fine_tune_ref is not None:
        trained = upstream[("FineTune", spec.model.fine_tune_ref.name)]
        assert trained.location
        # The GGUF file the FineTune's manifest says it wrote (spec.export.gguf); without one,
        # runtime llama-cpp refuses the folder naming that field (builders.modelserver.gguf_path).
        exported = trained.summary.get("gguf") if spec.runtime is Runtime.LLAMA_CPP else None
        model = ResolvedModel(location=_model_folder(trained), gguf_file=exported["file"] if isinstance(exported, dict) else None)
    else:
        assert spec.model.source is not None
        model = layout.model(spec.model.source)
    # Each adapter is its LoRA FineTune's adapter/ folder (the reconcile checks method and base).
    adapters = tuple(
        modelserver.adapter_input(a.name, i, Input(_model_folder(upstream[("FineTune", a.fine_tune_ref.name)])), 8)
        for i, a in enumerate(spec.adapters)
    )
    return modelserver.serve_config(_parent(manifest, "modelservers"), spec, model, where(layout), port, adapters=adapters)
