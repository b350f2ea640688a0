"""FineTune with backend: trainjob -> a Kubeflow Trainer v2 TrainJob, on the real API server with
Trainer v2.3.0's own TrainJob CRD (schema, defaults and CEL rules, immutability included).

No Trainer controller runs: the test plays it by writing the TrainJob's status as v2.3.0 does
(Suspended True/Suspended then False/Resumed, Complete or Failed copied from the JobSet,
jobsStatus), and plays Kueue where a queue is involved (the suspension, its own runtimePatches entry).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from alpaca_operator.kube import Cluster
from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import condition, create, now_minus, status_of
from support.cluster import wait_for

CRD = Path(__file__).resolve().parents[3] / "hack/tools/trainer/manifests/trainer.kubeflow.org_trainjobs.yaml"
GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
SPEC = {
    "backend": "trainjob",
    "dataset": {"uri": "s3://bucket/alpaca/dataset.jsonl"},
    "gpus": {"nodes": 2, "perNode": 8},
    "output": {"uri": "s3://bucket/models/alpaca-7b"},
}


def test_without_trainer_installed_the_finetune_says_so(start_operator, custom, control_plane: ControlPlane, namespace: str) -> None:
    # First in the module: the TrainJob CRD is installed by the fixture of the tests below.
    with control_plane.api_client() as client:
        served = {r.name for r in kubernetes.client.CustomObjectsApi(client).get_api_resources(GROUP, VERSION).resources} if _group_served(client) else set()
    if PLURAL in served:
        pytest.skip("the TrainJob CRD is already installed in this control plane")
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "nowhere", SPEC)
    blocked = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "nowhere")).get("phase") == "Blocked" and s, what="Blocked")
    ready = condition(blocked, "Ready")
    assert ready["reason"] == "TrainJobNotFound" and "TrainJob 'nowhere-train'" in ready["message"]


def _group_served(client: kubernetes.client.ApiClient) -> bool:
    groups = kubernetes.client.ApisApi(client).get_api_versions().groups
    return any(g.name == GROUP for g in groups)


@pytest.fixture(scope="module")
def trainjob_crd(control_plane: ControlPlane) -> Iterator[None]:
    """Trainer v2.3.0's TrainJob CRD, Established (left installed: CRDs are cluster-wide and the
    namespaces of other tests never hold TrainJobs)."""
    doc = yaml.safe_load(CRD.read_text())
    with control_plane.api_client() as client:
        ext = kubernetes.client.ApiextensionsV1Api(client)
        try:
            ext.create_custom_resource_definition(doc)
        except ApiException as exc:
            if exc.status != 409:
                raise

        def established() -> bool:
            crd = ext.read_custom_resource_definition(doc["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))

        wait_for(established, timeout=60, what="the TrainJob CRD established")
    yield


def _trainjob(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return result


def _play_status(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str, conditions: list[dict[str, Any]], active: int = 0) -> None:
    """Write the status Trainer v2.3.0's controller would: its conditions and the JobSet's per-job counts."""
    jobs = [{"name": "node", "ready": active, "active": active, "succeeded": 0, "failed": 0, "suspended": 0}]
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": {"conditions": conditions, "jobsStatus": jobs}})


def _cond(type_: str, status: str, reason: str, at: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message or reason, "lastTransitionTime": at}


def _phase(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str, phase: str) -> dict[str, Any]:
    return wait_for(lambda: (s := status_of(custom, namespace, "finetunes", name)).get("phase") == phase and s, what=phase)


def test_the_trainjob_is_created_owned_and_followed_to_succeeded(trainjob_crd, start_operator, custom, namespace: str) -> None:
    start_operator()
    tune = create(custom, namespace, "finetunes", "FineTune", "alpaca-7b", SPEC)
    job = wait_for(lambda: _trainjob(custom, namespace, "alpaca-7b-train"), what="the TrainJob")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("FineTune", "alpaca-7b", tune["metadata"]["uid"], True)
    labels = job["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "alpaca-7b" and labels["app.kubernetes.io/component"] == "train"
    spec = job["spec"]
    # The CRD's defaults filled in what the operator left out.
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"}
    assert spec["suspend"] is False and spec["managedBy"] == "trainer.kubeflow.org/trainjob-controller"
    assert (spec["trainer"]["numNodes"], spec["trainer"]["numProcPerNode"]) == (2, 8)
    assert spec["trainer"]["command"][:3] == ["python", "-m", "alpaca_jobs.train.launch"]
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"} and any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    # The status is written after the create it reports: wait for it, do not read it at once.
    wait_for(lambda: status_of(custom, namespace, "finetunes", "alpaca-7b").get("jobName") == "alpaca-7b-train", what="jobName")

    # Trainer's part: admitted (Suspended False/Resumed) an hour ago, its JobSet's pods running since.
    _play_status(custom, namespace, "alpaca-7b-train", [_cond("Suspended", "False", "Resumed", now_minus(3600))], active=1)
    running = _phase(custom, namespace, "alpaca-7b", "Running")
    # 16 GPUs for an hour at $2 per GPU-hour (plus the seconds the test takes).
    assert 16.0 <= running["gpuHours"] < 16.2 and 32.0 <= running["costUSD"] < 32.4
    assert condition(running, "Ready")["reason"] == "Running"

    finished_at = now_minus(0)
    _play_status(custom, namespace, "alpaca-7b-train", [_cond("Suspended", "False", "Resumed", now_minus(3600)),
                                                        _cond("Complete", "True", "AllJobsCompleted", finished_at)])
    done = _phase(custom, namespace, "alpaca-7b", "Succeeded")
    assert condition(done, "Ready")["status"] == "True"
    # The Complete condition's time ends the GPU clock.
    assert done["completionTime"] == finished_at and done["accruedUntil"].startswith(finished_at[:-1])


def test_a_failed_trainjob_fails_the_finetune(trainjob_crd, start_operator, custom, namespace: str) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "broken", SPEC)
    wait_for(lambda: _trainjob(custom, namespace, "broken-train"), what="the TrainJob")
    _play_status(custom, namespace, "broken-train", [_cond("Failed", "True", "FailedJobs", now_minus(0), "jobset has failed jobs")])
    failed = _phase(custom, namespace, "broken", "Failed")
    assert condition(failed, "Ready")["reason"] == "FailedJobs" and "failed jobs" in failed["message"]


def test_queued_then_admitted_then_out_of_budget_suspends_and_keeps_kueues_patch(
    trainjob_crd, start_operator, custom, control_plane: ControlPlane, namespace: str,
) -> None:
    start_operator()
    # $64 at 16 GPUs x $2 per GPU-hour: two hours, the TrainJob's activeDeadlineSeconds.
    create(custom, namespace, "finetunes", "FineTune", "queued", {**SPEC, "budgetUSD": 64.0, "queue": {"name": "team-a"}})
    job = wait_for(lambda: _trainjob(custom, namespace, "queued-train"), what="the TrainJob")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["activeDeadlineSeconds"] == 7200 and job["spec"]["suspend"] is False

    # Kueue's part: hold it (suspend), and write its own runtimePatches entry under its own manager.
    kueue = Cluster.from_kubeconfig(str(control_plane.kubeconfig))
    try:
        kueue.merge_patch(job, {"spec": {"suspend": True}})
        kueue.apply({"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainJob", "metadata": {"name": "queued-train", "namespace": namespace},
                     "spec": {"runtimePatches": [{"manager": "kueue.x-k8s.io/manager", "trainingRuntimeSpec": {"template": {"spec": {
                         "replicatedJobs": [{"name": "node", "template": {"spec": {"template": {"spec": {"nodeSelector": {"flavor": "a100-spot"}}}}}}]}}}}]}},
                    field_manager="kueue-admission")
    finally:
        kueue.close()
    _play_status(custom, namespace, "queued-train", [_cond("Suspended", "True", "Suspended", now_minus(0))])
    held = wait_for(lambda: (s := status_of(custom, namespace, "finetunes", "queued")) and (c := condition(s, "Ready")) and c["reason"] == "Queued" and s, what="Queued")
    assert held["phase"] == "Pending" and "team-a" in held["message"]

    # Admitted three hours ago (Trainer: Suspended False/Resumed), running since: past the $64 budget.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "queued-train", {"spec": {"suspend": False}})
    _play_status(custom, namespace, "queued-train", [_cond("Suspended", "False", "Resumed", now_minus(3 * 3600))], active=1)
    failed = _phase(custom, namespace, "queued", "Failed")
    assert condition(failed, "Ready")["reason"] == "BudgetExceeded"
    stopped = wait_for(lambda: (j := _trainjob(custom, namespace, "queued-train"))["spec"]["suspend"] and j, what="the TrainJob suspended")
    managers = [p["manager"] for p in stopped["spec"]["runtimePatches"]]
    assert sorted(managers) == ["alpaca.dev/operator", "kueue.x-k8s.io/manager"]
    assert stopped["spec"]["trainer"] == job["spec"]["trainer"]


def test_an_edit_a_trainjob_cannot_take_is_a_condition_not_a_patch_loop(
    trainjob_crd, start_operator, custom, namespace: str,
) -> None:
    start_operator()
    create(custom, namespace, "finetunes", "FineTune", "fixed", SPEC)
    job = wait_for(lambda: _trainjob(custom, namespace, "fixed-train"), what="the TrainJob")
    # The API server itself refuses a change to trainer: the reason the operator never tries.
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "fixed-train", {"spec": {"trainer": {"numNodes": 4}}})
    assert refused.value.status == 422 and "immutable" in (refused.value.body or "")

    custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "finetunes", "fixed", {"spec": {"gpus": {"nodes": 4, "perNode": 8}}})
    edited = wait_for(
        lambda: (s := status_of(custom, namespace, "finetunes", "fixed")) and (c := condition(s, "SpecApplied")) and c["status"] == "False" and s,
        what="SpecApplied=False",
    )
    applied = condition(edited, "SpecApplied")
    assert applied["reason"] == "ImmutableTrainJob" and "recreate the FineTune" in applied["message"]
    assert edited["observedGeneration"] == 2 and edited["phase"] == "Pending"
    # Never written again: same object, same resourceVersion, trainer as created.
    after = _trainjob(custom, namespace, "fixed-train")
    assert after["metadata"]["resourceVersion"] == job["metadata"]["resourceVersion"]
    assert after["spec"]["trainer"]["numNodes"] == 2


def test_backend_is_immutable_and_runtime_ref_needs_it(trainjob_crd, custom, namespace: str) -> None:
    create(custom, namespace, "finetunes", "FineTune", "pinned", SPEC)
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object("alpaca.dev", "v1alpha1", namespace, "finetunes", "pinned", {"spec": {"backend": "pytorchjob"}})
    assert refused.value.status == 422 and "backend is immutable" in refused.value.body
    with pytest.raises(ApiException) as refused:
        create(custom, namespace, "finetunes", "FineTune", "mixed", {**SPEC, "backend": "pytorchjob", "runtimeRef": {"name": "torch-distributed"}})
    assert refused.value.status == 422 and "runtimeRef is only allowed with backend: trainjob" in refused.value.body


def test_a_restart_finds_its_trainjob_and_a_deleted_one_is_never_run_again(trainjob_crd, start_operator, custom, namespace: str) -> None:
    first = start_operator()
    for name in ("kept", "gone"):
        create(custom, namespace, "finetunes", "FineTune", name, SPEC)
        wait_for(lambda name=name: _trainjob(custom, namespace, f"{name}-train"), what=f"the {name} TrainJob")
        _play_status(custom, namespace, f"{name}-train", [], active=1)
        _phase(custom, namespace, name, "Running")
    uids = {name: _trainjob(custom, namespace, f"{name}-train")["metadata"]["uid"] for name in ("kept", "gone")}
    first.stop()

    # While the operator is away: one finishes, the other is deleted before its outcome was seen.
    _play_status(custom, namespace, "kept-train", [_cond("Complete", "True", "AllJobsCompleted", now_minus(0))], active=0)
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone-train")

    start_operator()
    _phase(custom, namespace, "kept", "Succeeded")
    lost = _phase(custom, namespace, "gone", "Failed")
    assert condition(lost, "Ready")["reason"] == "TrainJobLost"
    jobs = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    assert [(j["metadata"]["name"], j["metadata"]["uid"]) for j in jobs] == [("kept-train", uids["kept"])], "a TrainJob was made again"
