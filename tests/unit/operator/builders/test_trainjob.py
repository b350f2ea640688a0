"""The TrainJob builder, checked against Kubeflow Trainer v2.3.0's own TrainJob CRD.

The CRD is upstream's file, copied from the Go module by hack/tools/trainer/fetch-manifests.sh and
pinned by sha256. Its structural schema is made strict (an unknown field fails, where the API
server would silently prune it) and its CEL rules are evaluated, so a field that v2.3.0 does not
have, or has under another shape, fails here.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.builders import finetune, trainjob
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import dataset_direct
from alpaca_operator.crd.cel import violations
from alpaca_operator.settings import OperatorSettings

TRAINER = Path(__file__).resolve().parents[4] / "hack" / "tools" / "trainer"
SETTINGS = OperatorSettings.model_validate({
    "gpuHourUSD": {"nvidia-a100-80gb": 2.0},
    "gpuPools": {"nvidia-a100-80gb": {"nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}},
})
TUNE = {"backend": "trainjob", "dataset": {"pvc": {"claimName": "data", "path": "d.jsonl"}}, "gpus": {"nodes": 2, "perNode": 8},
        "output": {"pvc": {"claimName": "models", "subPath": "m"}}, "resources": {"cpu": "8", "memory": "64Gi"}}


def _manifest(name: str) -> Path:
    return TRAINER / "manifests" / name


def test_the_vendored_manifests_are_upstreams_by_sha256() -> None:
    for line in (TRAINER / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.sha256(_manifest(name).read_bytes()).hexdigest() == digest, name


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever the API server would prune them."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def trainjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(_manifest("trainer.kubeflow.org_trainjobs.yaml").read_text())
    assert crd["spec"]["group"] == "trainer.kubeflow.org" and crd["spec"]["names"]["kind"] == "TrainJob"
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    assert f"{crd['spec']['group']}/{version['name']}" == trainjob.TRAINJOB_API_VERSION
    return version["schema"]["openAPIV3Schema"]


def _check(schema: dict[str, Any], manifest: dict[str, Any]) -> None:
    # The server fills metadata; the schema only says it is an object.
    jsonschema.Draft7Validator(_strict(schema)).validate(manifest)
    assert violations(schema, manifest, "trainjob") == []


def build(spec: dict[str, Any], name: str = "demo", settings: OperatorSettings = SETTINGS) -> tuple[dict[str, Any], dict[str, Any]]:
    parsed = FineTuneSpec.model_validate(spec)
    return trainjob.build(Parent(name, "ns", "finetunes", 3), parsed, settings, dataset_direct(parsed.dataset))


def _node_pod(job: dict[str, Any]) -> dict[str, Any]:
    (patch,) = job["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == trainjob.NODE
    return node["template"]["spec"]["template"]


@pytest.mark.parametrize("spec", [
    TUNE,
    {**TUNE, "gpus": {"nodes": 1, "perNode": 0}, "resources": None, "queue": {"name": "team-a", "priorityClass": "high"}},
    {**TUNE, "budgetUSD": 5.0, "runtimeRef": {"name": "my-torch", "kind": "TrainingRuntime"},
     "placement": {"nodeSelector": {"zone": "z1"}, "affinity": {"nodeAffinity": {}}}},
    {**TUNE, "baseModel": {"pvc": {"claimName": "base", "subPath": "llama"}}, "dataset": {"uri": "s3://b/d.jsonl"}},
])
def test_the_trainjob_is_valid_against_trainer_v2_3_0s_crd(trainjob_schema: dict[str, Any], spec: dict[str, Any]) -> None:
    _, job = build({k: v for k, v in spec.items() if v is not None})
    _check(trainjob_schema, job)


@pytest.mark.parametrize("bad", [
    {"trainer": {"numNodes": 2, "imagePullPolicy": "Always"}},  # not a TrainJob field
    {"runtimePatches": [{"manager": "x", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": "node", "template": {"spec": {"template": {"spec": {"hostNetwork": True}}}}}]}}}}]},  # not patchable
])
def test_the_strict_schema_catches_fields_v2_3_0_does_not_have(trainjob_schema: dict[str, Any], bad: dict[str, Any]) -> None:
    _, job = build(TUNE)
    job["spec"] = {**job["spec"], **bad}
    with pytest.raises(jsonschema.ValidationError):
        _check(trainjob_schema, job)


def test_the_crd_rules_refuse_a_name_trainjob_cannot_take(trainjob_schema: dict[str, Any]) -> None:
    _, job = build(TUNE)
    job["metadata"]["name"] = "9-starts-with-a-digit"
    assert violations(trainjob_schema, job, "trainjob")


def test_the_trainjob_runs_the_launcher_on_the_runtime_with_the_pytorchjobs_pod() -> None:
    cm, job = build(TUNE)
    spec = FineTuneSpec.model_validate(TUNE)
    pod = finetune.train_pod(Parent("demo", "ns", "finetunes", 3), spec, SETTINGS, dataset_direct(spec.dataset))
    assert job["spec"]["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"}
    trainer = job["spec"]["trainer"]
    assert trainer["command"][:3] == ["python", "-m", "alpaca_jobs.train.launch"]
    assert trainer["command"][-4:] == ["alpaca", "train", "--config", "/etc/alpaca/config.json"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "8", "memory": "64Gi"},
                                           "limits": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "8"}}
    # torchrun's PET_* variables are Trainer's to set (its webhook refuses them in trainer.env).
    assert not any(e["name"].startswith("PET_") for e in trainer.get("env", []))
    template = _node_pod(job)
    pod_spec = template["spec"]
    assert pod_spec["serviceAccountName"] == SETTINGS.workload_service_account
    assert pod_spec["volumes"] == pod.mounts.volumes and pod_spec["containers"][0]["volumeMounts"] == pod.mounts.mounts
    mounted = {m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"]}
    assert {"/etc/alpaca", "/dev/shm"} <= mounted
    assert pod_spec["nodeSelector"] == {"pool": "a100"} and pod_spec["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert template["metadata"]["labels"] == pod.labels
    assert cm["metadata"]["name"] == "demo-train-config"
    assert json.loads(cm["data"]["config.json"])["statusTarget"]["plural"] == "finetunes"


def test_only_our_runtime_patch_entry_is_written() -> None:
    _, job = build(TUNE)
    assert [p["manager"] for p in job["spec"]["runtimePatches"]] == [trainjob.PATCH_MANAGER]
    assert trainjob.PATCH_MANAGER != "kueue.x-k8s.io/manager"
    assert "suspend" not in job["spec"]  # Kueue's webhook suspends a queued TrainJob, not us


def test_a_cpu_run_gets_one_process_per_node_and_no_gpu_pool() -> None:
    _, job = build({**TUNE, "gpus": {"nodes": 2, "perNode": 0}, "resources": {"cpu": "2"}})
    assert job["spec"]["trainer"]["numProcPerNode"] == 1
    assert "nvidia.com/gpu" not in job["spec"]["trainer"]["resourcesPerNode"]["limits"]
    assert "nodeSelector" not in _node_pod(job)["spec"]


def test_queue_labels_owner_free_and_deterministic_name() -> None:
    _, job = build({**TUNE, "queue": {"name": "team-a", "priorityClass": "high"}})
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a" and labels["kueue.x-k8s.io/priority-class"] == "high"
    assert labels["app.kubernetes.io/component"] == "train" and labels["app.kubernetes.io/instance"] == "demo"
    # Kueue reads the TrainJob's own labels; its pods carry only ours.
    assert "kueue.x-k8s.io/queue-name" not in _node_pod(job)["metadata"]["labels"]
    assert job["metadata"]["name"] == build(TUNE)[1]["metadata"]["name"] == "demo-train"
    assert "ownerReferences" not in job["metadata"]  # the applier sets it, with the FineTune's UID


@pytest.mark.parametrize("name", ["a" * 253, "9.dotted.name", "x"])
def test_every_valid_finetune_name_gives_a_trainjob_name_whose_pods_fit(trainjob_schema: dict[str, Any], name: str) -> None:
    _, job = build(TUNE, name=name)
    job_name = job["metadata"]["name"]
    assert violations(trainjob_schema, job, "trainjob") == []
    # The JobSet's pods are `<name>-node-0-<index>`: DNS labels for every node a FineTune may ask for.
    assert len(f"{job_name}-node-0-511") <= 63


def test_the_budget_sets_the_deadline_and_the_spec_hash_follows_the_spec() -> None:
    _, plain = build(TUNE)
    _, limited = build({**TUNE, "budgetUSD": 16.0})  # 16 GPUs x $2/h: half an hour
    assert "activeDeadlineSeconds" not in plain["spec"]
    assert limited["spec"]["activeDeadlineSeconds"] == 1800
    hash_key = "alpaca.dev/spec-hash"
    assert plain["metadata"]["annotations"][hash_key] != limited["metadata"]["annotations"][hash_key]
    assert plain["metadata"]["annotations"][hash_key] == build(copy.deepcopy(TUNE))[1]["metadata"]["annotations"][hash_key]


def test_the_pytorchjob_backend_is_unchanged_by_the_shared_pod() -> None:
    spec = FineTuneSpec.model_validate({**TUNE, "backend": "pytorchjob"})
    _, job = finetune.build(Parent("demo", "ns", "finetunes", 3), spec, SETTINGS, dataset_direct(spec.dataset))
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert job["kind"] == "PyTorchJob" and job["spec"]["nprocPerNode"] == "8"
    assert master["containers"][0]["name"] == "pytorch" and master["nodeSelector"] == {"pool": "a100"}
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
