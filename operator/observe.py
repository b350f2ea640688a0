"""Observed children -> the parent's status. Pure: the handlers feed it the index and write the result.

One function per kind computes every operator-owned status field and condition from the spec,
the observed child and the resolved references; `diff` turns that into the smallest status patch
(empty when nothing changed) and the transitions that become Events. Fields the workloads own
(`progress`, and `result`: what they produced, operator/api/results.py) are never in the patch;
an InstructDataset's `dataset` and a FineTune's `model` mirror the result's artifact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .api.instructdataset import InstructDatasetSpec, TokenPricing
from .conditions import FALSE, TRUE, Desired, Transition, merge, transitions
from .cost import Ledger, accrue, round_usd, token_cost
from .naming import GENERATION_ANNOTATION, SPEC_HASH_ANNOTATION

READY = "Ready"
SPEC_APPLIED = "SpecApplied"
DATASET_READY = "DatasetReady"
MODEL_READY = "ModelReady"
TEACHER_READY = "TeacherReady"

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
PROGRESSING, SERVER_READY = "Progressing", "Ready"


@dataclass(frozen=True)
class ChildState:
    """What the operator keeps in memory about one child (small: it is indexed for every resource)."""

    name: str
    phase: str
    reason: str
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    generation: int | None = None
    spec_hash: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    pods: int = 0
    owner_uid: str | None = None  # the controller owner's UID: a child is ours only when it is our UID


def owner_uid(meta: dict[str, Any]) -> str | None:
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    return owner.get("uid") if owner else None


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def child_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """Who a child is, for its ChildState: its name, owner, and the generation and spec digest it was built from."""
    annotations = meta.get("annotations") or {}
    generation = annotations.get(GENERATION_ANNOTATION)
    return {
        "name": meta.get("name", ""),
        "generation": int(generation) if generation and generation.isdigit() else None,
        "spec_hash": annotations.get(SPEC_HASH_ANNOTATION),
        "owner_uid": owner_uid(meta),
    }


def true_condition(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The condition of that type when it is True."""
    return next((c for c in conditions if c.get("type") == type_ and c.get("status") == "True"), None)


def summarize_job(body: dict[str, Any]) -> ChildState:
    """A batch/v1 Job."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    common = {**child_identity(meta), "start_time": status.get("startTime"), "completion_time": status.get("completionTime")}
    if true_condition(conditions, "Complete") or true_condition(conditions, "SuccessCriteriaMet"):
        return ChildState(phase=SUCCEEDED, reason="Completed", message="the generation Job completed", **common)
    if failed := (true_condition(conditions, "Failed") or true_condition(conditions, "FailureTarget")):
        return ChildState(phase=FAILED, reason=failed.get("reason") or "JobFailed", message=failed.get("message", ""), **common)
    if true_condition(conditions, "Suspended"):
        return ChildState(phase=PENDING, reason="Suspended", message="the Job is suspended", **common)
    if (status.get("active") or 0) > 0:
        return ChildState(phase=RUNNING, reason="Running", message="the generation Job is running", **common)
    return ChildState(phase=PENDING, reason="JobCreated", message="waiting for the Job's pod to start", **common)


def summarize_pytorchjob(body: dict[str, Any]) -> ChildState:
    """A kubeflow.org/v1 PyTorchJob: its latest true condition decides."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    common = {**child_identity(meta), "start_time": status.get("startTime"), "completion_time": status.get("completionTime")}
    if done := true_condition(conditions, "Succeeded"):
        return ChildState(phase=SUCCEEDED, reason="Completed", message=done.get("message", ""), **common)
    if failed := true_condition(conditions, "Failed"):
        reason = failed.get("reason") or "JobFailed"
        message = failed.get("message", "")
        # The training operator words deadline failures in the message rather than a fixed reason.
        if "deadline" in (reason + message).lower():
            reason = "DeadlineExceeded"
        return ChildState(phase=FAILED, reason=reason, message=message, **common)
    if true_condition(conditions, "Suspended"):
        return ChildState(phase=PENDING, reason="Suspended", message="the PyTorchJob is suspended", **common)
    if restarting := true_condition(conditions, "Restarting"):
        return ChildState(phase=RUNNING, reason="Restarting", message=restarting.get("message", ""), **common)
    if true_condition(conditions, "Running"):
        return ChildState(phase=RUNNING, reason="Running", message="training is running", **common)
    return ChildState(phase=PENDING, reason="JobCreated", message="waiting for the training pods", **common)


def summarize_deployment(body: dict[str, Any]) -> ChildState:
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    wanted = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    common = {**child_identity(meta), "replicas": wanted, "ready_replicas": ready, "pods": int(status.get("replicas") or 0)}
    stuck = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing" and c.get("status") == "False"),
        None,
    )
    if stuck is not None:
        return ChildState(phase=FAILED, reason=stuck.get("reason") or "ProgressDeadlineExceeded", message=stuck.get("message", ""), **common)
    if wanted == 0:
        return ChildState(phase=PENDING, reason="ScaledToZero", message="replicas is 0", **common)
    if ready >= wanted and int(status.get("updatedReplicas") or 0) >= wanted:
        return ChildState(phase=SERVER_READY, reason="Ready", message=f"{ready}/{wanted} replicas ready", **common)
    return ChildState(phase=PROGRESSING, reason="Progressing", message=f"{ready}/{wanted} replicas ready", **common)


@dataclass
class Computed:
    """The operator-owned status fields and conditions of one resource."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: list[Desired] = field(default_factory=list)


def _spec_applied(child: ChildState, generation: int | None, not_applied: str) -> Desired:
    if generation is None or child.generation is None or child.generation == generation:
        return Desired(SPEC_APPLIED, TRUE, "Applied", "the child runs the current spec")
    return Desired(SPEC_APPLIED, FALSE, "ChangeNotApplied", not_applied)


def record_child(out: Computed, child: ChildState, generation: int | None, not_applied: str) -> None:
    """A batch resource's child in its status: whether it runs the current spec, its name and times."""
    out.conditions.append(_spec_applied(child, generation, not_applied))
    out.fields.update(jobName=child.name, startTime=child.start_time, completionTime=child.completion_time)


def batch_phase(child: ChildState | None, wait: Desired | None, creating: str = "the child is being created") -> tuple[str, Desired]:
    """Phase and Ready condition of a batch resource from its child (or what it waits for)."""
    if child is None:
        if wait is not None:
            return PENDING, Desired(READY, FALSE, wait.reason, wait.message)
        return PENDING, Desired(READY, FALSE, "Pending", creating)
    status = TRUE if child.phase == SUCCEEDED else FALSE
    return child.phase, Desired(READY, status, child.reason, child.message)


def dataset_status(
    spec: InstructDatasetSpec,
    current: dict[str, Any],
    *,
    generation: int | None,
    child: ChildState | None,
    dependency: Desired | None,
    teacher_url: str | None,
    pricing: TokenPricing | None,
    teacher_hourly_usd: float,
    now: datetime,
) -> Computed:
    """`dependency` is the TeacherReady condition to set (None leaves it as it is).

    Cost = the tokens the workload reports x the teacher's price, plus an in-cluster teacher's GPU
    time while generation runs, accumulated in teacherCostUSD up to accruedUntil.
    """
    if child is None and terminal(current):
        return kept(current)
    out = Computed()
    if dependency is not None:
        out.conditions.append(dependency)
    phase, ready = batch_phase(child, _waiting(dependency))
    # The final result, once written, is the workload's last word on tokens; progress until then.
    usage = current.get("result") or current.get("progress") or {}
    cost = token_cost(int(usage.get("promptTokens") or 0), int(usage.get("completionTokens") or 0), pricing)
    if cost == 0 and usage.get("costUSD"):
        cost = float(usage["costUSD"])
    if (current.get("result") or {}).get("artifact"):
        out.fields["dataset"] = current["result"]["artifact"]
    ledger = Ledger(0.0, float(current.get("teacherCostUSD") or 0.0), parse_time(current.get("accruedUntil")))
    if child is not None:
        if child.start_time is not None and teacher_hourly_usd > 0:
            ledger = accrue(ledger, since=running_since(child), end=run_end(child, now), units=0, usd_per_hour=teacher_hourly_usd)
            out.fields.update(teacherCostUSD=round_usd(ledger.usd), accruedUntil=stamp_time(ledger.until) if ledger.until else None)
        cost += ledger.usd
        if phase == SUCCEEDED and spec.budget_usd is not None and cost >= spec.budget_usd:
            ready = Desired(READY, TRUE, "BudgetReached", f"generation stopped at the budget of ${spec.budget_usd:g}; the examples paid for are kept")
        record_child(out, child, generation, "spec changed after the generation Job was created; the Job keeps its spec (recreate the InstructDataset to apply it)")
    out.conditions.append(ready)
    out.fields.update(phase=phase, teacherURL=teacher_url, costUSD=round_usd(cost), message=ready.message or None)
    return out


def _waiting(dependency: Desired | None) -> Desired | None:
    return dependency if dependency is not None and dependency.status != TRUE else None


def ledger_of(current: dict[str, Any], hours_field: str = "gpuHours", usd_field: str = "costUSD") -> Ledger:
    return Ledger(float(current.get(hours_field) or 0.0), float(current.get(usd_field) or 0.0), parse_time(current.get("accruedUntil")))


def stamp_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def terminal(current: dict[str, Any]) -> bool:
    """A batch resource whose work is done for good: Succeeded, or Failed after its child ran.

    Its phase is kept whatever happens to the child later (a TTL, a manual delete): finished work
    is never run again, and a failed run is retried by recreating the resource, not by accident.
    """
    phase = current.get("phase")
    return phase == SUCCEEDED or (phase == FAILED and bool(current.get("jobName")))


def kept(current: dict[str, Any]) -> Computed:
    """The status of a terminal resource, as it is (nothing recomputed from a missing child)."""
    return Computed(fields={"phase": current.get("phase")})


def lost(current: dict[str, Any], kind: str, artifact_field: str) -> Computed:
    """A batch resource whose child is gone before its outcome was seen (deleted by hand, or by a
    TTL while the operator was away). It is never run again by accident: the result the workload
    wrote, if any, says it succeeded; otherwise it failed, and recreating the resource runs it anew."""
    name = current.get("jobName")
    if current.get("result"):
        message = f"the {kind} {name!r} is gone; its workload had reported its result"
        fields = {"phase": SUCCEEDED, "message": message, artifact_field: current["result"].get("artifact")}
        return Computed(fields=fields, conditions=[Desired(READY, TRUE, "Completed", message)])
    message = f"the {kind} {name!r} disappeared before it finished; recreate the resource to run it again"
    return Computed(fields={"phase": FAILED, "message": message}, conditions=[Desired(READY, FALSE, f"{kind}Lost", message)])


def running_since(child: ChildState) -> datetime | None:
    """When the child's pods began holding GPUs, while they hold them (None when they do not)."""
    if child.phase in (RUNNING, SUCCEEDED, FAILED):
        return parse_time(child.start_time)
    return None


def run_end(child: ChildState, now: datetime) -> datetime:
    """Up to when the child's pods are counted: its completion once it finished, else `now`."""
    if child.phase in (SUCCEEDED, FAILED):
        return parse_time(child.completion_time) or now
    return now


def finetune_status(
    *,
    current: dict[str, Any],
    generation: int | None,
    child: ChildState | None,
    dependency: Desired | None,
    pinned: dict[str, Any] | None,
    gpus: int,
    gpu_hour_usd: float | None,
    budget_usd: float | None,
    budget_is_deadline: bool,
    now: datetime,
) -> Computed:
    """`dependency` is the DatasetReady condition to set (None leaves it as it is).

    GPU-hours and cost accumulate in the status (see cost.Ledger): only time after accruedUntil is
    added, up to the child's completion or `now`.
    """
    if child is None and terminal(current):
        return kept(current)
    out = Computed()
    if dependency is not None:
        out.conditions.append(dependency)
    phase, ready = batch_phase(child, _waiting(dependency))
    ledger = ledger_of(current)
    if child is not None:
        if child.start_time is not None:  # before the pods start there is nothing to count
            ledger = accrue(ledger, since=running_since(child), end=run_end(child, now), units=gpus, usd_per_hour=gpus * (gpu_hour_usd or 0.0))
        record_child(out, child, generation, "spec changed after the PyTorchJob was created; it keeps its spec (budget and price edits still apply to cost)")
    over_budget = budget_usd is not None and gpu_hour_usd and ledger.usd >= budget_usd
    if child is not None and (
        (child.phase == FAILED and child.reason == "DeadlineExceeded" and budget_is_deadline)
        or (over_budget and child.phase != SUCCEEDED)
    ):
        phase = FAILED
        ready = Desired(READY, FALSE, "BudgetExceeded", f"cost reached the budget of ${budget_usd:g}; training was stopped")
    out.conditions.append(ready)
    if pinned is not None:
        out.fields["dataset"] = pinned
    if (current.get("result") or {}).get("artifact"):
        out.fields["model"] = current["result"]["artifact"]
    out.fields.update(phase=phase, gpuHours=round(ledger.hours, 6), costUSD=round_usd(ledger.usd), message=ready.message or None)
    if ledger.until is not None:
        out.fields["accruedUntil"] = stamp_time(ledger.until)
    return out


def server_status(
    *,
    current: dict[str, Any],
    child: ChildState | None,
    dependency: Desired | None,
    url: str,
    served_model_name: str,
    pinned: dict[str, Any] | None,
    replicas: int,
) -> Computed:
    """`dependency` is the ModelReady condition to set (None leaves it as it is)."""
    out = Computed()
    if dependency is not None:
        out.conditions.append(dependency)
    wait = _waiting(dependency)
    if child is None:
        reason, message = (wait.reason, wait.message) if wait is not None else ("Pending", "the Deployment is being created")
        phase, ready = "Pending", Desired(READY, FALSE, reason, message)
    else:
        phase = child.phase
        ready = Desired(READY, TRUE if phase == SERVER_READY else FALSE, child.reason, child.message)
        out.fields.update(deploymentName=child.name, readyReplicas=child.ready_replicas, url=url)
    out.conditions.append(ready)
    if pinned is not None:
        out.fields["model"] = pinned
    out.fields.update(phase=phase, replicas=replicas, servedModelName=served_model_name, message=ready.message or None)
    return out


def server_accrual(current: dict[str, Any], *, pods: int, gpus_per_pod: int, pod_rate_usd: float, now: datetime) -> dict[str, Any]:
    """GPU-hours, cost and accruedUntil of a server, advanced by the pods seen now since accruedUntil.

    The first look only starts the clock. The three fields go out in one status write.
    """
    ledger = ledger_of(current)
    since = (ledger.until or now) if pods > 0 else None
    advanced = accrue(ledger, since=since, end=now, units=pods * gpus_per_pod, usd_per_hour=pods * pod_rate_usd)
    assert advanced.until is not None
    return {"gpuHours": round(advanced.hours, 6), "costUSD": round_usd(advanced.usd), "accruedUntil": stamp_time(advanced.until)}


def diff(
    current: dict[str, Any], computed: Computed, *, generation: int | None, now: datetime
) -> tuple[dict[str, Any], list[Transition]]:
    """The status patch (empty when nothing changed) and the condition transitions."""
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    old_conditions = current.get("conditions") or []
    merged = merge(old_conditions, computed.conditions, generation=generation, now=stamp)
    patch = {key: value for key, value in computed.fields.items() if current.get(key) != value}
    if merged != old_conditions:
        patch["conditions"] = merged
    if generation is not None and current.get("observedGeneration") != generation:
        patch["observedGeneration"] = generation
    return patch, transitions(old_conditions, merged) if "conditions" in patch else []
