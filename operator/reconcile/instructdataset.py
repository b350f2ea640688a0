"""InstructDataset: resolve the teacher, plan ConfigMap + Job, account tokens and teacher time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.common import SecretKeyRef
from ..api.instructdataset import InstructDatasetSpec
from ..api.modelserver import ModelServerSpec
from ..builders import instructdataset as build
from ..builders.common import Parent
from ..builders.inputs import TeacherServer
from ..builders.modelserver import replica_rate
from ..builders.queue import effective
from ..conditions import FALSE, TRUE, Desired
from ..observe import TEACHER_READY, ChildState, dataset_status, kept, lost, summarize_job, terminal
from ..settings import OperatorSettings
from ..teacher_hosts import refusal
from . import Body, Plan, References, cost_clock, foreign, invalid_spec, waiting_for_old_child
from .queued import queued

KIND = "InstructDataset"
PLURAL = "instructdatasets"


def refs(body: Body) -> list[tuple[str, str]]:
    ref = ((body.get("spec") or {}).get("teacher") or {}).get("modelServerRef")
    return [("ModelServer", ref["name"])] if ref and ref.get("name") else []


def teacher_server(spec: InstructDatasetSpec, references: References, settings: OperatorSettings) -> tuple[TeacherServer | None, Desired | None]:
    """The ModelServer teacher, or the condition saying why there is none yet."""
    ref = spec.teacher.model_server_ref
    if ref is None:
        return None, None
    server = references.get(("ModelServer", ref.name))
    if server is None:
        return None, Desired(TEACHER_READY, FALSE, "NotFound", f"ModelServer {ref.name!r} does not exist; re-checked periodically")
    status = server.get("status") or {}
    if status.get("phase") != "Ready" or not status.get("url"):
        return None, Desired(TEACHER_READY, FALSE, "Waiting", f"waiting for ModelServer {ref.name!r} to be Ready (phase {status.get('phase') or 'unknown'})")
    server_spec = ModelServerSpec.model_validate(server.get("spec") or {})
    auth = server_spec.auth.api_key_secret_ref if server_spec.auth else None
    return (
        TeacherServer(
            name=ref.name,
            url=status["url"],
            served_model_name=status.get("servedModelName") or ref.name,
            api_key_secret_ref=SecretKeyRef(name=auth.name, key=auth.key) if auth else None,
            hourly_usd=replica_rate(server_spec, settings) * max(server_spec.replicas, 1),
        ),
        None,
    )


def _teacher_hourly(spec: InstructDatasetSpec, references: References, settings: OperatorSettings) -> float:
    """An in-cluster teacher is priced by its GPU time while generation runs; its tokens are free."""
    ref = spec.teacher.model_server_ref
    server = references.get(("ModelServer", ref.name)) if ref is not None else None
    if server is None:
        return 0.0
    server_spec = ModelServerSpec.model_validate(server.get("spec") or {})
    return replica_rate(server_spec, settings) * max(server_spec.replicas, 1)


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    meta = body["metadata"]
    try:
        spec = InstructDatasetSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Plan(invalid_spec(exc))
    if foreign(body, child):
        assert child is not None
        return waiting_for_old_child(body, "Job", child)
    status: dict[str, Any] = body.get("status") or {}
    if child is None and terminal(status):
        return Plan(kept(status))
    if child is None and status.get("jobName"):
        return Plan(lost(status, "Job", "dataset"))
    server, dependency = teacher_server(spec, references, settings) if child is None else (None, None)
    teacher_url = status.get("teacherURL")
    pricing = None
    children = []
    if dependency is None:
        try:
            teacher = build.resolve_teacher(spec, settings, server) if child is None or spec.teacher.model_server_ref is None else None
        except build.TeacherUnresolved as exc:
            return Plan(invalid_spec(exc))
        if teacher is not None and teacher.api_key is not None and child is None and spec.teacher.model_server_ref is None:
            hosts = settings.teacher_hosts
            if (why := refusal(teacher.url, allowed=hosts.allowed, allow_link_local=hosts.allow_link_local)) is not None:
                return Plan(invalid_spec(ValueError(why), reason="TeacherHostRefused"))
        if teacher is not None:
            pricing = teacher.pricing
        if child is None and teacher is not None:
            parent = Parent(meta["name"], meta["namespace"], PLURAL, meta.get("generation"))
            children = list(build.build(parent, spec, settings, teacher))
            # Reported as the Job just made (the applier creates it before the status is written).
            child = summarize_job(children[-1])
            teacher_url = teacher.url
            if server is not None:
                dependency = Desired(TEACHER_READY, TRUE, "Ready", f"teacher ModelServer {server.name!r} at {server.url}")
    computed = dataset_status(
        spec,
        status,
        generation=meta.get("generation"),
        child=child,
        dependency=dependency,
        teacher_url=teacher_url,
        pricing=pricing,
        teacher_hourly_usd=_teacher_hourly(spec, references, settings),
        now=cost_clock(now, settings.cost_interval_seconds),
    )
    computed = queued(computed, child, "Job", effective(spec.queue, settings))
    return Plan(computed, children)
