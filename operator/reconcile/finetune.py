"""FineTune: wait for and pin the dataset's result, plan ConfigMap + PyTorchJob or TrainJob, account training."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from ..api.finetune import Backend, FineTuneSpec
from ..api.instructdataset import InstructDatasetSpec
from ..api.results import RESULT_KEY, WorkloadResult
from ..builders import finetune as build
from ..builders import trainjob
from ..builders.inputs import Input, UnreachableArtifact, dataset_direct, dataset_from_upstream
from ..builders.queue import effective
from ..conditions import FALSE, TRUE, Desired
from ..observe import (
    DATASET_READY,
    FAILED,
    PENDING,
    RUNNING,
    SPEC_APPLIED,
    SUCCEEDED,
    ChildState,
    Computed,
    child_identity,
    finetune_status,
    summarize_pytorchjob,
    true_condition,
)
from ..settings import OperatorSettings
from . import Body, Plan, References, cost_clock, open_resource
from .queued import queued

KIND = "FineTune"
PLURAL = "finetunes"


PYTORCHJOB = "PyTorchJob"
# What each backend builds, and the (apiVersion, kind) of the job it records in status.jobName.
BACKENDS = {
    Backend.PYTORCHJOB: (build.build, (build.PYTORCHJOB_API_VERSION, PYTORCHJOB)),
    Backend.TRAINJOB: (trainjob.build, (trainjob.TRAINJOB_API_VERSION, trainjob.KIND)),
}


def _backend(body: Body) -> Backend:
    try:
        return Backend((body.get("spec") or {}).get("backend") or Backend.PYTORCHJOB)
    except ValueError:
        return Backend.PYTORCHJOB  # an invalid spec; reconcile reports it


def primary(body: Body) -> tuple[str, str]:
    """(apiVersion, kind) of the job this FineTune's backend runs it as."""
    return BACKENDS[_backend(body)][1]


def summarize_trainjob(body: dict[str, Any]) -> ChildState:
    """A trainer.kubeflow.org/v1alpha1 TrainJob (Trainer v2.3.0).

    Its conditions are Complete, Failed (reason DeadlineExceeded past activeDeadlineSeconds, else
    the JobSet's) and Suspended (True/Suspended, then False/Resumed). It has no start or completion
    time: its pods hold their nodes from the moment it was created or last resumed (Kueue resumes
    it on admission) until its Complete or Failed condition turned True. It runs once a child Job
    has active or ready pods.
    """
    meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    conditions = status.get("conditions") or []
    resumed = next((c for c in conditions if c.get("type") == "Suspended" and c.get("status") == "False"), None)
    started = (resumed or {}).get("lastTransitionTime") or meta.get("creationTimestamp")
    common = child_identity(meta)
    if done := true_condition(conditions, "Complete"):
        return ChildState(phase=SUCCEEDED, reason="Completed", message=done.get("message", ""),
                          start_time=started, completion_time=done.get("lastTransitionTime"), **common)
    if failed := true_condition(conditions, "Failed"):
        return ChildState(phase=FAILED, reason=failed.get("reason") or "JobFailed", message=failed.get("message", ""),
                          start_time=started, completion_time=failed.get("lastTransitionTime"), **common)
    if spec.get("suspend") or true_condition(conditions, "Suspended"):
        return ChildState(phase=PENDING, reason="Suspended", message="the TrainJob is suspended", **common)
    jobs = status.get("jobsStatus") or []
    if any(int(job.get("active") or 0) + int(job.get("ready") or 0) > 0 for job in jobs):
        return ChildState(phase=RUNNING, reason="Running", message="training is running", start_time=started, **common)
    return ChildState(phase=PENDING, reason="JobCreated", message="waiting for the training pods", **common)


def summarize(body: dict[str, Any]) -> ChildState:
    """Either backend's job, by its kind."""
    return summarize_trainjob(body) if body.get("kind") == trainjob.KIND else summarize_pytorchjob(body)


def _immutable(computed: Computed, child: ChildState) -> Computed:
    """A spec edit that did not reach a TrainJob says why: the API server keeps runtimeRef,
    initializer and trainer as they were created, so the operator never re-applies them."""
    message = (f"spec changed after the TrainJob {child.name!r} was created; its runtimeRef, initializer and trainer "
               "are immutable, so it keeps its spec (budget and price edits still apply to cost; recreate the "
               "FineTune to train with the new spec)")
    conditions = [Desired(SPEC_APPLIED, FALSE, "ImmutableTrainJob", message) if c.type == SPEC_APPLIED and c.status == FALSE else c
                  for c in computed.conditions]
    return replace(computed, conditions=conditions)


def refs(body: Body) -> list[tuple[str, str]]:
    ref = ((body.get("spec") or {}).get("dataset") or {}).get("instructDatasetRef")
    return [("InstructDataset", ref["name"])] if ref and ref.get("name") else []


def resolve_dataset(spec: FineTuneSpec, references: References) -> tuple[Input | None, Desired]:
    """The dataset to train on, or the DatasetReady condition saying why not yet."""
    source = spec.dataset
    ref = source.instruct_dataset_ref
    if ref is None:
        given = dataset_direct(source)
        return given, Desired(DATASET_READY, TRUE, "Given", f"dataset at {given.location}")
    upstream = references.get(("InstructDataset", ref.name))
    if upstream is None:
        return None, Desired(DATASET_READY, FALSE, "NotFound", f"InstructDataset {ref.name!r} does not exist; re-checked periodically")
    status: dict[str, Any] = upstream.get("status") or {}
    phase = status.get("phase")
    if phase == FAILED:
        return None, Desired(DATASET_READY, FALSE, "DatasetFailed", f"InstructDataset {ref.name!r} failed: {status.get('message') or ''}".rstrip(": "))
    if phase != "Succeeded":
        return None, Desired(DATASET_READY, FALSE, "Waiting", f"waiting for InstructDataset {ref.name!r} to succeed (phase {phase or 'unknown'})")
    result = status.get(RESULT_KEY)
    if not result:
        return None, Desired(DATASET_READY, FALSE, "WaitingForResult", f"InstructDataset {ref.name!r} succeeded; waiting for its workload's result (artifact and sha256)")
    artifact = WorkloadResult.model_validate(result).artifact
    if source.sha256 and artifact.sha256 != source.sha256:
        return None, Desired(DATASET_READY, FALSE, "DigestMismatch", f"InstructDataset {ref.name!r} produced sha256 {artifact.sha256 or '(none)'}, the spec expects {source.sha256}; not training on it")
    upstream_spec = InstructDatasetSpec.model_validate(upstream.get("spec") or {})
    try:
        resolved = dataset_from_upstream(upstream_spec.output, artifact)
    except UnreachableArtifact as exc:
        return None, Desired(DATASET_READY, FALSE, "UnreachableArtifact", f"InstructDataset {ref.name!r} {exc}; not training on it")
    digest = resolved.pinned.sha256 if resolved.pinned else None
    return resolved, Desired(DATASET_READY, TRUE, "Pinned", f"InstructDataset {ref.name!r} pinned" + (f" at sha256 {digest}" if digest else ""))


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    meta = body["metadata"]
    opened = open_resource(body, child, FineTuneSpec, PLURAL, lambda spec: BACKENDS[spec.backend][1][1], "model")
    if isinstance(opened, Plan):
        return opened
    spec, status, parent = opened.spec, opened.status, opened.parent
    builder, (api_version, kind) = BACKENDS[spec.backend]
    dependency: Desired | None = None
    pinned = status.get("dataset")
    children = []
    if child is None:
        dataset, dependency = resolve_dataset(spec, references)
        if dataset is not None:
            children = list(builder(parent, spec, settings, dataset))
            # Reported as the job just made (the applier creates it before the status is written).
            child = summarize(children[-1])
            # Pinned once, when training is set up: a later re-generation of the dataset does not
            # change what this FineTune consumed.
            if pinned is None and dataset.pinned is not None:
                pinned = dataset.pinned.to_wire()
    computed = finetune_status(
        current=status,
        generation=meta.get("generation"),
        child=child,
        dependency=dependency,
        pinned=pinned,
        gpus=build.total_gpus(spec),
        gpu_hour_usd=build.gpu_price(spec, settings),
        budget_usd=spec.budget_usd,
        budget_is_deadline=build.budget_is_the_deadline(spec, settings),
        now=cost_clock(now, settings.cost_interval_seconds),
    )
    if spec.backend is Backend.TRAINJOB and child is not None:
        computed = _immutable(computed, child)
    computed = queued(computed, child, kind, effective(spec.queue, settings))
    patch = None
    if (child is not None and computed.fields.get("phase") == FAILED and child.phase in (PENDING, RUNNING)
            and child.reason != "Suspended"):
        # Out of budget before the deadline fired (a price edit, a restart): stop the pods, keep the job.
        stub = {"apiVersion": api_version, "kind": kind, "metadata": {"name": child.name, "namespace": meta["namespace"]}}
        stop = {"suspend": True} if spec.backend is Backend.TRAINJOB else {"runPolicy": {"suspend": True}}
        patch = (stub, {"spec": stop})
    return Plan(computed, children, patch=patch)
