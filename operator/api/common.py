"""Building blocks shared by the three resources: storage, references, placement, conditions."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field

from .base import ApiModel, ObjectName, ShortStr, StatusModel, UriStr, cel

# Object stores are reached through fsspec; file:// is for local mode and for mounted volumes.
# The schemes the workload images carry a filesystem for (fsspec's own file://, s3fs for s3://,
# which also serves S3-compatible stores such as MinIO): an output the pods could not write is
# refused at admission instead of failing in the pod.
URI_PATTERN = r"^(file|s3)://.+$"


class LocalObjectReference(ApiModel):
    """A reference to another alpaca.dev resource in the same namespace."""

    name: ObjectName = Field(description="Name of the referenced resource in the same namespace.")


class SecretKeyRef(ApiModel):
    """A key inside a Secret in the same namespace. Its value is only ever passed as an env var."""

    name: ObjectName = Field(description="Name of the Secret in the same namespace.")
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key within the Secret."
    )


class ConfigMapKeyRef(ApiModel):
    """A key inside a ConfigMap in the same namespace."""

    name: ObjectName = Field(description="Name of the ConfigMap in the same namespace.")
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")] = Field(
        description="Key within the ConfigMap."
    )


_INSIDE_MESSAGE = "must stay inside the volume: a relative path with no '..' segment"


def _inside_the_volume(path: str) -> str:
    if ".." in path.split("/"):
        raise ValueError(_INSIDE_MESSAGE)
    return path


# A path inside a volume. The API server checks it with the CEL rule (admission), pydantic with the
# validator (local mode, and anything built from a model): the same rule, the same message.
VolumePath = Annotated[
    str,
    AfterValidator(_inside_the_volume),
    Field(
        max_length=1024,
        pattern=r"^[^/].*$|^$",
        json_schema_extra={"x-kubernetes-validations": [cel(
            "!(self == '..' || self.startsWith('../') || self.endsWith('/..') || self.contains('/../'))", _INSIDE_MESSAGE,
        )]},
    ),
]


class PVCLocation(ApiModel):
    """A folder on a PersistentVolumeClaim."""

    claim_name: ObjectName = Field(description="Name of the PersistentVolumeClaim in the same namespace.")
    sub_path: VolumePath = Field(
        default="",
        description="Folder inside the volume (relative, no leading slash). Empty means the volume root.",
    )


class Storage(ApiModel):
    """Where a resource's output lives: a folder on a PVC, or an object-store URI (fsspec)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.pvc) != has(self.uri)", "exactly one of pvc or uri must be set"),
            ]
        }
    )

    pvc: PVCLocation | None = Field(
        default=None,
        description="A folder on a PersistentVolumeClaim. Use a ReadWriteMany claim when training spans nodes.",
    )
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        default=None,
        description="An s3:// (or S3-compatible) or file:// URI read and written through fsspec, e.g. s3://bucket/prefix.",
    )


class BuiltinModel(str, Enum):
    """Models that ship inside the workload images (no download at run time)."""

    SMOLLM2_135M_INSTRUCT = "smollm2-135m-instruct"


class ModelSource(ApiModel):
    """A model to load: shipped with the image, on a PVC, or at a URI; optionally a GGUF file inside it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.builtin) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                    "exactly one of builtin, pvc or uri must be set",
                ),
            ]
        }
    )

    builtin: BuiltinModel | None = Field(
        default=None,
        description="A model shipped with the images: smollm2-135m-instruct (SmolLM2-135M-Instruct, LLaMA architecture).",
    )
    pvc: PVCLocation | None = Field(default=None, description="A Hugging Face model folder on a PVC.")
    uri: Annotated[str, Field(max_length=2048, pattern=URI_PATTERN)] | None = Field(
        default=None, description="A Hugging Face model folder at an fsspec URI."
    )
    gguf_file: Annotated[str, Field(max_length=253, pattern=r"^[^/]+\.gguf$")] | None = Field(
        default=None, description="A GGUF file inside the folder, loaded through transformers' gguf_file support."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration, as in a Pod spec."""

    key: ShortStr | None = Field(default=None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: ShortStr | None = Field(default=None, description="Taint value the toleration matches.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class Placement(ApiModel):
    """Where pods go. Empty fields fall back to the operator-wide defaults for the GPU pool."""

    node_selector: dict[str, ShortStr] | None = Field(
        default=None,
        description="Node labels the pods require. Falls back to the operator's GPU-pool default.",
        json_schema_extra={"maxProperties": 32},
    )
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = Field(
        default=None, description="Tolerations for tainted GPU nodes. Falls back to the operator's default."
    )
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes Affinity object, passed to the pods as is."
    )


class ComputeResources(ApiModel):
    """CPU and memory per pod (GPUs are declared by each resource on its own terms)."""

    cpu: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?m?$")] | None = Field(
        default=None, description="CPU request and limit per pod, e.g. '8' or '500m'."
    )
    memory: Annotated[str, Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$")] | None = Field(
        default=None, description="Memory request and limit per pod, e.g. '64Gi'."
    )


# A Kubernetes label value that is not empty: what Kueue reads a queue and a priority class from.
LabelValue = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")]


class Queue(ApiModel):
    """A Kueue LocalQueue (and optional WorkloadPriorityClass) the top-level child is labelled with.

    The operator only labels: Kueue's webhook suspends the child until the queue admits it.
    """

    name: LabelValue = Field(description="Name of the Kueue LocalQueue in this namespace (label kueue.x-k8s.io/queue-name).")
    priority_class: LabelValue | None = Field(
        default=None, description="A Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class).",
    )


USD = Annotated[float, Field(ge=0, le=1e9)]


class ConditionStatus(str, Enum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A condition in the shape of metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=r"^[A-Za-z]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")] = Field(
        description="CamelCase condition type, e.g. Ready or DatasetReady."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")] = Field(
        description="CamelCase reason for the last transition."
    )
    message: Annotated[str, Field(max_length=32768)] = Field(default="", description="Human-readable detail.")
    last_transition_time: Annotated[str, Field(max_length=64)] = Field(
        description="When status last changed (RFC 3339).", json_schema_extra={"format": "date-time"}
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation the condition was computed from."
    )


class Phase(str, Enum):
    """Lifecycle of a batch resource (InstructDataset, FineTune). Conditions carry the details."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    BLOCKED = "Blocked"  # a child the API server refused for now (quota, policy); retried with backoff


class Artifact(StatusModel):
    """An output pinned by content: where it is and its sha256."""

    uri: Annotated[str, Field(max_length=2048)] = Field(description="Where the artifact lives.")
    sha256: Annotated[str, Field(max_length=64, pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None, description="sha256 of the artifact's content, for pinning by the resources that consume it."
    )
    size_bytes: int | None = Field(default=None, ge=0, description="Size in bytes.")


class StatusBase(StatusModel):
    """Fields every status has."""

    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status was computed from."
    )
    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        description="Current conditions; Ready summarises them.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    cost_usd: USD | None = Field(default=None, alias="costUSD", description="Cost so far in US dollars.")
    accrued_until: Annotated[str, Field(max_length=64)] | None = Field(
        default=None,
        description="Time-priced work (GPU-hours, a teacher's time) is counted in this status up to this moment; "
        "nothing before it is ever counted again.",
        json_schema_extra={"format": "date-time"},
    )
    message: Annotated[str, Field(max_length=32768)] | None = Field(
        default=None, description="The latest human-readable summary."
    )
