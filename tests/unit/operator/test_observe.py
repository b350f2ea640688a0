"""Children -> parent status, as pure functions."""

from __future__ import annotations

from datetime import datetime, timezone

from alpaca_operator.api.instructdataset import InstructDatasetSpec, TokenPricing
from alpaca_operator.conditions import Desired
from alpaca_operator.observe import (
    ChildState, dataset_status, diff, finetune_status, server_status, summarize_deployment, summarize_job,
    summarize_pytorchjob, server_accrual, terminal,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
META = {"name": "x-generate", "annotations": {"alpaca.dev/parent-generation": "2"}}


def test_job_states() -> None:
    assert summarize_job({"metadata": META}).phase == "Pending"
    assert summarize_job({"metadata": META, "status": {"active": 1}}).phase == "Running"
    failed = summarize_job({"metadata": META, "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}]}})
    assert (failed.phase, failed.reason, failed.message, failed.generation) == ("Failed", "BackoffLimitExceeded", "too many", 2)
    done = summarize_job({"metadata": META, "status": {"conditions": [{"type": "Complete", "status": "True"}]}})
    assert done.phase == "Succeeded"


def test_pytorchjob_deadline_failures_are_named() -> None:
    state = summarize_pytorchjob({"metadata": META, "status": {"conditions": [
        {"type": "Running", "status": "False"},
        {"type": "Failed", "status": "True", "reason": "PyTorchJobFailed", "message": "active longer than specified deadline"},
    ]}})
    assert (state.phase, state.reason) == ("Failed", "DeadlineExceeded")
    assert summarize_pytorchjob({"metadata": META, "status": {"conditions": [{"type": "Restarting", "status": "True"}]}}).reason == "Restarting"


def test_deployment_states() -> None:
    def state(spec: dict, status: dict) -> str:
        return summarize_deployment({"metadata": META, "spec": spec, "status": status}).phase

    assert state({"replicas": 2}, {"readyReplicas": 1}) == "Progressing"
    assert state({"replicas": 2}, {"readyReplicas": 2, "updatedReplicas": 2}) == "Ready"
    assert state({"replicas": 0}, {}) == "Pending"
    assert state({"replicas": 1}, {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}) == "Failed"


def test_dataset_cost_from_reported_tokens_and_no_write_when_unchanged() -> None:
    spec = InstructDatasetSpec.model_validate({"teacher": {"baseURL": "http://t/v1", "model": "m"}, "output": {"uri": "s3://b/p"}})
    current = {"progress": {"promptTokens": 2_000_000, "completionTokens": 1_000_000, "kept": 5}}
    child = ChildState(name="x-generate", phase="Running", reason="Running", generation=1)
    computed = dataset_status(spec, current, generation=1, child=child, dependency=None, teacher_url="http://t/v1",
                              pricing=TokenPricing(input_usd_per_million_tokens=1, output_usd_per_million_tokens=2),
                              teacher_hourly_usd=0.0, now=NOW)
    patch, events = diff(current, computed, generation=1, now=NOW)
    assert patch["costUSD"] == 4.0 and patch["phase"] == "Running"
    assert "progress" not in patch, "progress belongs to the workload"
    assert {e.reason for e in events} == {"Running", "Applied"}
    written = {**current, **patch}
    assert diff(written, computed, generation=1, now=NOW) == ({}, [])


def test_finetune_waits_then_fails_on_budget() -> None:
    waiting = finetune_status(current={}, generation=1, child=None, dependency=Desired("DatasetReady", "False", "NotFound", "missing"),
                              pinned=None, gpus=8, gpu_hour_usd=2.0, budget_usd=10.0, budget_is_deadline=True, now=NOW)
    assert waiting.fields["phase"] == "Pending"
    assert [c.reason for c in waiting.conditions] == ["NotFound", "NotFound"]
    running = ChildState(name="x-train", phase="Running", reason="Running", start_time="2026-01-01T11:00:00Z", generation=1)
    over = finetune_status(current={}, generation=1, child=running, dependency=None, pinned={"uri": "s3://d"}, gpus=8,
                           gpu_hour_usd=2.0, budget_usd=10.0, budget_is_deadline=True, now=NOW)
    assert over.fields["phase"] == "Failed" and over.fields["costUSD"] == 16.0 and over.fields["gpuHours"] == 8.0
    assert over.conditions[-1].reason == "BudgetExceeded"


def test_spec_edit_on_a_started_job_is_reported() -> None:
    child = ChildState(name="x-train", phase="Running", reason="Running", generation=1)
    computed = finetune_status(current={}, generation=2, child=child, dependency=None, pinned=None, gpus=0,
                               gpu_hour_usd=None, budget_usd=None, budget_is_deadline=False, now=NOW)
    applied = next(c for c in computed.conditions if c.type == "SpecApplied")
    assert (applied.status, applied.reason) == ("False", "ChangeNotApplied")


def test_server_status_and_accrual() -> None:
    child = ChildState(name="s-serve", phase="Ready", reason="Ready", replicas=2, ready_replicas=2, pods=2)
    computed = server_status(current={}, child=child, dependency=None, url="http://s/v1", served_model_name="s", pinned=None, replicas=2)
    assert computed.fields["phase"] == "Ready" and computed.fields["url"] == "http://s/v1"
    last = datetime(2026, 1, 1, 11, 30, tzinfo=timezone.utc)
    current = {"gpuHours": 1.0, "costUSD": 1.0, "accruedUntil": "2026-01-01T11:30:00.000000Z"}
    accrued = server_accrual(current, pods=2, gpus_per_pod=4, pod_rate_usd=10.0, now=NOW)
    assert accrued == {"gpuHours": 5.0, "costUSD": 11.0, "accruedUntil": "2026-01-01T12:00:00.000000Z"}
    # The first look starts the clock and counts nothing.
    assert server_accrual({}, pods=2, gpus_per_pod=4, pod_rate_usd=10.0, now=NOW) == {
        "gpuHours": 0.0, "costUSD": 0.0, "accruedUntil": "2026-01-01T12:00:00.000000Z"}
    # Looking again at the same moment (a second replica, a restart) adds nothing.
    assert server_accrual(accrued, pods=2, gpus_per_pod=4, pod_rate_usd=10.0, now=NOW) == accrued
    assert last < NOW


FT = dict(generation=1, dependency=None, pinned=None, gpus=8, gpu_hour_usd=2.0, budget_usd=None, budget_is_deadline=False)


def test_finetune_cost_accumulates_and_is_never_recounted() -> None:
    start = "2026-01-01T11:00:00Z"
    running = ChildState(name="x-train", phase="Running", reason="Running", start_time=start, generation=1)
    first = finetune_status(current={}, child=running, now=NOW, **FT)
    assert first.fields["gpuHours"] == 8.0 and first.fields["accruedUntil"] == "2026-01-01T12:00:00.000000Z"
    # A restarted operator (or a new leader) sees the same status and the same moment: nothing added.
    again = finetune_status(current=first.fields, child=running, now=NOW, **FT)
    assert again.fields["costUSD"] == first.fields["costUSD"] == 16.0
    # Suspended for half an hour: the clock moves, nothing is billed.
    suspended = ChildState(name="x-train", phase="Pending", reason="Suspended", start_time=start, generation=1)
    later = datetime(2026, 1, 1, 12, 30, tzinfo=timezone.utc)
    paused = finetune_status(current=first.fields, child=suspended, now=later, **FT)
    assert paused.fields["costUSD"] == 16.0 and paused.fields["accruedUntil"] == "2026-01-01T12:30:00.000000Z"
    # Resumed and done at 13:00: half an hour more, not the two hours since the start.
    done = ChildState(name="x-train", phase="Succeeded", reason="Completed", start_time=start,
                      completion_time="2026-01-01T13:00:00Z", generation=1)
    final = finetune_status(current=paused.fields, child=done, now=datetime(2026, 1, 1, 14, tzinfo=timezone.utc), **FT)
    assert final.fields["gpuHours"] == 12.0 and final.fields["costUSD"] == 24.0


def test_a_finished_finetune_whose_job_is_gone_keeps_its_phase() -> None:
    current = {"phase": "Succeeded", "jobName": "x-train", "costUSD": 24.0, "gpuHours": 12.0}
    assert terminal(current)
    kept = finetune_status(current=current, child=None, now=NOW, **FT)
    patch, events = diff(current, kept, generation=1, now=NOW)
    assert patch == {"observedGeneration": 1} and events == []
    # Refused or invalid before any child ran: not terminal, a spec edit tries again.
    assert not terminal({"phase": "Failed"})
