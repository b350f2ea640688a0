"""FineTune: wait for and pin the dataset's result, plan ConfigMap + PyTorchJob, account training."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.finetune import FineTuneSpec
from ..api.instructdataset import InstructDatasetSpec
from ..api.results import RESULT_KEY, WorkloadResult
from ..builders import finetune as build
from ..builders.common import Parent
from ..builders.inputs import Input, dataset_direct, dataset_from_upstream
from ..builders.queue import effective
from ..conditions import FALSE, TRUE, Desired
from ..observe import DATASET_READY, FAILED, PENDING, RUNNING, ChildState, finetune_status, lost, summarize_pytorchjob, terminal
from ..settings import OperatorSettings
from . import Body, Plan, References, cost_clock, foreign, invalid_spec, waiting_for_old_child
from .queued import queued

KIND = "FineTune"
PLURAL = "finetunes"


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
    resolved = dataset_from_upstream(upstream_spec.output, artifact)
    digest = resolved.pinned.sha256 if resolved.pinned else None
    return resolved, Desired(DATASET_READY, TRUE, "Pinned", f"InstructDataset {ref.name!r} pinned" + (f" at sha256 {digest}" if digest else ""))


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    meta = body["metadata"]
    try:
        spec = FineTuneSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Plan(invalid_spec(exc))
    if foreign(body, child):
        assert child is not None
        return waiting_for_old_child(body, "PyTorchJob", child)
    status: dict[str, Any] = body.get("status") or {}
    if child is None and status.get("jobName") and not terminal(status):
        return Plan(lost(status, "PyTorchJob", "model"))
    dependency: Desired | None = None
    pinned = status.get("dataset")
    children = []
    if child is None and not terminal(status):
        dataset, dependency = resolve_dataset(spec, references)
        if dataset is not None:
            parent = Parent(meta["name"], meta["namespace"], PLURAL, meta.get("generation"))
            children = list(build.build(parent, spec, settings, dataset))
            # Reported as the job just made (the applier creates it before the status is written).
            child = summarize_pytorchjob(children[-1])
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
    computed = queued(computed, child, "PyTorchJob", effective(spec.queue, settings))
    patch = None
    if (child is not None and computed.fields.get("phase") == FAILED and child.phase in (PENDING, RUNNING)
            and child.reason != "Suspended"):
        # Out of budget before the deadline fired (a price edit, a restart): stop the pods, keep the job.
        stub = {"apiVersion": build.PYTORCHJOB_API_VERSION, "kind": "PyTorchJob", "metadata": {"name": child.name, "namespace": meta["namespace"]}}
        patch = (stub, {"spec": {"runPolicy": {"suspend": True}}})
    return Plan(computed, children, patch=patch)
