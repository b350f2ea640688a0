"""Kueue queues on the real control plane: the labels on each top-level child, nothing created
suspended by the operator, and a child held by Kueue (suspended, as its webhook and controller
leave it) read as Queued until admitted. Kueue itself is played here by patching the children."""

from __future__ import annotations

import kubernetes.client

from operator_helpers import condition, create, now_minus, status_of
from support.cluster import wait_for

QUEUE = "kueue.x-k8s.io/queue-name"
PRIORITY = "kueue.x-k8s.io/priority-class"
TUNE = {"dataset": {"uri": "s3://bucket/d.jsonl"}, "gpus": {"nodes": 1, "perNode": 1}, "output": {"uri": "s3://bucket/m"},
        "queue": {"name": "gpu-team", "priorityClass": "batch-low"}}


def test_a_queued_pytorchjob_reads_queued_until_admitted(start_operator, custom, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "tune", TUNE)
    job = wait_for(lambda: custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tune-train"), what="the PyTorchJob")
    assert job["metadata"]["labels"][QUEUE] == "gpu-team" and job["metadata"]["labels"][PRIORITY] == "batch-low"
    assert "suspend" not in job["spec"]["runPolicy"]

    # Kueue's webhook suspended it on creation; the training operator reports that.
    custom.patch_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tune-train", {"spec": {"runPolicy": {"suspend": True}}})
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "tune-train", {"status": {
        "conditions": [{"type": "Created", "status": "True"}, {"type": "Suspended", "status": "True", "reason": "PyTorchJobSuspended"}]}})
    queued = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tune")).get("message", "").startswith("the PyTorchJob") and s,
                      what="Queued")
    ready = condition(queued, "Ready")
    assert ready is not None and (ready["status"], ready["reason"]) == ("False", "Queued")
    assert "gpu-team" in ready["message"] and queued["phase"] == "Pending"

    # Admitted: Kueue unsuspends it and training starts.
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", "tune-train", {"status": {
        "startTime": now_minus(1), "conditions": [{"type": "Created", "status": "True"}, {"type": "Suspended", "status": "False"},
                                                  {"type": "Running", "status": "True"}]}})
    running = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tune")).get("phase") == "Running" and s, what="Running")
    assert condition(running, "Ready")["reason"] == "Running"


def test_the_default_queue_labels_the_generation_job_and_a_suspended_job_reads_queued(start_operator, custom, api_client, namespace: str) -> None:
    start_operator(queue={"name": "team-default"})
    create(custom, namespace, "instructdatasets", "InstructDataset", "data", {
        "teacher": {"baseURL": "https://api.example.com/v1", "model": "gpt-teacher"}, "output": {"uri": "s3://bucket/d"}})
    batch = kubernetes.client.BatchV1Api(api_client)
    job = wait_for(lambda: batch.read_namespaced_job("data-generate", namespace), what="the Job")
    assert job.metadata.labels[QUEUE] == "team-default" and PRIORITY not in job.metadata.labels
    assert not job.spec.suspend
    batch.patch_namespaced_job("data-generate", namespace, {"spec": {"suspend": True}})
    batch.patch_namespaced_job_status("data-generate", namespace, {"status": {"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended", "lastTransitionTime": now_minus(0)}]}})
    queued = wait_for(lambda: (c := condition(status_of(custom, namespace, "instructdatasets", "data"), "Ready")) and c["reason"] == "Queued" and c,
                      what="Queued")
    assert "team-default" in queued["message"]


def test_a_queued_server_deployment_is_labelled(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "modelservers", "ModelServer", "chat", {
        "model": {"source": {"builtin": "smollm2-135m-instruct"}}, "queue": {"name": "serving"}})
    deployment = wait_for(lambda: kubernetes.client.AppsV1Api(api_client).read_namespaced_deployment("chat-serve", namespace), what="the Deployment")
    assert deployment.metadata.labels[QUEUE] == "serving"
    assert QUEUE not in deployment.spec.template.metadata.labels
