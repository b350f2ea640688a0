"""InstructDataset: resolve the teacher, plan ConfigMap + Job, account tokens and teacher time."""

from __future__ import annotations

from datetime import datetime

from ..api.instructdataset import InstructDatasetSpec
from ..builders import instructdataset as build
from ..builders.inputs import TeacherServer
from ..builders.queue import effective
from ..conditions import TRUE, Desired
from ..observe import TEACHER_READY, ChildState, dataset_status, summarize_job
from ..settings import OperatorSettings
from . import Body, Plan, References, cost_clock, invalid_spec, open_resource
from .queued import queued
from .endpoints import key_refusal, ready_server, servers_hourly_usd

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
    server, condition = ready_server(ref.name, references, settings, TEACHER_READY)
    return (server, None) if server is not None else (None, condition)


def _teacher_hourly(spec: InstructDatasetSpec, references: References, settings: OperatorSettings) -> float:
    """An in-cluster teacher is priced by its GPU time while generation runs; its tokens are free."""
    ref = spec.teacher.model_server_ref
    return servers_hourly_usd([ref.name] if ref is not None else [], references, settings)


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    opened = open_resource(body, child, InstructDatasetSpec, PLURAL, "Job", "dataset")
    if isinstance(opened, Plan):
        return opened
    spec, status, parent = opened.spec, opened.status, opened.parent
    server, dependency = teacher_server(spec, references, settings) if child is None else (None, None)
    teacher_url = status.get("teacherURL")
    pricing = None
    children = []
    if dependency is None:
        try:
            teacher = build.resolve_teacher(spec, settings, server) if child is None or spec.teacher.model_server_ref is None else None
        except build.TeacherUnresolved as exc:
            return Plan(invalid_spec(exc))
        if teacher is not None and child is None and (why := key_refusal(teacher, settings)) is not None:
            return Plan(invalid_spec(ValueError(why), reason="TeacherHostRefused"))
        if teacher is not None:
            pricing = teacher.pricing
        if child is None and teacher is not None:
            children = list(build.build(parent, spec, settings, teacher))
            # Reported as the Job just made (the applier creates it before the status is written).
            child = summarize_job(children[-1])
            teacher_url = teacher.url
            if server is not None:
                dependency = Desired(TEACHER_READY, TRUE, "Ready", f"teacher ModelServer {server.name!r} at {server.url}")
    computed = dataset_status(
        spec,
        status,
        generation=parent.generation,
        child=child,
        dependency=dependency,
        teacher_url=teacher_url,
        pricing=pricing,
        teacher_hourly_usd=_teacher_hourly(spec, references, settings),
        now=cost_clock(now, settings.cost_interval_seconds),
    )
    computed = queued(computed, child, "Job", effective(spec.queue, settings))
    return Plan(computed, children)
