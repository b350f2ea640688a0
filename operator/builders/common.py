"""Pieces every builder shares: the parent, mounts for storage, config files, placement, resources."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.base import ApiModel
from ..api.common import ComputeResources, ModelSource, Placement, PVCLocation, SecretKeyRef, Storage
from ..api.workloads import ResolvedModel, StatusTarget
from ..naming import GENERATION_ANNOTATION, SPEC_HASH_ANNOTATION, labels, spec_hash
from ..settings import GPUPool

Manifest = dict[str, Any]

CONFIG_DIR = "/etc/alpaca"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
CONFIG_KEY = "config.json"
OUTPUT_MOUNT = "/var/lib/alpaca/output"
DATASET_MOUNT = "/var/lib/alpaca/dataset"
MODEL_MOUNT = "/var/lib/alpaca/model"
SEEDS_DIR = "/etc/alpaca/seeds"

# Where pods read the config and secrets from: env var names are part of the workload contract.
TEACHER_API_KEY_ENV = "ALPACA_TEACHER_API_KEY"
SERVER_API_KEY_ENV = "ALPACA_SERVER_API_KEY"


@dataclass(frozen=True)
class Parent:
    """The resource being built for: enough to name, label and target its children."""

    name: str
    namespace: str
    plural: str
    generation: int | None = None

    def status_target(self) -> StatusTarget:
        return StatusTarget(plural=self.plural, namespace=self.namespace, name=self.name)


@dataclass(frozen=True)
class Where:
    """What differs between the cluster and local mode, and nothing else: how a workload reaches
    storage, secrets and seed tasks, and whether it reports to a resource. Every workload config
    is built by one function per kind (below and in the per-kind builders) given one of these.
    """

    output: Callable[[Storage], str]
    model: Callable[[ModelSource], ResolvedModel]
    # (the Secret key, the env var the cluster's pod spec uses) -> the env var the workload reads
    secret_env: Callable[[SecretKeyRef, str], str]
    # a seed-task URI -> what the workload opens; a ConfigMap key -> its mounted file (None: refused)
    seeds_uri: Callable[[str], str]
    seeds_config_map: str | None
    reports: bool
    host: str = "0.0.0.0"


@dataclass
class Mounts:
    """Volumes and the container's mounts of them, collected while a pod is built."""

    volumes: list[Manifest] = field(default_factory=list)
    mounts: list[Manifest] = field(default_factory=list)

    def add(self, volume: Manifest, mount: Manifest) -> None:
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        for index, known in enumerate(self.volumes):
            if claim is None or (known.get("persistentVolumeClaim") or {}).get("claimName") != claim:
                continue
            # One volume per claim: the kubelet mounts a claim once per pod, with the readOnly of
            # the last volume naming it, so a read-only input on the output's claim would make
            # the output read-only too. Each mount keeps its own readOnly.
            read_only = bool(known["persistentVolumeClaim"].get("readOnly") and volume["persistentVolumeClaim"].get("readOnly"))
            self.volumes[index] = {**known, "persistentVolumeClaim": {**known["persistentVolumeClaim"], "readOnly": read_only}}
            self.mounts.append({**mount, "name": known["name"]})
            return
        if all(v["name"] != volume["name"] for v in self.volumes):
            self.volumes.append(volume)
        self.mounts.append(mount)

    def extend(self, other: Mounts) -> None:
        for volume, mount in zip_mounts(other):
            self.add(volume, mount)


def zip_mounts(mounts: Mounts) -> list[tuple[Manifest, Manifest]]:
    by_name = {v["name"]: v for v in mounts.volumes}
    return [(by_name[m["name"]], m) for m in mounts.mounts]


def pvc_mount(volume_name: str, location: PVCLocation, mount_path: str, *, read_only: bool) -> Mounts:
    mount: Manifest = {"name": volume_name, "mountPath": mount_path, "readOnly": read_only}
    if location.sub_path:
        mount["subPath"] = location.sub_path
    volume = {"name": volume_name, "persistentVolumeClaim": {"claimName": location.claim_name, "readOnly": read_only}}
    return Mounts([volume], [mount])


def output_location(storage: Storage, mount_path: str = OUTPUT_MOUNT) -> tuple[str, Mounts]:
    """Where a workload writes: the mount path of a PVC folder, or the URI as is."""
    if storage.pvc is not None:
        return mount_path, pvc_mount("output", storage.pvc, mount_path, read_only=False)
    assert storage.uri is not None  # the CRD's CEL rule: exactly one of pvc or uri
    return storage.uri, Mounts()


def pvc_uri(claim: str, *parts: str) -> str:
    """A file or folder on a claim by its public name, pvc://<claim>/<path>, with no empty segment."""
    path = "/".join(p.strip("/") for p in parts if p.strip("/"))
    return f"pvc://{claim}/{path}" if path else f"pvc://{claim}"


def public_uri(storage: Storage) -> str | None:
    """The name a workload reports its output under when that is a PVC folder (every kind's config
    carries it); None for a URI output, which is its own public name."""
    return pvc_uri(storage.pvc.claim_name, storage.pvc.sub_path) if storage.pvc is not None else None


def config_map(parent: Parent, name: str, component: str, config: ApiModel) -> Manifest:
    """The workload's config file. It never holds a secret: keys travel as env var names."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": parent.namespace, "labels": labels(parent.name, component)},
        "data": {CONFIG_KEY: json.dumps(config.to_wire(), indent=2, sort_keys=True)},
    }


def config_mounts(config_map_name: str) -> Mounts:
    return Mounts(
        [{"name": "config", "configMap": {"name": config_map_name}}],
        [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
    )


def secret_env(env_name: str, secret_name: str, key: str) -> Manifest:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def compute_resources(resources: ComputeResources | None, extended: dict[str, int] | None = None) -> Manifest:
    """Requests equal to limits for CPU and memory (predictable pods); GPUs are limits only."""
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if resources is not None:
        for key, value in (("cpu", resources.cpu), ("memory", resources.memory)):
            if value is not None:
                limits[key] = requests[key] = value
    for key, count in (extended or {}).items():
        if count > 0:
            limits[key] = str(count)
    out: Manifest = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def placement(spec: Placement | None, pool: GPUPool | None) -> Manifest:
    """nodeSelector, tolerations and affinity: each from the spec when set, else the GPU pool's."""
    out: Manifest = {}
    node_selector = spec.node_selector if spec and spec.node_selector is not None else (pool.node_selector if pool else None)
    tolerations = spec.tolerations if spec and spec.tolerations is not None else (pool.tolerations if pool else None)
    affinity = spec.affinity if spec and spec.affinity is not None else (pool.affinity if pool else None)
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = [t.to_wire() for t in tolerations]
    if affinity:
        out["affinity"] = affinity
    return out


# The UID and GID the workload images run as (images/*/Dockerfile: USER 10001:10001).
WORKLOAD_UID = 10001


def pod_security() -> Manifest:
    """Non-root, with the volumes' group set to the workload's so it can write a fresh PVC."""
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def workload_files(parent: Parent, config_map_name: str, component: str, config: ApiModel, output: Storage) -> tuple[Manifest, Mounts]:
    """The workload's config file, and the mounts of it and of the output it writes (more follow)."""
    mounts = config_mounts(config_map_name)
    mounts.extend(output_location(output)[1])
    return config_map(parent, config_map_name, component, config), mounts


def container(
    name: str, image: str, command: list[str], mounts: Mounts, resources: Manifest, *,
    pull_policy: str, env: list[Manifest] | None = None, **fields: Any,
) -> Manifest:
    """A workload container with no privilege to gain; keys arrive in `env` only as Secret references."""
    out: Manifest = {"name": name, "image": image, "imagePullPolicy": pull_policy, "command": list(command)}
    if env is not None:
        out["env"] = env
    return {**out, **fields, "volumeMounts": mounts.mounts, "resources": resources, "securityContext": container_security()}


def pod_spec(service_account: str, containers: list[Manifest], mounts: Mounts, **fields: Any) -> Manifest:
    """A workload pod: its ServiceAccount, non-root, its volumes, and what the kind adds (restart
    policy, placement, no API token)."""
    return {
        "serviceAccountName": service_account,
        "securityContext": pod_security(),
        "containers": containers,
        "volumes": mounts.volumes,
        **fields,
    }


def batch_job(
    parent: Parent, name: str, component: str, pod: Manifest, *, backoff_limit: int, extra_labels: dict[str, str] | None = None
) -> Manifest:
    """A batch/v1 Job running one workload pod that is never restarted in place: a retry is a new
    pod, which resumes from what the workload saved."""
    pod_labels = labels(parent.name, component)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": parent.namespace, "labels": {**pod_labels, **(extra_labels or {})}},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": {**pod, "restartPolicy": "Never"}},
        },
    }


def stamp(manifest: Manifest, parent: Parent, hashed: object) -> Manifest:
    """Record which generation a child was built from and a digest of what was built."""
    annotations = manifest["metadata"].setdefault("annotations", {})
    if parent.generation is not None:
        annotations[GENERATION_ANNOTATION] = str(parent.generation)
    annotations[SPEC_HASH_ANNOTATION] = spec_hash(hashed)
    return manifest


def shm_mount(size: str | None) -> Mounts:
    """A memory-backed /dev/shm: the runtime's 64 MiB default starves NCCL and data loaders."""
    empty_dir: Manifest = {"medium": "Memory"}
    if size:
        empty_dir["sizeLimit"] = size
    return Mounts([{"name": "dshm", "emptyDir": empty_dir}], [{"name": "dshm", "mountPath": "/dev/shm"}])


def _cluster_model(source: ModelSource) -> ResolvedModel:
    from .inputs import model_source

    return model_source(source)[0]


# In a pod: PVCs are mounted at fixed paths, a Secret key arrives in the pod spec's env var, seed
# tasks from a ConfigMap are a mounted file, and the workload reports to its resource.
IN_CLUSTER = Where(
    output=lambda storage: output_location(storage)[0],
    model=_cluster_model,
    secret_env=lambda _ref, env: env,
    seeds_uri=lambda uri: uri,
    seeds_config_map=f"{SEEDS_DIR}/seed_tasks.jsonl",
    reports=True,
)
