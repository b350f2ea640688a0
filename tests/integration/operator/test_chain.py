"""The chain dataset -> finetune -> modelserver -> a new dataset taught by that server; bad
references; and an operator restarted mid-way.

The generation step is the real workload: `alpaca generate` runs as a process with the config the
operator put in its ConfigMap, against a teacher over real HTTP, and reports its result onto the
InstructDataset's status with the workload ServiceAccount's token, as its pod would. Its output is
a folder on a claim; a local folder stands in for the pod's mount of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes.client

from alpaca_jobs.report import StatusReporter
from alpaca_operator.api.common import Artifact
from alpaca_operator.api.results import WorkloadResult
from alpaca_operator.api.workloads import StatusTarget
from operator_helpers import condition, create, now_minus, status_of
from support.cluster import wait_for
from support.teacher import TeacherServer

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


def _run_workload(
    control_plane, namespace: str, config_map: str, api_client, tmp_path: Path, mount: Path
) -> subprocess.CompletedProcess[str]:
    """`alpaca generate --config` as the Job's pod would run it, with the workload ServiceAccount's
    token, and `mount` where the pod mounts its output's claim."""
    config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map(config_map, namespace).data["config.json"])
    assert config["output"] == "/var/lib/alpaca/output"
    (tmp_path / "config.json").write_text(json.dumps({**config, "output": str(mount)}))
    token = control_plane.token_for_service_account(namespace, "alpaca-workload")
    kubeconfig = control_plane.kubeconfig_for_token(token, tmp_path / "workload.kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "alpaca_operator.cli", "generate", "--config", str(tmp_path / "config.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_full_chain(start_operator, control_plane, custom, api_client, namespace: str, tmp_path: Path) -> None:
    start_operator()
    teacher = TeacherServer().start()
    output = tmp_path / "data"  # the pod's mount of claim "data" at subPath chain/dataset
    # Declared all at once, in reverse order: each waits for what it needs.
    create(custom, namespace, "modelservers", "ModelServer", "teacher", {"model": {"fineTuneRef": {"name": "tuned"}}})
    create(custom, namespace, "finetunes", "FineTune", "tuned", {
        "dataset": {"instructDatasetRef": {"name": "data"}}, "gpus": {"nodes": 1, "perNode": 1},
        "output": {"pvc": {"claimName": "models", "subPath": "tuned"}},
    })
    create(custom, namespace, "instructdatasets", "InstructDataset", "data", {
        "teacher": {"baseURL": teacher.base_url, "model": "gpt-teacher", "maxConcurrency": 4},
        "generation": {"numExamples": 30},
        "output": {"pvc": {"claimName": "data", "subPath": "chain/dataset"}},
    })

    # (Reconciled before the others arrived, they say NotFound first: what matters is they wait.)
    wait_for(lambda: (condition(status_of(custom, namespace, "finetunes", "tuned"), "DatasetReady") or {}).get("reason") == "Waiting", what="FineTune waiting")
    wait_for(lambda: (condition(status_of(custom, namespace, "modelservers", "teacher"), "ModelReady") or {}).get("reason") == "Waiting", what="ModelServer waiting")

    # The generation workload runs for real and reports its result; then its Job completes.
    wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("data-generate", namespace), what="the Job")
    try:
        run = _run_workload(control_plane, namespace, "data-generate-config", api_client, tmp_path, output)
    finally:
        teacher.stop()
    assert run.returncode == 0, run.stderr[-2000:]
    digest = hashlib.sha256((output / "dataset.jsonl").read_bytes()).hexdigest()
    reported = status_of(custom, namespace, "instructdatasets", "data")["result"]
    # Named by the claim and folder it is on, not by the path the pod mounts them at.
    public = "pvc://data/chain/dataset/dataset.jsonl"
    assert reported["artifact"] == {"uri": public, "sha256": digest, "sizeBytes": (output / "dataset.jsonl").stat().st_size}
    assert reported["records"] == 30
    assert json.loads((output / "manifest.json").read_text())["result"] == reported
    _complete_job(api_client, namespace, "data-generate")
    finished = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "data")).get("phase") == "Succeeded" and s, what="Succeeded")
    # Cost from the tokens the workload reported, at the operator's price for the model.
    assert finished["costUSD"] == round((reported["promptTokens"] * 1.0 + reported["completionTokens"] * 2.0) / 1e6, 4)
    assert (finished["dataset"]["uri"], finished["dataset"]["sha256"]) == (public, digest)

    job = wait_for(lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train"), what="the PyTorchJob")
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "dataset")
    assert volume["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dataset")
    assert (mount["mountPath"], mount["subPath"]) == ("/var/lib/alpaca/dataset", "chain/dataset")
    config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("tuned-train-config", namespace).data["config.json"])
    assert config["dataset"] == "/var/lib/alpaca/dataset/dataset.jsonl"
    assert config["datasetSha256"] == digest
    assert (config["output"], config["outputURI"]) == ("/var/lib/alpaca/output", "pvc://models/tuned")
    pinned = wait_for(lambda: status_of(custom, namespace, "finetunes", "tuned").get("dataset"), what="the pinned dataset")
    assert (pinned["uri"], pinned["sha256"]) == (public, digest)

    # The training workload's report, through the same reporter and identity as in its pod.
    reporter = StatusReporter(StatusTarget(plural="finetunes", namespace=namespace, name="tuned"))
    workload = control_plane.api_client(control_plane.token_for_service_account(namespace, "alpaca-workload"))
    reporter._api = kubernetes.client.CustomObjectsApi(workload)
    reporter.report_result(WorkloadResult(artifact=Artifact(uri="pvc://models/tuned", sha256=MODEL_DIGEST), size_bytes=1, finished_at=now_minus(0)))
    _succeed_pytorchjob(custom, namespace, "tuned-train")

    apps = kubernetes.client.AppsV1Api(api_client)
    deployment = wait_for(lambda: apps.read_namespaced_deployment("teacher-serve", namespace), what="the Deployment")
    serve_config = json.loads(kubernetes.client.CoreV1Api(api_client).read_namespaced_config_map("teacher-serve-config", namespace).data["config.json"])
    assert serve_config["model"]["location"] == "/var/lib/alpaca/model"
    assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "models" for v in deployment.spec.template.spec.volumes)
    served = status_of(custom, namespace, "modelservers", "teacher")["model"]
    assert (served["uri"], served["sha256"]) == ("pvc://models/tuned", MODEL_DIGEST)

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
