"""The Evaluation's pure reconcile, as tables: waits, the Job it plans, phases, cost, budget, refusals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from alpaca_operator.builders.evaluation import API_KEY_ENV
from alpaca_operator.naming import is_dns_1035
from alpaca_operator.observe import ChildState
from alpaca_operator.reconcile import Plan, evaluation
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings.model_validate({
    "gpuHourUSD": {"nvidia-a100-80gb": 2.0},
    "tokenPrices": {"gpt-judge": {"inputUSDPerMillionTokens": 5.0, "outputUSDPerMillionTokens": 15.0}},
})
UID = "uid-1"
DIGEST = "d" * 64

SPEC: dict[str, Any] = {
    "candidate": {"modelServerRef": {"name": "tuned"}},
    "baseline": {"modelServerRef": {"name": "base"}},
    "judge": {"baseURL": "https://api.example.com/v1", "model": "gpt-judge", "apiKeySecretRef": {"name": "judge-key", "key": "api-key"}},
    "tasks": {"sampleSize": 8},
    "output": {"pvc": {"claimName": "reports", "subPath": "eval"}},
}


def body(spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "ev") -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "Evaluation", "spec": spec, "status": status or {},
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1}}


def server(phase: str = "Ready", gpus: int = 0, name: str = "s", auth: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "gpusPerReplica": gpus}
    if auth:
        spec["auth"] = {"apiKeySecretRef": {"name": f"{name}-token", "key": "token"}}
    status = {"phase": phase, "url": f"http://{name}.ns.svc:8000/v1", "servedModelName": name} if phase == "Ready" else {"phase": phase}
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": name, "namespace": "ns"},
            "spec": spec, "status": status}


def both_ready(**kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return {("ModelServer", "tuned"): server(name="tuned", **kwargs), ("ModelServer", "base"): server(name="base", **kwargs)}


def conditions(plan: Plan) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.status.conditions}


def job(plan: Plan) -> dict[str, Any]:
    return plan.children[-1]


def config(plan: Plan) -> dict[str, Any]:
    return json.loads(plan.children[0]["data"]["config.json"])


def child(phase: str, reason: str, *, started: datetime | None = None, completed: datetime | None = None) -> ChildState:
    stamp = (lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None)
    return ChildState(name="ev-evaluate", phase=phase, reason=reason, start_time=stamp(started),
                      completion_time=stamp(completed), generation=1, owner_uid=UID)


def test_refs_name_each_server_once() -> None:
    spec = {**SPEC, "judge": {"modelServerRef": {"name": "base"}}}
    assert evaluation.refs(body(spec)) == [("ModelServer", "tuned"), ("ModelServer", "base")]


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        ({}, {"CandidateReady": ("False", "NotFound"), "BaselineReady": ("False", "NotFound")}),
        ({("ModelServer", "tuned"): server(name="tuned")},
         {"CandidateReady": ("True", "Ready"), "BaselineReady": ("False", "NotFound")}),
        ({("ModelServer", "tuned"): server(name="tuned"), ("ModelServer", "base"): server("Progressing", name="base")},
         {"CandidateReady": ("True", "Ready"), "BaselineReady": ("False", "Waiting")}),
    ],
)
def test_waits_for_every_server_and_says_which(references, expected) -> None:
    plan = evaluation.reconcile(body(SPEC), None, references, SETTINGS, NOW)
    assert plan.children == []
    found = conditions(plan)
    assert {k: v for k, v in found.items() if k in expected} == expected
    assert "JudgeReady" not in found, "an API judge is not waited for"
    assert plan.status.fields["phase"] == "Pending" and found["Ready"][0] == "False"
    waiting = next(c for c in plan.status.conditions if c.type == "Ready")
    assert ("candidate" if expected["CandidateReady"][0] == "False" else "baseline") in waiting.message


def test_ready_servers_give_a_job_with_the_resolved_endpoints_and_no_secret_values() -> None:
    plan = evaluation.reconcile(body(SPEC), None, both_ready(), SETTINGS, NOW)
    assert [c["kind"] for c in plan.children] == ["ConfigMap", "Job"]
    assert conditions(plan)["CandidateReady"] == ("True", "Ready") and conditions(plan)["BaselineReady"] == ("True", "Ready")
    cfg = config(plan)
    assert cfg["candidate"] == {"label": "ModelServer/tuned", "endpoint": {
        "url": "http://tuned.ns.svc:8000/v1", "model": "tuned", "pricing": {"inputUSDPerMillionTokens": 0.0, "outputUSDPerMillionTokens": 0.0}}}
    assert cfg["baseline"]["endpoint"]["url"] == "http://base.ns.svc:8000/v1"
    # The judge's key arrives as an env var from its Secret; its price comes from the operator's table.
    assert cfg["judge"] == {"url": "https://api.example.com/v1", "model": "gpt-judge", "apiKeyEnv": API_KEY_ENV["judge"],
                            "pricing": {"inputUSDPerMillionTokens": 5.0, "outputUSDPerMillionTokens": 15.0}}
    assert cfg["output"] == "/var/lib/alpaca/output" and "tasks" not in cfg, "no tasks file: the built-in evaluation tasks"
    assert cfg["statusTarget"] == {"group": "alpaca.dev", "version": "v1alpha1", "plural": "evaluations", "namespace": "ns", "name": "ev"}
    pod = job(plan)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["alpaca", "evaluate", "--config", "/etc/alpaca/config.json"]
    assert container["image"] == SETTINGS.images.evaluate
    assert container["env"] == [{"name": "ALPACA_JUDGE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": "api-key"}}}]
    assert pod["serviceAccountName"] == "alpaca-workload" and pod["restartPolicy"] == "Never"
    output = next(v for v in pod["volumes"] if v["name"] == "output")
    assert output["persistentVolumeClaim"] == {"claimName": "reports", "readOnly": False}
    assert {"name": "output", "mountPath": "/var/lib/alpaca/output", "readOnly": False, "subPath": "eval"} in container["volumeMounts"]
    assert job(plan)["metadata"]["labels"]["app.kubernetes.io/component"] == "evaluate"


def test_a_server_with_auth_passes_its_token_secret_as_env() -> None:
    plan = evaluation.reconcile(body(SPEC), None, both_ready(auth=True), SETTINGS, NOW)
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in job(plan)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ALPACA_CANDIDATE_API_KEY"] == {"name": "tuned-token", "key": "token"}
    assert env["ALPACA_BASELINE_API_KEY"] == {"name": "base-token", "key": "token"}
    assert config(plan)["candidate"]["endpoint"]["apiKeyEnv"] == "ALPACA_CANDIDATE_API_KEY"


def test_files_from_config_maps_are_mounted_and_uris_passed_as_they_are() -> None:
    spec = {
        **SPEC,
        "baseline": {"outputs": {"configMapRef": {"name": "teacher-answers", "key": "answers.jsonl"}}},
        "tasks": {"configMapRef": {"name": "held-out", "key": "tasks.jsonl"}},
    }
    plan = evaluation.reconcile(body(spec), None, {("ModelServer", "tuned"): server(name="tuned")}, SETTINGS, NOW)
    cfg = config(plan)
    assert cfg["tasks"] == "/etc/alpaca/inputs/tasks/tasks.jsonl"
    assert cfg["baseline"] == {"label": "ConfigMap/teacher-answers:answers.jsonl", "outputs": "/etc/alpaca/inputs/baseline/outputs.jsonl"}
    pod = job(plan)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tasks"]["configMap"] == {"name": "held-out", "items": [{"key": "tasks.jsonl", "path": "tasks.jsonl"}]}
    assert volumes["baseline-outputs"]["configMap"] == {"name": "teacher-answers", "items": [{"key": "answers.jsonl", "path": "outputs.jsonl"}]}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["tasks"] == "/etc/alpaca/inputs/tasks" and mounts["baseline-outputs"] == "/etc/alpaca/inputs/baseline"
    assert len(set(mounts.values())) == len(mounts), "no two volumes share a mount path"

    by_uri = {**SPEC, "baseline": {"outputs": {"uri": "s3://answers/teacher.jsonl"}}, "tasks": {"uri": "s3://tasks/held-out.jsonl"}}
    cfg = config(evaluation.reconcile(body(by_uri), None, {("ModelServer", "tuned"): server(name="tuned")}, SETTINGS, NOW))
    assert cfg["tasks"] == "s3://tasks/held-out.jsonl" and cfg["baseline"]["outputs"] == "s3://answers/teacher.jsonl"


@pytest.mark.parametrize("name", ["ev", "1-starts-with-a-digit", "dotted.name.here", "x" * 253])
def test_child_names_are_dns_1035_labels_for_any_valid_name(name: str) -> None:
    plan = evaluation.reconcile(body(SPEC, name=name), None, both_ready(), SETTINGS, NOW)
    for manifest in plan.children:
        assert is_dns_1035(manifest["metadata"]["name"]), manifest["metadata"]["name"]
    assert plan.children[0]["metadata"]["name"] != plan.children[1]["metadata"]["name"]


@pytest.mark.parametrize(
    ("state", "phase", "ready_status"),
    [
        (child("Pending", "JobCreated"), "Pending", "False"),
        (child("Running", "Running", started=NOW - timedelta(minutes=1)), "Running", "False"),
        (child("Succeeded", "Completed", started=NOW - timedelta(minutes=2), completed=NOW), "Succeeded", "True"),
        (child("Failed", "BackoffLimitExceeded", started=NOW - timedelta(minutes=2), completed=NOW), "Failed", "False"),
    ],
)
def test_phase_follows_the_job(state: ChildState, phase: str, ready_status: str) -> None:
    plan = evaluation.reconcile(body(SPEC), state, both_ready(), SETTINGS, NOW)
    assert plan.children == [], "a Job that exists is never planned again"
    assert plan.status.fields["phase"] == phase and plan.status.fields["jobName"] == "ev-evaluate"
    assert conditions(plan)["Ready"] == (ready_status, state.reason)


def test_the_workloads_score_and_report_reach_the_ready_message() -> None:
    status = {
        "jobName": "ev-evaluate",
        "score": {"winRate": 0.625, "winRateLow": 0.375, "winRateHigh": 0.875, "lengthControlledWinRate": 0.6, "wins": 4, "ties": 2, "losses": 2},
        "result": {"artifact": {"uri": "/var/lib/alpaca/output/summary.json", "sha256": DIGEST}, "sizeBytes": 100,
                   "promptTokens": 1_000_000, "completionTokens": 100_000, "costUSD": 6.5, "finishedAt": "2026-01-01T11:59:00Z"},
    }
    done = child("Succeeded", "Completed", started=NOW - timedelta(minutes=2), completed=NOW)
    plan = evaluation.reconcile(body(SPEC, status), done, both_ready(), SETTINGS, NOW)
    message = next(c for c in plan.status.conditions if c.type == "Ready").message
    assert "win rate 62.5%" in message and "37.5%-87.5%" in message and "4 wins, 2 ties, 2 losses" in message
    assert "length-controlled 60.0%" in message
    assert plan.status.fields["report"] == status["result"]["artifact"]
    assert plan.status.fields["costUSD"] == 6.5, "the workload prices each endpoint's tokens; the operator adds server time only"
    assert "score" not in plan.status.fields and "result" not in plan.status.fields, "the workload's fields are never rewritten"


def test_server_time_is_billed_once_per_server_and_never_twice() -> None:
    spec = {**SPEC, "judge": {"modelServerRef": {"name": "base"}}}  # base answers and judges: billed once
    references = both_ready(gpus=1)  # 1 GPU at $2/h each: $4/h for the two servers
    running = child("Running", "Running", started=NOW - timedelta(minutes=30))
    first = evaluation.reconcile(body(spec, {"jobName": "ev-evaluate", "progress": {"costUSD": 0.5}}), running, references, SETTINGS, NOW)
    assert first.status.fields["serverCostUSD"] == 2.0
    assert first.status.fields["costUSD"] == 2.5
    # The next look, later, adds only what came after accruedUntil.
    status = {"jobName": "ev-evaluate", "progress": {"costUSD": 0.5}, **{k: first.status.fields[k] for k in ("serverCostUSD", "accruedUntil")}}
    later = evaluation.reconcile(body(spec, status), running, references, SETTINGS, NOW + timedelta(minutes=15))
    assert later.status.fields["serverCostUSD"] == 3.0
    again = evaluation.reconcile(body(spec, status), running, references, SETTINGS, NOW)
    assert again.status.fields.get("serverCostUSD", 2.0) == 2.0, "a look at the same moment adds nothing"


def test_an_evaluation_stopped_by_its_budget_is_ready_and_says_so() -> None:
    spec = {**SPEC, "budgetUSD": 1.0}
    done = child("Succeeded", "Completed", started=NOW - timedelta(minutes=2), completed=NOW)
    plan = evaluation.reconcile(body(spec, {"jobName": "ev-evaluate", "progress": {"costUSD": 1.0}}), done, both_ready(), SETTINGS, NOW)
    assert conditions(plan)["Ready"] == ("True", "BudgetReached")
    assert "$1" in plan.status.fields["message"]


def test_finished_work_is_kept_and_a_lost_job_is_never_run_again() -> None:
    kept = evaluation.reconcile(body(SPEC, {"phase": "Succeeded", "jobName": "ev-evaluate"}), None, both_ready(), SETTINGS, NOW)
    assert kept.children == [] and kept.status.fields == {"phase": "Succeeded"}
    failed = evaluation.reconcile(body(SPEC, {"phase": "Failed", "jobName": "ev-evaluate"}), None, both_ready(), SETTINGS, NOW)
    assert failed.children == [] and failed.status.fields == {"phase": "Failed"}
    result = {"artifact": {"uri": "s3://r/summary.json", "sha256": DIGEST}, "sizeBytes": 1, "finishedAt": "2026-01-01T11:00:00Z"}
    gone_done = evaluation.reconcile(body(SPEC, {"phase": "Running", "jobName": "ev-evaluate", "result": result}), None, both_ready(), SETTINGS, NOW)
    assert gone_done.children == [] and gone_done.status.fields["phase"] == "Succeeded"
    assert gone_done.status.fields["report"] == result["artifact"]
    gone = evaluation.reconcile(body(SPEC, {"phase": "Running", "jobName": "ev-evaluate"}), None, both_ready(), SETTINGS, NOW)
    assert gone.children == [] and conditions(gone)["Ready"] == ("False", "JobLost")


def test_a_namesakes_job_is_waited_for_not_adopted() -> None:
    old = ChildState(name="ev-evaluate", phase="Succeeded", reason="Completed", owner_uid="uid-0")
    plan = evaluation.reconcile(body(SPEC), old, both_ready(), SETTINGS, NOW)
    assert plan.children == [] and conditions(plan)["Ready"] == ("False", "WaitingForOldChild")


def test_a_key_is_never_sent_to_a_metadata_address() -> None:
    spec = {**SPEC, "judge": {**SPEC["judge"], "baseURL": "http://169.254.169.254/v1"}}
    plan = evaluation.reconcile(body(spec), None, both_ready(), SETTINGS, NOW)
    assert plan.children == [] and plan.status.fields["phase"] == "Failed"
    assert conditions(plan)["Ready"] == ("False", "EndpointHostRefused")
    assert "judge.baseURL" in plan.status.fields["message"]


def test_an_invalid_spec_fails_with_the_field_named() -> None:
    plan = evaluation.reconcile(body({**SPEC, "tasks": {"sampleSize": 0}}), None, both_ready(), SETTINGS, NOW)
    assert plan.children == [] and conditions(plan)["Ready"] == ("False", "InvalidSpec")
    assert "sampleSize" in plan.status.fields["message"]


def test_a_job_message_speaks_of_evaluation() -> None:
    _, manifest = evaluation.reconcile(body(SPEC), None, both_ready(), SETTINGS, NOW).children
    manifest = {**manifest, "status": {"active": 1, "startTime": "2026-01-01T11:00:00Z"}}
    assert evaluation.summarize(manifest).message == "the evaluation Job is running"


def test_the_crd_names_and_columns() -> None:
    from alpaca_operator.api.kinds import EVALUATION
    from alpaca_operator.crd.generate import crd

    generated = crd(EVALUATION)
    names = generated["spec"]["names"]
    assert (names["plural"], names["shortNames"], names["categories"]) == ("evaluations", ["eval"], ["alpaca"])
    version = generated["spec"]["versions"][0]
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Ready", "Win rate", "Cost", "Age"]
    assert version["subresources"] == {"status": {}}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"score", "progress", "report", "result", "serverCostUSD", "costUSD", "conditions", "observedGeneration"} <= set(status)
