"""The pure reconciles, as tables: (resource, child, references, settings, now) -> Plan."""

from __future__ import annotations

import ast
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from alpaca_operator.observe import ChildState
from alpaca_operator.reconcile import Plan, finetune, instructdataset, modelserver
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings.model_validate({"gpuHourUSD": {"nvidia-a100-80gb": 2.0}})
UID = "uid-1"
DIGEST = "d" * 64


def body(kind: str, spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": kind, "spec": spec, "status": status or {},
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1}}


def ready(plan: Plan) -> tuple[str, str]:
    condition = next(c for c in plan.status.conditions if c.type == "Ready")
    return condition.status, condition.reason


def kinds(plan: Plan) -> list[str]:
    return [c["kind"] for c in plan.children]


# -- FineTune ------------------------------------------------------------------------------

TUNE = {"dataset": {"instructDatasetRef": {"name": "data"}}, "gpus": {"nodes": 1, "perNode": 8}, "output": {"uri": "s3://b/m"}}
DATA_SPEC = {"teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/d"}}
RESULT = {"artifact": {"uri": "s3://b/d/dataset.jsonl", "sha256": DIGEST}, "sizeBytes": 10, "finishedAt": "2026-01-01T11:00:00Z"}


def data(status: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {("InstructDataset", "data"): body("InstructDataset", DATA_SPEC, status, name="data")}


@pytest.mark.parametrize(
    ("spec", "status", "child", "references", "children", "reason"),
    [
        (TUNE, {}, None, {}, [], "NotFound"),
        (TUNE, {}, None, data({"phase": "Running"}), [], "Waiting"),
        (TUNE, {}, None, data({"phase": "Succeeded"}), [], "WaitingForResult"),
        ({**TUNE, "dataset": {"instructDatasetRef": {"name": "data"}, "sha256": "e" * 64}}, {}, None,
         data({"phase": "Succeeded", "result": RESULT}), [], "DigestMismatch"),
        (TUNE, {}, None, data({"phase": "Succeeded", "result": RESULT}), ["ConfigMap", "PyTorchJob"], "JobCreated"),
        # Finished, its job deleted by a TTL: kept as it is, nothing planned.
        (TUNE, {"phase": "Succeeded", "jobName": "x-train"}, None, {}, [], None),
        # A namesake's leftover job: waited for, not adopted.
        (TUNE, {}, ChildState(name="x-train", phase="Succeeded", reason="Completed", owner_uid="uid-0"), {}, [], "WaitingForOldChild"),
    ],
)
def test_finetune(spec, status, child, references, children, reason) -> None:
    plan = finetune.reconcile(body("FineTune", spec, status), child, references, SETTINGS, NOW)
    assert kinds(plan) == children
    if reason is None:
        assert plan.status.conditions == [] and plan.status.fields == {"phase": status["phase"]}
    else:
        assert ready(plan)[1] == reason or any(c.reason == reason for c in plan.status.conditions)


def test_finetune_pins_the_result_it_trains_on() -> None:
    plan = finetune.reconcile(body("FineTune", TUNE), None, data({"phase": "Succeeded", "result": RESULT}), SETTINGS, NOW)
    assert plan.status.fields["dataset"]["sha256"] == DIGEST
    assert '"datasetSha256": "' + DIGEST in plan.children[0]["data"]["config.json"]


def test_finetune_over_budget_stops_its_job() -> None:
    running = ChildState(name="x-train", phase="Running", reason="Running", start_time="2026-01-01T10:00:00Z", owner_uid=UID)
    plan = finetune.reconcile(body("FineTune", {**TUNE, "budgetUSD": 10.0}), running, {}, SETTINGS, NOW)
    assert plan.status.fields["phase"] == "Failed" and ready(plan) == ("False", "BudgetExceeded")
    assert plan.patch is not None and plan.patch[1] == {"spec": {"runPolicy": {"suspend": True}}}


# -- InstructDataset -----------------------------------------------------------------------

KEYED = {**DATA_SPEC, "teacher": {**DATA_SPEC["teacher"], "apiKeySecretRef": {"name": "k", "key": "k"}}}
SERVER_TAUGHT = {**DATA_SPEC, "teacher": {"modelServerRef": {"name": "t"}}}
SERVER = body("ModelServer", {"model": {"source": {"builtin": "smollm2-135m-instruct"}}}, {"phase": "Ready", "url": "http://t.ns.svc:8000/v1"}, name="t")


@pytest.mark.parametrize(
    ("spec", "references", "children", "reason"),
    [
        (DATA_SPEC, {}, ["ConfigMap", "Job"], "JobCreated"),
        ({**KEYED, "teacher": {**KEYED["teacher"], "baseURL": "http://169.254.169.254/v1"}}, {}, [], "TeacherHostRefused"),
        (SERVER_TAUGHT, {}, [], "NotFound"),
        (SERVER_TAUGHT, {("ModelServer", "t"): {**SERVER, "status": {"phase": "Progressing"}}}, [], "Waiting"),
        (SERVER_TAUGHT, {("ModelServer", "t"): SERVER}, ["ConfigMap", "Job"], "JobCreated"),
    ],
)
def test_instructdataset(spec, references, children, reason) -> None:
    plan = instructdataset.reconcile(body("InstructDataset", spec), None, references, SETTINGS, NOW)
    assert kinds(plan) == children
    assert ready(plan)[1] == reason


# -- ModelServer ---------------------------------------------------------------------------

SERVE = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}}


def test_modelserver_applies_its_children_only_when_the_spec_changed() -> None:
    first = modelserver.reconcile(body("ModelServer", SERVE), None, {}, SETTINGS, NOW)
    assert kinds(first) == ["ConfigMap", "Service", "Deployment"] and first.apply
    digest = first.children[-1]["metadata"]["annotations"]["alpaca.dev/spec-hash"]
    serving = ChildState(name="x-serve", phase="Ready", reason="Ready", spec_hash=digest, replicas=1, ready_replicas=1, pods=1, owner_uid=UID)
    assert modelserver.reconcile(body("ModelServer", SERVE), serving, {}, SETTINGS, NOW).children == []
    edited = modelserver.reconcile(body("ModelServer", {**SERVE, "replicas": 2}), serving, {}, SETTINGS, NOW)
    assert kinds(edited) == ["ConfigMap", "Service", "Deployment"]


def test_modelserver_waits_for_the_finetunes_result() -> None:
    tuned = body("FineTune", TUNE, {"phase": "Succeeded"}, name="t")
    plan = modelserver.reconcile(body("ModelServer", {"model": {"fineTuneRef": {"name": "t"}}}), None, {("FineTune", "t"): tuned}, SETTINGS, NOW)
    assert plan.children == [] and ready(plan)[1] == "WaitingForResult"


# -- purity --------------------------------------------------------------------------------

OPERATOR = Path(__file__).resolve().parents[4] / "operator"


@pytest.mark.parametrize("path", sorted([*OPERATOR.glob("reconcile/*.py"), *OPERATOR.glob("builders/*.py")]), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_reconcile_and_its_builders_do_no_io(path: Path) -> None:
    """Nothing that talks to a cluster is even imported by the reconciles or their builders."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.add(("." * node.level) + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert not {m for m in imported if m.split(".")[-1] in {"kube", "controller", "handlers", "kopf", "kubernetes", "requests"}
                or m.startswith(("kubernetes", "kopf"))}, (path, imported)


def test_an_optional_network_policy_admits_only_the_given_peers() -> None:
    plain = modelserver.reconcile(body("ModelServer", SERVE), None, {}, SETTINGS, NOW)
    assert "NetworkPolicy" not in kinds(plain)
    default = modelserver.reconcile(body("ModelServer", {**SERVE, "networkPolicy": {}}), None, {}, SETTINGS, NOW)
    (policy,) = [c for c in default.children if c["kind"] == "NetworkPolicy"]
    deployment = default.children[-1]
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8000}]}]
    peers = [{"namespaceSelector": {"matchLabels": {"team": "research"}}}]
    chosen = modelserver.reconcile(body("ModelServer", {**SERVE, "networkPolicy": {"from": peers}}), None, {}, SETTINGS, NOW)
    (policy,) = [c for c in chosen.children if c["kind"] == "NetworkPolicy"]
    assert policy["spec"]["ingress"][0]["from"] == peers


@pytest.mark.parametrize(("result", "phase", "reason"), [(RESULT, "Succeeded", "Completed"), (None, "Failed", "PyTorchJobLost")])
def test_a_job_gone_before_its_outcome_was_seen_is_never_run_again(result, phase, reason) -> None:
    status = {"phase": "Running", "jobName": "x-train", **({"result": result} if result else {})}
    plan = finetune.reconcile(body("FineTune", {**TUNE, "dataset": {"uri": "s3://b/d.jsonl"}}), None, {}, SETTINGS, NOW)
    assert kinds(plan) == ["ConfigMap", "PyTorchJob"], "without a job ever made, it is made"
    plan = finetune.reconcile(body("FineTune", {**TUNE, "dataset": {"uri": "s3://b/d.jsonl"}}, status), None, {}, SETTINGS, NOW)
    assert plan.children == [] and plan.status.fields["phase"] == phase and ready(plan)[1] == reason
    gone = instructdataset.reconcile(body("InstructDataset", DATA_SPEC, {**status, "jobName": "x-generate"}), None, {}, SETTINGS, NOW)
    assert gone.children == [] and gone.status.fields["phase"] == phase
