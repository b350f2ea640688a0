"""FineTune -> PyTorchJob: GPU layout, budget as deadline, GPU-hours and cost, BudgetExceeded."""

from __future__ import annotations

import kubernetes.client

from operator_helpers import condition, create, event_reasons, now_minus, status_of
from support.cluster import wait_for

SPEC = {
    "dataset": {"uri": "s3://bucket/alpaca/dataset.jsonl"},
    "gpus": {"nodes": 2, "perNode": 8},
    "budgetUSD": 64.0,
    "output": {"uri": "s3://bucket/models/alpaca-7b"},
}


def _pytorchjob(custom, namespace: str, name: str) -> dict:
    return custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", name)


def test_pytorchjob_is_built_and_budget_stops_it(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "alpaca-7b", SPEC)

    job = wait_for(lambda: _pytorchjob(custom, namespace, "alpaca-7b-train"), what="the PyTorchJob")
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    pod = spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "pytorch"
    assert container["command"][:6] == ["python", "-m", "alpaca_jobs.train.launch", "--no-python", "alpaca", "train"]
    assert {r["restartPolicy"] for r in spec["pytorchReplicaSpecs"].values()} == {"ExitCode"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"pool": "a100"}, "the operator's GPU-pool default"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    # $64 at 16 GPUs x $2 per GPU-hour is two hours.
    assert spec["runPolicy"]["activeDeadlineSeconds"] == 7200
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FineTune"

    # The training operator's part: running for an hour.
    kubernetes.client.CustomObjectsApi(api_client).patch_namespaced_custom_object_status(
        "kubeflow.org", "v1", namespace, "pytorchjobs", "alpaca-7b-train",
        {"status": {"startTime": now_minus(3600), "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}},
    )
    running = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "alpaca-7b")).get("phase") == "Running" and s, what="Running")
    assert 16.0 <= running["gpuHours"] < 16.2
    assert 32.0 <= running["costUSD"] < 32.4
    assert running["dataset"] == {"uri": "s3://bucket/alpaca/dataset.jsonl"}

    custom.patch_namespaced_custom_object_status(
        "kubeflow.org", "v1", namespace, "pytorchjobs", "alpaca-7b-train",
        {"status": {"completionTime": now_minus(0), "conditions": [
            {"type": "Running", "status": "False"},
            {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "PyTorchJob alpaca-7b-train has failed because it was active longer than specified deadline"},
        ]}},
    )
    failed = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "alpaca-7b")).get("phase") == "Failed" and s, what="Failed")
    assert condition(failed, "Ready")["reason"] == "BudgetExceeded"
    wait_for(lambda: "BudgetExceeded" in event_reasons(api_client, namespace, "alpaca-7b"), what="the BudgetExceeded event")


def test_cpu_run_has_one_master_and_no_gpu_pool(start_operator, custom, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "tiny", {**SPEC, "gpus": {"nodes": 1, "perNode": 0}, "budgetUSD": None})
    job = wait_for(lambda: _pytorchjob(custom, namespace, "tiny-train"), what="the PyTorchJob")
    assert set(job["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0].get("resources", {}).get("limits", {})
    assert "activeDeadlineSeconds" not in job["spec"]["runPolicy"]
