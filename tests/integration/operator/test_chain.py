"""The chain dataset -> finetune -> modelserver -> a new dataset taught by that server; bad
references; and an operator restarted mid-way."""

from __future__ import annotations

import json

import kubernetes.client

from operator_helpers import condition, create, now_minus, status_of
from support.cluster import wait_for

DIGEST = "a" * 64
MODEL_DIGEST = "b" * 64


def _complete_job(api_client, namespace: str, name: str) -> None:
    kubernetes.client.BatchV1Api(api_client).patch_namespaced_job_status(name, namespace, {"status": {
        "startTime": now_minus(60), "completionTime": now_minus(0), "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now_minus(0)},
            {"type": "Complete", "status": "True", "lastTransitionTime": now_minus(0)},
        ],
    }})


def _succeed_pytorchjob(custom, namespace: str, name: str) -> None:
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", name, {"status": {
        "startTime": now_minus(600), "completionTime": now_minus(0),
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}],
    }})


def test_full_chain(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    # Declared all at once, in reverse order: each waits for what it needs.
    create(custom, namespace, "modelservers", "ModelServer", "teacher", {"model": {"fineTuneRef": {"name": "tuned"}}})
    create(custom, namespace, "finetunes", "FineTune", "tuned", {
        "dataset": {"instructDatasetRef": {"name": "data"}}, "gpus": {"nodes": 1, "perNode": 1},
        "output": {"pvc": {"claimName": "models", "subPath": "tuned"}},
    })
    create(custom, namespace, "instructdatasets", "InstructDataset", "data", {
        "teacher": {"baseURL": "https://api.example.com/v1", "model": "gpt-teacher"},
        "output": {"pvc": {"claimName": "datasets", "subPath": "data"}},
    })

    # (Reconciled before the others arrived, they say NotFound first: what matters is they wait.)
    wait_for(lambda: (condition(status_of(custom, namespace, "finetunes", "tuned"), "DatasetReady") or {}).get("reason") == "Waiting", what="FineTune waiting")
    wait_for(lambda: (condition(status_of(custom, namespace, "modelservers", "teacher"), "ModelReady") or {}).get("reason") == "Waiting", what="ModelServer waiting")

    # The generation workload reports its dataset, then its Job completes.
    wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("data-generate", namespace), what="the Job")
    custom.patch_namespaced_custom_object_status("alpaca.dev", "v1alpha1", namespace, "instructdatasets", "data",
        {"status": {"dataset": {"uri": "/var/lib/alpaca/output/dataset.jsonl", "sha256": DIGEST}}})
    _complete_job(api_client, namespace, "data-generate")

    job = wait_for(lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train"), what="the PyTorchJob")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    dataset_volume = next(v for v in pod["volumes"] if v["name"] == "dataset")
    assert dataset_volume["persistentVolumeClaim"]["claimName"] == "datasets"
    config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("tuned-train-config", namespace).data["config.json"])
    assert config["dataset"] == "/var/lib/alpaca/dataset/dataset.jsonl"
    assert config["datasetSha256"] == DIGEST
    pinned = wait_for(lambda: status_of(custom, namespace, "finetunes", "tuned").get("dataset"), what="the pinned dataset")
    assert pinned["sha256"] == DIGEST

    custom.patch_namespaced_custom_object_status("alpaca.dev", "v1alpha1", namespace, "finetunes", "tuned",
        {"status": {"model": {"uri": "/var/lib/alpaca/output/model", "sha256": MODEL_DIGEST}}})
    _succeed_pytorchjob(custom, namespace, "tuned-train")

    apps = kubernetes.client.AppsV1Api(api_client)
    deployment = wait_for(lambda: apps.read_namespaced_deployment("teacher-serve", namespace), what="the Deployment")
    serve_config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("teacher-serve-config", namespace).data["config.json"])
    assert serve_config["model"]["location"] == "/var/lib/alpaca/model/model"
    assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "models" for v in deployment.spec.template.spec.volumes)
    assert status_of(custom, namespace, "modelservers", "teacher")["model"]["sha256"] == MODEL_DIGEST

    # Closing the loop: a dataset taught by the in-cluster server, once it is Ready.
    create(custom, namespace, "instructdatasets", "InstructDataset", "round-two", {
        "teacher": {"modelServerRef": {"name": "teacher"}}, "output": {"uri": "s3://bucket/round-two"},
    })
    waiting = wait_for(lambda: condition(status_of(custom, namespace, "instructdatasets", "round-two"), "TeacherReady"), what="TeacherReady")
    assert waiting["reason"] == "Waiting"
    apps.patch_namespaced_deployment_status("teacher-serve", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}})
    wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("round-two-generate", namespace), what="the second Job")
    config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("round-two-generate-config", namespace).data["config.json"])
    assert config["teacherURL"] == f"http://teacher-serve.{namespace}.svc.cluster.local:8000/v1"
    assert config["teacherModel"] == "teacher"
    assert "apiKeyEnv" not in config
    assert condition(status_of(custom, namespace, "instructdatasets", "round-two"), "TeacherReady")["status"] == "True"


def test_missing_reference_is_a_condition_and_recovers(start_operator, custom, namespace: str) -> None:
    op = start_operator()
    create(custom, namespace, "finetunes", "FineTune", "orphan", {
        "dataset": {"instructDatasetRef": {"name": "not-yet"}}, "gpus": {"perNode": 0}, "output": {"uri": "s3://b/o"},
    })
    status = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "orphan")).get("conditions") and s, what="conditions")
    assert condition(status, "DatasetReady")["reason"] == "NotFound"
    assert condition(status, "Ready")["reason"] == "NotFound"
    assert status["phase"] == "Pending"
    transition = condition(status, "DatasetReady")["lastTransitionTime"]

    # Re-checked without errors and without rewriting an unchanged status.
    import time
    time.sleep(2)
    again = status_of(custom, namespace, "finetunes", "orphan")
    assert condition(again, "DatasetReady")["lastTransitionTime"] == transition
    assert op.wiring.controller.cluster.requests["PATCH"] <= 2
    assert not op.wiring.controller._failures

    create(custom, namespace, "instructdatasets", "InstructDataset", "not-yet", {
        "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/d"},
    })
    waiting = wait_for(lambda: condition(status_of(custom, namespace, "finetunes", "orphan"), "DatasetReady")["reason"] == "Waiting", what="Waiting")
    assert waiting


def test_restart_mid_way_duplicates_nothing_and_loses_nothing(start_operator, custom, api_client, namespace: str) -> None:
    first = start_operator()
    names = [f"ds-{i}" for i in range(5)]
    for name in names:
        create(custom, namespace, "instructdatasets", "InstructDataset", name, {
            "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": f"s3://b/{name}"},
        })
    batch = kubernetes.client.BatchV1Api(api_client)
    wait_for(lambda: len(batch.list_namespaced_job(namespace).items) == 5, what="5 Jobs")
    wait_for(lambda: all(status_of(custom, namespace, "instructdatasets", n).get("phase") == "Pending" for n in names), what="5 Pending")
    first.stop()

    # While it is down: one Job runs, two more resources arrive.
    batch.patch_namespaced_job_status("ds-0-generate", namespace, {"status": {"active": 1, "startTime": now_minus(5)}})
    for name in ("ds-5", "ds-6"):
        create(custom, namespace, "instructdatasets", "InstructDataset", name, {
            "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": f"s3://b/{name}"},
        })
    before = {c["type"]: c["lastTransitionTime"] for c in status_of(custom, namespace, "instructdatasets", "ds-1")["conditions"]}

    start_operator()
    wait_for(lambda: len(batch.list_namespaced_job(namespace).items) == 7, what="7 Jobs")
    wait_for(lambda: status_of(custom, namespace, "instructdatasets", "ds-0").get("phase") == "Running", what="ds-0 Running")
    wait_for(lambda: status_of(custom, namespace, "instructdatasets", "ds-6").get("phase") == "Pending", what="ds-6 Pending")
    jobs = batch.list_namespaced_job(namespace).items
    assert sorted(j.metadata.name for j in jobs) == sorted(f"ds-{i}-generate" for i in range(7))
    after = {c["type"]: c["lastTransitionTime"] for c in status_of(custom, namespace, "instructdatasets", "ds-1")["conditions"]}
    assert after == before, "a restart must not flip conditions that did not change"
