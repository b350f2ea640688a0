"""Evaluation -> Job on a real API server: admission, waiting for its servers, the Job it builds,
phases from the Job, the workload's score and report, cost, and a namesake recreated by UID.

No Job controller and no workload run here: the tests patch the Job's status as the Job
controller would, and the evaluation's status with the workload's own ServiceAccount.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from alpaca_operator.testing.controlplane import ControlPlane
from operator_helpers import GROUP, VERSION, condition, create, now_minus, status_of
from support.cluster import wait_for

SECRET_VALUE = "sk-evaluation-judge-key-that-must-stay-in-its-secret"
JUDGE = {"baseURL": "https://api.example.com/v1", "model": "gpt-teacher", "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}}
SPEC: dict[str, Any] = {
    "candidate": {"modelServerRef": {"name": "tuned"}},
    "baseline": {"modelServerRef": {"name": "base"}},
    "judge": JUDGE,
    "tasks": {"configMapRef": {"name": "held-out", "key": "tasks.jsonl"}, "sampleSize": 8},
    "output": {"pvc": {"claimName": "reports", "subPath": "eval"}},
}
# Per hour: $36 is a cent a second, so elapsed seconds read straight off the cost.
SERVER = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "gpusPerReplica": 0, "replicaHourUSD": 36.0}


def _evaluation(custom: kubernetes.client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return create(custom, namespace, "evaluations", "Evaluation", name, spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**SPEC, "candidate": {"modelServerRef": {"name": "tuned"}, "baseURL": "https://api.example.com/v1", "model": "m"}},
         "exactly one of modelServerRef, baseURL or outputs must be set"),
        ({**SPEC, "baseline": {}}, "exactly one of modelServerRef, baseURL or outputs must be set"),
        ({**SPEC, "judge": {"baseURL": "https://api.example.com/v1"}}, "model is required with baseURL"),
        ({**SPEC, "judge": {"model": "m"}}, "exactly one of modelServerRef or baseURL must be set"),
        ({**SPEC, "baseline": {"modelServerRef": {"name": "base"}, "pricing": {"inputUSDPerMillionTokens": 1}}},
         "pricing is only used with baseURL"),
        ({**SPEC, "baseline": {"modelServerRef": {"name": "base"}, "apiKeySecretRef": {"name": "k", "key": "k"}}},
         "apiKeySecretRef is only used with baseURL"),
        ({**SPEC, "tasks": {"configMapRef": {"name": "t", "key": "k"}, "uri": "s3://b/t.jsonl"}},
         "at most one of configMapRef or uri may be set"),
        ({**SPEC, "baseline": {"outputs": {}}}, "exactly one of configMapRef or uri must be set"),
        ({**SPEC, "tasks": {"sampleSize": 0}}, "spec.tasks.sampleSize"),
        ({**SPEC, "output": {"uri": "http://example.com/reports"}}, "spec.output.uri"),
        ({**SPEC, "generation": {"temperature": 3}}, "spec.generation.temperature"),
        ({key: value for key, value in SPEC.items() if key != "judge"}, "spec.judge: Required value"),
    ],
)
def test_admission_refuses_bad_specs_naming_what_is_wrong(
    custom: kubernetes.client.CustomObjectsApi, crds: None, namespace: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiException) as refused:
        _evaluation(custom, namespace, "bad", spec)
    assert refused.value.status == 422 and message in refused.value.body, refused.value.body


def _secret_and_tasks(api_client: kubernetes.client.ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "judge-key"}, "data": {"api-key": base64.b64encode(SECRET_VALUE.encode()).decode()}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "held-out"}, "data": {"tasks.jsonl": '{"instruction": "Name a color.", "input": ""}\n'}})


def _server_ready(api_client: kubernetes.client.ApiClient, custom, namespace: str, name: str) -> None:
    apps = kubernetes.client.AppsV1Api(api_client)
    wait_for(lambda: apps.read_namespaced_deployment(f"{name}-serve", namespace), what=f"the {name} Deployment")
    apps.patch_namespaced_deployment_status(f"{name}-serve", namespace, {"status": {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}})
    wait_for(lambda: status_of(custom, namespace, "modelservers", name).get("phase") == "Ready", what=f"ModelServer {name} Ready")


def test_waits_for_its_servers_then_runs_and_reports_the_workloads_score(
    start_operator, custom, api_client: kubernetes.client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    _secret_and_tasks(api_client, namespace)
    start_operator()
    batch = kubernetes.client.BatchV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    _evaluation(custom, namespace, "tuned-vs-base", SPEC)

    # Neither server exists yet: a condition per server says which, and nothing runs.
    waiting = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base")).get("conditions") and s, what="conditions")
    assert condition(waiting, "CandidateReady")["reason"] == "NotFound" and condition(waiting, "BaselineReady")["reason"] == "NotFound"
    assert waiting["phase"] == "Pending" and condition(waiting, "Ready")["status"] == "False"
    assert condition(waiting, "JudgeReady") is None, "an API judge is not waited for"

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServer", "metadata": {"name": "tuned"}, "spec": SERVER})
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServer", "metadata": {"name": "base"}, "spec": {**SERVER, "replicaHourUSD": 0}})
    _server_ready(api_client, custom, namespace, "tuned")
    half = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base"))
                    and (condition(s, "CandidateReady") or {}).get("status") == "True" and s, what="candidate ready")
    assert condition(half, "BaselineReady")["reason"] == "Waiting" and "base" in condition(half, "BaselineReady")["message"]
    assert not batch.list_namespaced_job(namespace).items, "no Job before every server is Ready"

    _server_ready(api_client, custom, namespace, "base")
    job = wait_for(lambda: batch.read_namespaced_job("tuned-vs-base-evaluate", namespace), what="the Job")
    owner = job.metadata.owner_references[0]
    evaluation = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "evaluations", "tuned-vs-base")
    assert (owner.kind, owner.uid, owner.controller) == ("Evaluation", evaluation["metadata"]["uid"], True)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.command == ["alpaca", "evaluate", "--config", "/etc/alpaca/config.json"]
    assert pod.service_account_name == "alpaca-workload"
    (key,) = container.env
    assert key.name == "ALPACA_JUDGE_API_KEY" and key.value is None
    assert (key.value_from.secret_key_ref.name, key.value_from.secret_key_ref.key) == ("judge-key", "api-key")
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["output"].persistent_volume_claim.claim_name == "reports"
    assert volumes["tasks"].config_map.name == "held-out"
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts["tasks"] == "/etc/alpaca/inputs/tasks" and mounts["config"] == "/etc/alpaca"

    config_map = core.read_namespaced_config_map("tuned-vs-base-evaluate-config", namespace)
    config = json.loads(config_map.data["config.json"])
    assert config["candidate"]["endpoint"]["url"] == status_of(custom, namespace, "modelservers", "tuned")["url"]
    assert config["baseline"]["endpoint"]["url"] == status_of(custom, namespace, "modelservers", "base")["url"]
    assert config["candidate"]["label"] == "ModelServer/tuned" and config["baseline"]["label"] == "ModelServer/base"
    assert config["judge"]["apiKeyEnv"] == "ALPACA_JUDGE_API_KEY"
    assert config["judge"]["pricing"] == {"inputUSDPerMillionTokens": 1.0, "outputUSDPerMillionTokens": 2.0}, "the operator's price table"
    assert config["tasks"] == "/etc/alpaca/inputs/tasks/tasks.jsonl"
    assert config["statusTarget"]["plural"] == "evaluations"
    assert config_map.metadata.owner_references[0].uid == evaluation["metadata"]["uid"]

    # The Job controller's part: the pod runs, started a minute ago.
    batch.patch_namespaced_job_status("tuned-vs-base-evaluate", namespace, {"status": {"active": 1, "startTime": now_minus(60)}})
    running = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base")).get("phase") == "Running" and s, what="Running")
    assert running["jobName"] == "tuned-vs-base-evaluate"

    # The workload's part, with its own ServiceAccount: live counts and the token cost it priced.
    token = control_plane.token_for_service_account(namespace, "alpaca-workload")
    with control_plane.api_client(token) as workload:
        as_workload = kubernetes.client.CustomObjectsApi(workload)
        as_workload.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "evaluations", "tuned-vs-base", {"status": {
            "progress": {"tasks": 8, "answered": 8, "judged": 3, "promptTokens": 1000, "completionTokens": 200, "costUSD": 0.25}}})
        # The candidate's server bills a cent a second of the Job's run: at least 59 s have passed.
        priced = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base")).get("serverCostUSD", 0) >= 0.59
                          and s["costUSD"] == round(0.25 + s["serverCostUSD"], 4) and s, what="tokens and server time in costUSD")
        assert priced["progress"]["judged"] == 3

        as_workload.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, "evaluations", "tuned-vs-base", {"status": {
            "progress": {"tasks": 8, "answered": 8, "judged": 8, "promptTokens": 4000, "completionTokens": 800, "costUSD": 0.5},
            "score": {"winRate": 0.625, "winRateLow": 0.3125, "winRateHigh": 0.875, "lengthControlledWinRate": 0.58, "wins": 4, "ties": 2, "losses": 2},
            "result": {"artifact": {"uri": "/var/lib/alpaca/output/summary.json", "sha256": "e" * 64}, "sizeBytes": 2048,
                       "records": 8, "counts": {"wins": 4, "ties": 2, "losses": 2}, "promptTokens": 4000, "completionTokens": 800,
                       "costUSD": 0.5, "finishedAt": now_minus(0)}}})
    finished_at = now_minus(0)
    batch.patch_namespaced_job_status("tuned-vs-base-evaluate", namespace, {"status": {
        "active": 0, "succeeded": 1, "completionTime": finished_at, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": finished_at},
            {"type": "Complete", "status": "True", "lastTransitionTime": finished_at}]}})
    done = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base")).get("phase") == "Succeeded" and s, what="Succeeded")
    ready = condition(done, "Ready")
    assert ready["status"] == "True" and "win rate 62.5%" in ready["message"] and "4 wins, 2 ties, 2 losses" in ready["message"]
    assert done["report"] == {"uri": "/var/lib/alpaca/output/summary.json", "sha256": "e" * 64}
    assert done["score"]["winRate"] == 0.625, "the workload's score stands as written"
    assert done["observedGeneration"] == 1 and done["completionTime"]
    # Billed up to the Job's completion and no further: more time passing adds nothing.
    settled = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "tuned-vs-base")).get("accruedUntil") and s, what="accrued")
    time.sleep(1.5)
    later = status_of(custom, namespace, "evaluations", "tuned-vs-base")
    assert later["serverCostUSD"] == settled["serverCostUSD"] and later["costUSD"] == round(0.5 + later["serverCostUSD"], 4)

    # No secret value anywhere the operator writes: ConfigMap, Job, status, Events.
    written = [
        json.dumps(config_map.to_dict(), default=str),
        json.dumps(batch.read_namespaced_job("tuned-vs-base-evaluate", namespace).to_dict(), default=str),
        json.dumps(status_of(custom, namespace, "evaluations", "tuned-vs-base")),
        json.dumps(core.list_namespaced_event(namespace).to_dict(), default=str),
    ]
    assert not any(SECRET_VALUE in text for text in written)


def _complete(batch: kubernetes.client.BatchV1Api, namespace: str, name: str) -> None:
    stamp = now_minus(0)
    batch.patch_namespaced_job_status(name, namespace, {"status": {
        "active": 0, "succeeded": 1, "startTime": now_minus(5), "completionTime": stamp, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": stamp},
            {"type": "Complete", "status": "True", "lastTransitionTime": stamp}]}})


def test_finished_work_is_never_rerun_and_a_namesake_waits_for_the_old_job(
    start_operator, custom, api_client: kubernetes.client.ApiClient, namespace: str
) -> None:
    spec = {**SPEC, "candidate": {"baseURL": "https://api.example.com/v1", "model": "tuned"},
            "baseline": {"outputs": {"uri": "s3://answers/teacher.jsonl"}}, "tasks": {}}
    start_operator()
    batch = kubernetes.client.BatchV1Api(api_client)
    core = kubernetes.client.CoreV1Api(api_client)
    first = _evaluation(custom, namespace, "again", spec)
    wait_for(lambda: batch.read_namespaced_job("again-evaluate", namespace), what="the Job")
    _complete(batch, namespace, "again-evaluate")
    wait_for(lambda: status_of(custom, namespace, "evaluations", "again").get("phase") == "Succeeded", what="Succeeded")

    # The finished Job goes (a TTL, a person): the evaluation keeps its phase and runs nothing again.
    batch.delete_namespaced_job("again-evaluate", namespace, propagation_policy="Background")
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, what="the Job gone")
    time.sleep(2)  # several resyncs (0.5 s each)
    assert status_of(custom, namespace, "evaluations", "again")["phase"] == "Succeeded"
    assert not batch.list_namespaced_job(namespace).items

    # Recreated under the same name while the old one's children are still there (no garbage
    # collector runs here): the new one waits, and never adopts what the old UID owns.
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "evaluations", "again")
    old_job = batch.create_namespaced_job(namespace, {
        "metadata": {"name": "again-evaluate", "labels": {"app.kubernetes.io/managed-by": "alpaca-operator", "app.kubernetes.io/component": "evaluate"},
                     "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "Evaluation", "name": "again", "uid": first["metadata"]["uid"], "controller": True}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}},
    })
    second = _evaluation(custom, namespace, "again", spec)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    waiting = wait_for(lambda: (s := status_of(custom, namespace, "evaluations", "again"))
                       and (condition(s, "Ready") or {}).get("reason") == "WaitingForOldChild" and s, what="WaitingForOldChild")
    assert waiting["phase"] == "Pending", "the old run's phase is not inherited"
    assert batch.read_namespaced_job("again-evaluate", namespace).metadata.uid == old_job.metadata.uid

    # The old children go, the old Job last: while it is there the new evaluation waits, so what
    # comes after it is the new evaluation's own (deleting the config second would race the
    # operator, which writes its new config as soon as the Job is gone).
    core.delete_namespaced_config_map("again-evaluate-config", namespace)
    batch.delete_namespaced_job("again-evaluate", namespace, propagation_policy="Background")
    fresh = wait_for(lambda: (j := batch.read_namespaced_job("again-evaluate", namespace))
                     and j.metadata.uid != old_job.metadata.uid and j, what="the new Job")
    assert fresh.metadata.owner_references[0].uid == second["metadata"]["uid"]
    config = json.loads(core.read_namespaced_config_map("again-evaluate-config", namespace).data["config.json"])
    assert config["baseline"] == {"label": "s3://answers/teacher.jsonl", "outputs": "s3://answers/teacher.jsonl"}
    assert "tasks" not in config, "no tasks given: the built-in evaluation tasks"


def test_a_workload_role_made_before_evaluations_existed_gains_their_status(
    start_operator, custom, api_client: kubernetes.client.ApiClient, control_plane: ControlPlane, namespace: str
) -> None:
    # What an older operator left in the namespace: the workloads' Role without the new kind.
    rbac = kubernetes.client.RbacAuthorizationV1Api(api_client)
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "alpaca-workload"}, "rules": [
        {"apiGroups": [GROUP], "resources": ["instructdatasets/status", "finetunes/status", "modelservers/status"], "verbs": ["get", "patch"]}]})
    start_operator()
    spec = {**SPEC, "candidate": JUDGE, "baseline": {"outputs": {"uri": "s3://answers/teacher.jsonl"}}, "tasks": {}}
    _evaluation(custom, namespace, "after-upgrade", spec)
    wait_for(lambda: kubernetes.client.BatchV1Api(api_client).read_namespaced_job("after-upgrade-evaluate", namespace), what="the Job")
    role = rbac.read_namespaced_role("alpaca-workload", namespace)
    assert any("evaluations/status" in (rule.resources or []) for rule in role.rules), role.rules
    # So the workload can report.
    token = control_plane.token_for_service_account(namespace, "alpaca-workload")
    with control_plane.api_client(token) as workload:
        kubernetes.client.CustomObjectsApi(workload).patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "evaluations", "after-upgrade", {"status": {"progress": {"tasks": 8}}})
    assert status_of(custom, namespace, "evaluations", "after-upgrade")["progress"]["tasks"] == 8
