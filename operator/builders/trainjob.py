"""FineTune -> ConfigMap (the TrainConfig) + Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1).

Written against Trainer v2.3.0's API (hack/tools/trainer/manifests holds its CRD). The training
runtime (by default Trainer's `torch-distributed` ClusterTrainingRuntime) supplies the JobSet; the
TrainJob says what differs:

- `trainer`: image, command, node count, processes per node and resources of the `node` container.
  Trainer's torch plugin injects the PET_* variables that torchrun (under our launcher) reads.
- one `runtimePatches` entry, keyed by our manager name, for what `trainer` cannot carry: the pod's
  volumes and mounts, ServiceAccount, security contexts, placement and labels. Kueue writes an entry
  of its own under its manager name; the operator never writes the TrainJob again after creating
  it (bar `spec.suspend` when a budget runs out), so that entry is never touched, and neither are
  `runtimeRef`, `initializer` and `trainer`, which the API server keeps immutable.

What the API has no field for is left to the runtime: image pull policy, restart and cleanup
policy (the JobSet's failure policy), TTL after finishing.
"""

from __future__ import annotations

from ..api.finetune import FineTuneSpec, RuntimeRef
from ..settings import OperatorSettings
from .common import Manifest, Parent, container_security, pod_spec, stamp
from .finetune import active_deadline_seconds, job_name, train_pod
from .inputs import Input
from .queue import queue_labels

GROUP = "trainer.kubeflow.org"
TRAINJOB_API_VERSION = f"{GROUP}/v1alpha1"
KIND = "TrainJob"
# The replicated job and container of a torch runtime's trainer step (Trainer's constants.Node):
# `trainer` overrides that container, and the patch below targets both by this name.
NODE = "node"
# Our key in spec.runtimePatches (a list map keyed by manager; Kueue's is kueue.x-k8s.io/manager).
PATCH_MANAGER = "alpaca.dev/operator"
DEFAULT_RUNTIME = RuntimeRef()


def build(parent: Parent, spec: FineTuneSpec, settings: OperatorSettings, dataset: Input) -> tuple[Manifest, Manifest]:
    """(ConfigMap, TrainJob) for one FineTune whose dataset is resolved."""
    pod = train_pod(parent, spec, settings, dataset)
    runtime = spec.runtime_ref or DEFAULT_RUNTIME
    trainer: Manifest = {
        "image": pod.image,
        "command": list(pod.command),
        "numNodes": spec.gpus.nodes,
        "numProcPerNode": pod.procs_per_node,
    }
    if pod.resources:
        trainer["resourcesPerNode"] = pod.resources
    # Only what the runtime's `node` container lacks: the patch is merged into it by name.
    node = {"name": NODE, "volumeMounts": pod.mounts.mounts, "securityContext": container_security()}
    patched_pod = pod_spec(pod.service_account, [node], pod.mounts, **pod.placement)
    patch: Manifest = {
        "manager": PATCH_MANAGER,
        "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
            "name": NODE,
            "template": {"spec": {"template": {"metadata": {"labels": dict(pod.labels)}, "spec": patched_pod}}},
        }]}}},
    }
    job_spec: Manifest = {
        "runtimeRef": {"name": runtime.name, "apiGroup": GROUP, "kind": runtime.kind.value},
        "trainer": trainer,
        "runtimePatches": [patch],
    }
    deadline = active_deadline_seconds(spec, settings)
    if deadline is not None:
        job_spec["activeDeadlineSeconds"] = deadline
    job: Manifest = {
        "apiVersion": TRAINJOB_API_VERSION,
        "kind": KIND,
        "metadata": {
            # The PyTorchJob's name rule fits here too: the JobSet's pods are `<name>-node-0-<index>`.
            "name": job_name(parent.name),
            "namespace": parent.namespace,
            "labels": {**pod.labels, **queue_labels(spec.queue, settings)},
        },
        "spec": job_spec,
    }
    cm = pod.config_map
    return cm, stamp(job, parent, {"job": job["spec"], "config": cm["data"]})
