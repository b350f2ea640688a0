"""What happens to a resource around its children: a namesake's leftover child, a finished child
deleted by its TTL, and a child the API server refuses."""

from __future__ import annotations

import kubernetes.client

from operator_helpers import GROUP, VERSION, condition, create, get, now_minus, status_of
from support.cluster import wait_for

FT = {
    "dataset": {"uri": "s3://bucket/alpaca/dataset.jsonl"},
    "gpus": {"nodes": 1, "perNode": 8},
    "output": {"uri": "s3://bucket/models/tuned"},
}


def _pytorchjob(custom, namespace: str, name: str = "tuned-train") -> dict:
    return custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", name)


def _succeed(custom, namespace: str, started: str, finished: str, name: str = "tuned-train") -> None:
    custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", name, {"status": {
        "startTime": started, "completionTime": finished,
        "conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}],
    }})


def _jobs(custom, namespace: str) -> list[dict]:
    return custom.list_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs")["items"]


def test_a_deleted_and_recreated_finetune_waits_for_the_old_job_and_never_reports_it(start_operator, custom, api_client, namespace: str) -> None:
    start_operator()
    old = create(custom, namespace, "finetunes", "FineTune", "tuned", FT)
    wait_for(lambda: _pytorchjob(custom, namespace), what="the first PyTorchJob")
    _succeed(custom, namespace, now_minus(600), now_minus(0))
    wait_for(lambda: status_of(custom, namespace, "finetunes", "tuned").get("phase") == "Succeeded", what="the first run Succeeded")

    # Deleted and applied again while the old job waits for garbage collection (none runs here).
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes", "tuned")
    wait_for(lambda: not [f for f in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes")["items"]], what="deleted")
    new = create(custom, namespace, "finetunes", "FineTune", "tuned", FT)
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    waiting = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tuned")).get("conditions") and s, what="a status")
    assert condition(waiting, "Ready")["reason"] == "WaitingForOldChild"
    assert old["metadata"]["uid"] in condition(waiting, "Ready")["message"]
    assert waiting["phase"] == "Pending" and "jobName" not in waiting and "costUSD" not in waiting
    (leftover,) = _jobs(custom, namespace)
    assert leftover["metadata"]["ownerReferences"][0]["uid"] == old["metadata"]["uid"], "never adopted"

    # The garbage collector's part, one dependent at a time: the old job goes first; its config is
    # still there, and a new job must not start with the old config.
    custom.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train")
    still = wait_for(lambda: (c := condition(status_of(custom, namespace, "finetunes", "tuned"), "Ready")) and "ConfigMap" in c["message"] and c,
                     what="waiting for the old config")
    assert still["reason"] == "WaitingForOldChild" and _jobs(custom, namespace) == []
    kubernetes.client.CoreV1Api(api_client).delete_namespaced_config_map("tuned-train-config", namespace)
    fresh = wait_for(lambda: (j := _pytorchjob(custom, namespace)) and j["metadata"]["ownerReferences"][0]["uid"] == new["metadata"]["uid"] and j,
                     what="the new resource's PyTorchJob")
    assert "status" not in fresh or not fresh["status"].get("conditions")
    status = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tuned")).get("jobName") and s, what="the new job reported")
    assert status["phase"] == "Pending" and condition(status, "Ready")["reason"] == "JobCreated"


def test_a_finished_finetune_whose_job_ttl_deleted_stays_succeeded_and_never_reruns(start_operator, custom, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "tuned", {**FT, "runPolicy": {"ttlSecondsAfterFinished": 60}})
    wait_for(lambda: _pytorchjob(custom, namespace), what="the PyTorchJob")
    _succeed(custom, namespace, now_minus(3600), now_minus(0))
    done = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tuned")).get("phase") == "Succeeded" and s, what="Succeeded")
    assert done["gpuHours"] == 8.0 and done["costUSD"] == 16.0

    # The training operator's TTL deletes the finished job.
    custom.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", "tuned-train")
    # An edit makes the operator look again (observedGeneration says it did) with the job gone.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "finetunes", "tuned", {"spec": {"budgetUSD": 500.0}})
    generation = get(custom, namespace, "finetunes", "tuned")["metadata"]["generation"]
    after = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "tuned")).get("observedGeneration") == generation and s, what="re-reconciled")
    assert _jobs(custom, namespace) == [], "a finished FineTune was run again"
    assert after["phase"] == "Succeeded"
    assert (after["gpuHours"], after["costUSD"], after["jobName"]) == (8.0, 16.0, "tuned-train")
    assert condition(after, "Ready") == condition(done, "Ready"), "the finished run's conditions are kept as they were"


def test_a_refused_child_is_a_condition_with_the_servers_reason_and_recovers(start_operator, custom, api_client, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    # No Jobs allowed in this namespace: the API server refuses the generation Job (HTTP 403).
    # (The quota's status is the quota controller's part, played here: admission reads it.)
    core.create_namespaced_resource_quota(namespace, {"metadata": {"name": "no-jobs"}, "spec": {"hard": {"count/jobs.batch": "0"}}})
    core.patch_namespaced_resource_quota_status("no-jobs", namespace, {"status": {"hard": {"count/jobs.batch": "0"}, "used": {"count/jobs.batch": "0"}}})
    op = start_operator()
    create(custom, namespace, "instructdatasets", "InstructDataset", "data", {
        "teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/d"},
    })
    blocked = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "data")).get("phase") == "Blocked" and s, what="Blocked")
    ready = condition(blocked, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "JobForbidden"
    assert "data-generate" in ready["message"] and "quota" in ready["message"]
    assert blocked["message"] == ready["message"][:1000]
    # Retried with a doubling backoff, not in a hot loop.
    key = ("InstructDataset", namespace, "data")
    wait_for(lambda: op.wiring.controller._failures.get(key, 0) >= 2, what="a retry")
    assert op.wiring.controller._retry_at[key] > 0

    core.delete_namespaced_resource_quota("no-jobs", namespace)
    wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("data-generate", namespace), timeout=30, what="the Job once allowed")
    recovered = wait_for(lambda: (s := status_of(custom, namespace, "instructdatasets", "data")).get("phase") == "Pending" and s, what="Pending")
    assert condition(recovered, "Ready")["reason"] == "JobCreated"


def test_a_job_that_finished_and_went_while_the_operator_was_away_is_not_run_again(start_operator, custom, namespace: str) -> None:
    first = start_operator()
    for name in ("reported", "silent"):
        create(custom, namespace, "finetunes", "FineTune", name, FT)
        wait_for(lambda name=name: _pytorchjob(custom, namespace, f"{name}-train"), what=f"the {name} job")
        custom.patch_namespaced_custom_object_status("kubeflow.org", "v1", namespace, "pytorchjobs", f"{name}-train", {"status": {
            "startTime": now_minus(60), "conditions": [{"type": "Running", "status": "True"}]}})
        wait_for(lambda name=name: status_of(custom, namespace, "finetunes", name).get("phase") == "Running", what=f"{name} Running")
    first.stop()

    # While it is away: both finish and their TTL removes them; only one workload wrote its result.
    for name in ("reported", "silent"):
        _succeed(custom, namespace, now_minus(60), now_minus(0), name=f"{name}-train")
        custom.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", f"{name}-train")
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "finetunes", "reported", {"status": {"result": {
        "artifact": {"uri": "s3://bucket/models/tuned", "sha256": "b" * 64}, "sizeBytes": 1, "finishedAt": now_minus(0)}}})

    start_operator()
    reported = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "reported")).get("phase") == "Succeeded" and s, what="reported Succeeded")
    silent = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "silent")).get("phase") == "Failed" and s, what="silent Failed")
    assert reported["model"]["sha256"] == "b" * 64
    assert condition(silent, "Ready")["reason"] == "PyTorchJobLost"
    assert _jobs(custom, namespace) == [], "a finished run was started again"
