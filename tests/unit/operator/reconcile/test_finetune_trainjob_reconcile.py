"""A FineTune on the trainjob backend: TrainJob conditions -> phase, cost, budget stop, queued state."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
import yaml

from alpaca_operator.crd.cel import violations
from alpaca_operator.crd.generate import render_all
from alpaca_operator.observe import FAILED, PENDING, RUNNING, SUCCEEDED, ChildState
from alpaca_operator.reconcile import Plan, finetune
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings.model_validate({"gpuHourUSD": {"nvidia-a100-80gb": 2.0}})
UID = "uid-1"
TUNE = {"backend": "trainjob", "dataset": {"uri": "s3://b/d.jsonl"}, "gpus": {"nodes": 2, "perNode": 8}, "output": {"uri": "s3://b/m"}}
CREATED = "2026-01-01T10:00:00Z"


def finetune_body(spec: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "FineTune", "spec": spec, "status": status or {},
            "metadata": {"name": "x", "namespace": "ns", "uid": UID, "generation": generation}}


def condition(type_: str, status: str, reason: str, at: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}


def trainjob(conditions: list[dict[str, Any]], *, active: int = 0, suspend: bool | None = None, generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"runtimeRef": {"name": "torch-distributed"}}
    if suspend is not None:
        spec["suspend"] = suspend
    jobs = [{"name": "node", "active": active, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "x-train", "namespace": "ns", "creationTimestamp": CREATED,
                     "annotations": {"alpaca.dev/parent-generation": str(generation)},
                     "ownerReferences": [{"kind": "FineTune", "name": "x", "uid": UID, "controller": True}]},
        "spec": spec, "status": {"conditions": conditions, "jobsStatus": jobs},
    }


def ready(plan: Plan) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == "Ready")
    return found.status, found.reason


@pytest.mark.parametrize(("body", "phase", "reason"), [
    (trainjob([]), PENDING, "JobCreated"),
    (trainjob([], active=2), RUNNING, "Running"),
    # Kueue's webhook creates it suspended; Trainer then says so in a condition.
    (trainjob([], suspend=True), PENDING, "Suspended"),
    (trainjob([condition("Suspended", "True", "Suspended", CREATED)], suspend=True), PENDING, "Suspended"),
    (trainjob([condition("Suspended", "False", "Resumed", "2026-01-01T11:00:00Z")], active=2), RUNNING, "Running"),
    (trainjob([condition("Complete", "True", "AllJobsCompleted", "2026-01-01T11:30:00Z")]), SUCCEEDED, "Completed"),
    (trainjob([condition("Failed", "True", "DeadlineExceeded", "2026-01-01T11:30:00Z")]), FAILED, "DeadlineExceeded"),
    (trainjob([condition("Failed", "True", "FailedJobs", "2026-01-01T11:30:00Z", "job node-0 failed")]), FAILED, "FailedJobs"),
])
def test_trainjob_conditions_map_to_phases(body: dict[str, Any], phase: str, reason: str) -> None:
    state = finetune.summarize(body)
    assert (state.phase, state.reason, state.owner_uid, state.generation) == (phase, reason, UID, 1)


def test_the_gpu_clock_runs_from_creation_or_resumption_to_the_final_condition() -> None:
    straight = finetune.summarize(trainjob([condition("Complete", "True", "AllJobsCompleted", "2026-01-01T11:00:00Z")]))
    assert (straight.start_time, straight.completion_time) == (CREATED, "2026-01-01T11:00:00Z")
    queued_first = finetune.summarize(trainjob([condition("Suspended", "False", "Resumed", "2026-01-01T10:30:00Z"),
                                                condition("Complete", "True", "AllJobsCompleted", "2026-01-01T11:00:00Z")]))
    assert queued_first.start_time == "2026-01-01T10:30:00Z"
    plan = finetune.reconcile(finetune_body(TUNE), queued_first, {}, SETTINGS, NOW)
    # 16 GPUs x half an hour x $2 per GPU-hour; nothing for the half hour it waited in the queue.
    assert plan.status.fields["phase"] == SUCCEEDED
    assert plan.status.fields["gpuHours"] == pytest.approx(8.0)
    assert plan.status.fields["costUSD"] == pytest.approx(16.0)


def test_a_new_finetune_plans_a_configmap_and_a_trainjob() -> None:
    plan = finetune.reconcile(finetune_body(TUNE), None, {}, SETTINGS, NOW)
    assert [c["kind"] for c in plan.children] == ["ConfigMap", "TrainJob"]
    assert ready(plan) == ("False", "JobCreated")
    assert finetune.primary(finetune_body(TUNE)) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert finetune.primary(finetune_body({**TUNE, "backend": "pytorchjob"})) == ("kubeflow.org/v1", "PyTorchJob")


def test_over_budget_suspends_the_trainjob_through_spec_suspend() -> None:
    running = finetune.summarize(trainjob([], active=2))  # since 10:00, 16 GPUs x $2: $64 by noon
    plan = finetune.reconcile(finetune_body({**TUNE, "budgetUSD": 10.0}), running, {}, SETTINGS, NOW)
    assert plan.status.fields["phase"] == FAILED and ready(plan) == ("False", "BudgetExceeded")
    assert plan.patch is not None
    stub, patch = plan.patch
    assert (stub["apiVersion"], stub["kind"], stub["metadata"]["name"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob", "x-train")
    assert patch == {"spec": {"suspend": True}}


def test_a_deadline_the_budget_set_reads_as_budget_exceeded() -> None:
    failed = finetune.summarize(trainjob([condition("Failed", "True", "DeadlineExceeded", "2026-01-01T10:15:00Z")]))
    plan = finetune.reconcile(finetune_body({**TUNE, "budgetUSD": 8.0}), failed, {}, SETTINGS, NOW)
    assert plan.status.fields["phase"] == FAILED and ready(plan) == ("False", "BudgetExceeded")
    assert plan.patch is None  # already stopped


def test_suspended_in_a_queue_reads_queued() -> None:
    held = finetune.summarize(trainjob([condition("Suspended", "True", "Suspended", CREATED)], suspend=True))
    plan = finetune.reconcile(finetune_body({**TUNE, "queue": {"name": "team-a"}}), held, {}, SETTINGS, NOW)
    assert plan.status.fields["phase"] == PENDING and ready(plan) == ("False", "Queued")
    assert "TrainJob 'x-train'" in plan.status.fields["message"] and "team-a" in plan.status.fields["message"]
    assert plan.patch is None and plan.children == []


def test_a_spec_edit_the_trainjob_cannot_take_is_a_condition_never_a_write() -> None:
    running = finetune.summarize(trainjob([], active=2, generation=1))
    plan = finetune.reconcile(finetune_body({**TUNE, "gpus": {"nodes": 4, "perNode": 8}}, generation=2), running, {}, SETTINGS, NOW)
    applied = next(c for c in plan.status.conditions if c.type == "SpecApplied")
    assert (applied.status, applied.reason) == ("False", "ImmutableTrainJob")
    assert "runtimeRef, initializer and trainer are immutable" in applied.message
    assert plan.children == [] and plan.patch is None
    assert plan.status.fields["phase"] == RUNNING


def test_a_namesakes_trainjob_is_waited_for() -> None:
    other = ChildState(name="x-train", phase=RUNNING, reason="Running", owner_uid="uid-0")
    plan = finetune.reconcile(finetune_body(TUNE), other, {}, SETTINGS, NOW)
    assert ready(plan) == ("False", "WaitingForOldChild") and "TrainJob" in plan.status.conditions[0].message


def test_a_trainjob_gone_before_its_outcome_is_lost_not_rerun() -> None:
    plan = finetune.reconcile(finetune_body(TUNE, {"phase": "Running", "jobName": "x-train"}), None, {}, SETTINGS, NOW)
    assert plan.children == [] and ready(plan) == ("False", "TrainJobLost")


def test_runtime_ref_belongs_to_the_trainjob_backend_only() -> None:
    crd = yaml.safe_load(render_all()["alpaca.dev_finetunes.yaml"])
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    bad = {**TUNE, "backend": "pytorchjob", "runtimeRef": {"name": "torch-distributed", "kind": "ClusterTrainingRuntime"}}
    assert [v.message for v in violations(spec_schema, bad)] == ["runtimeRef is only allowed with backend: trainjob"]
    assert violations(spec_schema, {**bad, "backend": "trainjob"}) == []
