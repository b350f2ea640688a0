"""Inputs a workload reads: a dataset or model produced by another resource, or named directly.

An upstream resource's output is reached the way it was written: a PVC folder is mounted
read-only (what the upstream workload reported under the folder's public name, pvc://claim/subPath,
or under its own output mount as workloads of earlier releases did, is rewritten to the consumer's
mount), and a URI is passed as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..api.common import Artifact, ConfigMapKeyRef, ModelSource, PVCLocation, SecretKeyRef, Storage
from ..api.endpoint import Endpoint as EndpointSpec
from ..api.endpoint import TokenPricing
from ..api.finetune import DatasetSource
from ..api.instructdataset import PromptTemplate
from ..api.workloads import DATASET_FILE, ResolvedModel
from ..settings import OperatorSettings
from .common import CONFIG_DIR, DATASET_MOUNT, MODEL_MOUNT, OUTPUT_MOUNT, Mounts, pvc_mount, pvc_uri

PROMPT_DIR = f"{CONFIG_DIR}/prompt"
PROMPT_FILE = "prompt.txt"
PROMPT_MOUNT = "/var/lib/alpaca/prompt"


@dataclass(frozen=True)
class Input:
    """A file or folder as the workload sees it, what to mount for it, and what to pin in status."""

    location: str
    mounts: Mounts = field(default_factory=Mounts)
    pinned: Artifact | None = None


@dataclass(frozen=True)
class TeacherServer:
    """A Ready ModelServer used as a teacher."""

    name: str
    url: str
    served_model_name: str
    api_key_secret_ref: SecretKeyRef | None = None
    hourly_usd: float = 0.0


@dataclass(frozen=True)
class EndpointTarget:
    """An OpenAI-compatible API as a workload asks it: URL, model, prices and the key's Secret."""

    url: str
    model: str
    pricing: TokenPricing
    api_key: SecretKeyRef | None
    server: str | None = None  # the ModelServer behind it, if any


def resolve_endpoint(
    field_name: str, spec: EndpointSpec, settings: OperatorSettings, server: TeacherServer | None, error: type[ValueError]
) -> EndpointTarget:
    """What to ask for an endpoint in a spec; `server` is its ModelServer once Ready. Raises `error`
    naming `field_name` for a spec the workload could not run with."""
    if spec.model_server_ref is not None:
        if server is None:
            raise error(f"{field_name}.modelServerRef: the ModelServer {spec.model_server_ref.name!r} is not resolved")
        # In-cluster servers are free per token: their GPU time is priced instead.
        return EndpointTarget(
            server.url, spec.model or server.served_model_name, TokenPricing(), server.api_key_secret_ref, server.name
        )
    if spec.base_url is None or spec.model is None:
        raise error(f"{field_name}: baseURL and model are required without modelServerRef")
    pricing = spec.pricing or settings.token_price(spec.model) or TokenPricing()
    return EndpointTarget(spec.base_url, spec.model, pricing, spec.api_key_secret_ref)


def config_map_file(volume: str, ref: ConfigMapKeyRef, folder: str, file_name: str) -> Mounts:
    """A ConfigMap key mounted read-only as `folder`/`file_name`."""
    return Mounts(
        [{"name": volume, "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": file_name}]}}],
        [{"name": volume, "mountPath": folder, "readOnly": True}],
    )


class UnreachableArtifact(ValueError):
    """An upstream reported its artifact outside the output its spec names, where a consumer's
    mount of that output cannot reach it (another claim, another folder, a '..' segment)."""


def _relative(reported: str, public: str) -> str | None:
    """`reported` relative to the upstream's output, by its public name or (workloads of earlier
    releases) its pod's mount path; None when it is neither form."""
    for prefix in (public, OUTPUT_MOUNT):
        if reported == prefix or reported.startswith(f"{prefix}/"):
            return reported[len(prefix):].strip("/")
    if reported.startswith("pvc://"):
        raise UnreachableArtifact(f"reported {reported}, which is not inside its output {public}")
    return None


def _rewrite(location: PVCLocation, reported: str | None, mount_path: str, default_relative: str) -> tuple[str, str]:
    """(the consumer's path to the artifact, its public name) for an upstream PVC output."""
    public = pvc_uri(location.claim_name, location.sub_path)
    relative = _relative(reported, public) if reported else None
    if relative is None:
        relative = default_relative
    if ".." in relative.split("/"):
        raise UnreachableArtifact(f"reported {reported}, which leaves its output {public}")
    return f"{mount_path}/{relative}".rstrip("/"), pvc_uri(location.claim_name, location.sub_path, relative)


def upstream_output(
    storage: Storage, artifact: Artifact | None, *, mount_path: str, volume: str, default_relative: str
) -> Input:
    """The output of an upstream resource (its spec.output plus the artifact its workload reported),
    pinned by its public name. Raises UnreachableArtifact for an artifact reported elsewhere."""
    if storage.pvc is not None:
        location, public = _rewrite(storage.pvc, artifact.uri if artifact else None, mount_path, default_relative)
        pinned = Artifact(uri=public, sha256=artifact.sha256 if artifact else None)
        return Input(location, pvc_mount(volume, storage.pvc, mount_path, read_only=True), pinned)
    assert storage.uri is not None
    if artifact is not None and artifact.uri.startswith("pvc://"):
        raise UnreachableArtifact(f"reported {artifact.uri}, but its output is {storage.uri}, not a claim")
    if artifact is not None and "://" in artifact.uri:
        location = artifact.uri
    else:
        location = f"{storage.uri.rstrip('/')}/{default_relative}".rstrip("/")
    return Input(location, Mounts(), Artifact(uri=location, sha256=artifact.sha256 if artifact else None))


def dataset_from_upstream(storage: Storage, artifact: Artifact | None) -> Input:
    return upstream_output(storage, artifact, mount_path=DATASET_MOUNT, volume="dataset", default_relative=DATASET_FILE)


def dataset_direct(source: DatasetSource) -> Input:
    """A dataset named by URI or PVC file in the FineTune spec (no upstream resource)."""
    if source.uri is not None:
        return Input(source.uri, Mounts(), Artifact(uri=source.uri, sha256=source.sha256))
    assert source.pvc is not None
    mounts = pvc_mount("dataset", PVCLocation(claim_name=source.pvc.claim_name), DATASET_MOUNT, read_only=True)
    location = f"{DATASET_MOUNT}/{source.pvc.path}"
    return Input(location, mounts, Artifact(uri=f"pvc://{source.pvc.claim_name}/{source.pvc.path}", sha256=source.sha256))


def model_from_upstream(storage: Storage, artifact: Artifact | None) -> Input:
    return upstream_output(storage, artifact, mount_path=MODEL_MOUNT, volume="model", default_relative="")


def model_source(source: ModelSource, mount_path: str = MODEL_MOUNT) -> tuple[ResolvedModel, Mounts]:
    """A ModelSource as the workload loads it."""
    if source.builtin is not None:
        return ResolvedModel(builtin=source.builtin.value, gguf_file=source.gguf_file), Mounts()
    if source.pvc is not None:
        return (
            ResolvedModel(location=mount_path, gguf_file=source.gguf_file),
            pvc_mount("model", source.pvc, mount_path, read_only=True),
        )
    assert source.uri is not None
    return ResolvedModel(location=source.uri, gguf_file=source.gguf_file), Mounts()


def prompt_template(template: PromptTemplate) -> Input:
    """A prompt template as the generation pod reads it: a ConfigMap key or a PVC file mounted
    read-only, a URI passed as is (the workload reads it through fsspec)."""
    if template.config_map_ref is not None:
        ref = template.config_map_ref
        return Input(
            f"{PROMPT_DIR}/{PROMPT_FILE}",
            config_map_file("prompt", ref, PROMPT_DIR, PROMPT_FILE),
        )
    if template.pvc is not None:
        mounts = pvc_mount("prompt", PVCLocation(claim_name=template.pvc.claim_name), PROMPT_MOUNT, read_only=True)
        return Input(f"{PROMPT_MOUNT}/{template.pvc.path}", mounts)
    assert template.uri is not None  # the CRD's CEL rule: exactly one source
    return Input(template.uri)
