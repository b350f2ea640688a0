"""FineTune -> ConfigMap (the TrainConfig) + Kubeflow PyTorchJob running `alpaca train` under torchrun."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.finetune import FineTuneSpec
from ..api.workloads import TrainConfig
from ..cost import budget_deadline_seconds, hourly_rate, tighter_deadline
from ..naming import MAX_PYTORCHJOB, TRAIN, child_name, labels
from ..settings import OperatorSettings
from .queue import queue_labels
from .common import (
    CONFIG_FILE,
    IN_CLUSTER,
    Manifest,
    Mounts,
    Parent,
    Where,
    compute_resources,
    container,
    placement,
    pod_spec,
    public_uri,
    shm_mount,
    stamp,
    workload_files,
)
from .inputs import Input, model_source

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
# The training operator finds the container to inject MASTER_ADDR, PET_* and friends into by name.
CONTAINER_NAME = "pytorch"
TRAIN_LAUNCHER = ("python", "-m", "alpaca_jobs.train.launch")


def job_name(parent: str) -> str:
    # Short enough that the training operator's per-replica Services (`<job>-worker-N`) still fit.
    return child_name(parent, TRAIN, MAX_PYTORCHJOB)


def config_map_name(parent: str) -> str:
    return child_name(parent, f"{TRAIN}-config")


def total_gpus(spec: FineTuneSpec) -> int:
    return spec.gpus.nodes * spec.gpus.per_node


def gpu_price(spec: FineTuneSpec, settings: OperatorSettings) -> float | None:
    return spec.gpu_hour_usd if spec.gpu_hour_usd is not None else settings.gpu_price(spec.gpus.type)


def active_deadline_seconds(spec: FineTuneSpec, settings: OperatorSettings) -> int | None:
    """The tighter of the spec's deadline and the time the budget pays for."""
    rate = hourly_rate(total_gpus(spec), gpu_price(spec, settings))
    return tighter_deadline(spec.run_policy.active_deadline_seconds, budget_deadline_seconds(spec.budget_usd, rate))


def budget_is_the_deadline(spec: FineTuneSpec, settings: OperatorSettings) -> bool:
    """Whether hitting activeDeadlineSeconds means the budget ran out (rather than the spec's limit)."""
    rate = hourly_rate(total_gpus(spec), gpu_price(spec, settings))
    from_budget = budget_deadline_seconds(spec.budget_usd, rate)
    limit = spec.run_policy.active_deadline_seconds
    return from_budget is not None and (limit is None or from_budget <= limit)


def train_config(parent: Parent, spec: FineTuneSpec, dataset: Input, where: Where = IN_CLUSTER) -> TrainConfig:
    """The one derivation of a training workload's config, for the cluster and for local mode."""
    return TrainConfig(
        name=parent.name,
        spec=spec,
        dataset=dataset.location,
        dataset_sha256=dataset.pinned.sha256 if dataset.pinned else None,
        base_model=where.model(spec.base_model),
        output=where.output(spec.output),
        output_uri=public_uri(spec.output),
        status_target=parent.status_target() if where.reports else None,
    )


@dataclass(frozen=True)
class TrainPod:
    """What a training pod is made of, whichever Kubeflow API runs it (PyTorchJob or TrainJob)."""

    config_map: Manifest
    image: str
    command: list[str]
    mounts: Mounts
    resources: Manifest
    labels: dict[str, str]
    placement: Manifest
    service_account: str
    procs_per_node: int


def train_pod(parent: Parent, spec: FineTuneSpec, settings: OperatorSettings, dataset: Input) -> TrainPod:
    """The config, container and pod pieces of one FineTune whose dataset is resolved."""
    cm, mounts = workload_files(parent, config_map_name(parent.name), TRAIN, train_config(parent, spec, dataset), spec.output)
    mounts.extend(dataset.mounts)
    mounts.extend(model_source(spec.base_model)[1])
    mounts.extend(shm_mount(spec.shm_size))
    gpus = spec.gpus.per_node
    return TrainPod(
        config_map=cm,
        image=spec.image or settings.images.train,
        # torchrun (through a launcher that passes its workers' exit codes on, where torchrun
        # itself always exits 1) reads nnodes, node rank and the master's address from the PET_*
        # variables the Kubeflow controller injects; --no-python starts the `alpaca` console script.
        command=[*TRAIN_LAUNCHER, "--no-python", "alpaca", "train", "--config", CONFIG_FILE],
        mounts=mounts,
        resources=compute_resources(spec.resources, {spec.gpus.resource_name: gpus}),
        labels=labels(parent.name, TRAIN),
        # GPU-pool defaults apply to GPU pods only: a CPU run must not land on (or wait for) GPU nodes.
        placement=placement(spec.placement, settings.gpu_pools.get(spec.gpus.type) if gpus > 0 else None),
        service_account=settings.workload_service_account,
        procs_per_node=max(gpus, 1),
    )


def build(parent: Parent, spec: FineTuneSpec, settings: OperatorSettings, dataset: Input) -> tuple[Manifest, Manifest]:
    """(ConfigMap, PyTorchJob) for one FineTune whose dataset is resolved."""
    pod = train_pod(parent, spec, settings, dataset)
    cm = pod.config_map
    trainer = container(CONTAINER_NAME, pod.image, pod.command, pod.mounts, pod.resources, pull_policy=settings.images.pull_policy)
    pod_labels = pod.labels
    template_spec = pod_spec(pod.service_account, [trainer], pod.mounts, **pod.placement)

    def replica(count: int) -> Manifest:
        return {
            "replicas": count,
            # Codes >= 128 (a crash, a lost peer, preemption, OOM) recreate the pod, which resumes
            # from the last checkpoint; bad config, data or model (2, 3, 4) fail the job at once
            # instead of failing again on every retry up to backoffLimit.
            "restartPolicy": "ExitCode",
            "template": {"metadata": {"labels": dict(pod_labels)}, "spec": template_spec},
        }

    replica_specs: Manifest = {"Master": replica(1)}
    if spec.gpus.nodes > 1:
        replica_specs["Worker"] = replica(spec.gpus.nodes - 1)

    run_policy: Manifest = {
        "backoffLimit": spec.run_policy.backoff_limit,
        "cleanPodPolicy": spec.run_policy.clean_pod_policy,
    }
    deadline = active_deadline_seconds(spec, settings)
    if deadline is not None:
        run_policy["activeDeadlineSeconds"] = deadline
    if spec.run_policy.ttl_seconds_after_finished is not None:
        run_policy["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished

    job: Manifest = {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": "PyTorchJob",
        "metadata": {"name": job_name(parent.name), "namespace": parent.namespace, "labels": {**pod_labels, **queue_labels(spec.queue, settings)}},
        "spec": {
            "nprocPerNode": str(pod.procs_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replica_specs,
        },
    }
    return cm, stamp(job, parent, {"job": job["spec"], "config": cm["data"]})
