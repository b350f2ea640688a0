"""InstructDataset: resolve the teacher, create ConfigMap + Job, report the Job and the usage it reports."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from ..api.instructdataset import InstructDatasetSpec
from ..builders import instructdataset as build
from ..builders.common import Parent
from ..builders.inputs import TeacherServer
from ..builders.modelserver import replica_rate
from ..api.modelserver import ModelServerSpec
from ..api.common import SecretKeyRef
from ..conditions import FALSE, TRUE, Desired
from ..teacher_hosts import refusal
from ..controller import Body, Controller, Key, KindInfo, cost_clock
from ..observe import PENDING, TEACHER_READY, Computed, dataset_status, kept, summarize_job, terminal
from .common import Refused, ensure_owned, invalid_spec, not_ours

KIND = "InstructDataset"
PLURAL = "instructdatasets"


def refs(body: Body) -> list[tuple[str, str]]:
    ref = ((body.get("spec") or {}).get("teacher") or {}).get("modelServerRef")
    return [("ModelServer", ref["name"])] if ref and ref.get("name") else []


def _teacher(ctl: Controller, namespace: str, spec: InstructDatasetSpec) -> tuple[TeacherServer | None, Desired | None]:
    """The ModelServer teacher, or the condition saying why there is none yet."""
    ref = spec.teacher.model_server_ref
    if ref is None:
        return None, None
    server = ctl.parent("ModelServer", namespace, ref.name)
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
            hourly_usd=replica_rate(server_spec, ctl.settings) * max(server_spec.replicas, 1),
        ),
        None,
    )


def reconcile(ctl: Controller, key: Key, body: Body) -> None:
    _, namespace, name = key
    meta = body["metadata"]
    try:
        spec = InstructDatasetSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        ctl.write_status(key, body, invalid_spec(exc))
        return
    now = datetime.now(timezone.utc)
    child = ctl.child(key)
    status: dict[str, Any] = body.get("status") or {}
    if child is not None and child.owner_uid != meta["uid"]:
        ctl.write_status(key, body, Computed(fields={"phase": PENDING}, conditions=[not_ours(body, "Job", child)]), now=now)
        return
    if child is None and terminal(status):
        ctl.write_status(key, body, kept(status), now=now)
        return
    server, wait = _teacher(ctl, namespace, spec) if child is None else (None, None)
    teacher_url = status.get("teacherURL")
    pricing = None
    dependency = wait
    if wait is None:
        try:
            teacher = build.resolve_teacher(spec, ctl.settings, server) if child is None or spec.teacher.model_server_ref is None else None
        except build.TeacherUnresolved as exc:
            ctl.write_status(key, body, invalid_spec(exc))
            return
        if teacher is not None and teacher.api_key is not None and child is None and spec.teacher.model_server_ref is None:
            hosts = ctl.settings.teacher_hosts
            if (why := refusal(teacher.url, allowed=hosts.allowed, allow_link_local=hosts.allow_link_local)) is not None:
                ctl.write_status(key, body, invalid_spec(ValueError(why), reason="TeacherHostRefused"))
                return
        if teacher is not None:
            pricing = teacher.pricing
        if child is None and teacher is not None:
            ctl.ensure_workload_rbac(namespace)
            parent = Parent(name, namespace, PLURAL, meta.get("generation"))
            config_map, job = build.build(parent, spec, ctl.settings, teacher)
            try:
                ensured = ensure_owned(ctl, body, [config_map, job], summarize_job)
            except Refused as refused:
                ctl.write_status(key, body, refused.computed(), now=now)
                raise
            if ensured.foreign is not None:
                ctl.write_status(key, body, Computed(fields={"phase": PENDING}, conditions=[ensured.foreign]), now=now)
                return
            child = ensured.child
            teacher_url = teacher.url
            if server is not None:
                dependency = Desired(TEACHER_READY, TRUE, "Ready", f"teacher ModelServer {server.name!r} at {server.url}")
    hourly = 0.0
    if spec.teacher.model_server_ref is not None:
        # Priced by the teacher's GPU time while generation runs; tokens are free in-cluster.
        teacher_body = ctl.parent("ModelServer", namespace, spec.teacher.model_server_ref.name)
        if teacher_body is not None:
            teacher_spec = ModelServerSpec.model_validate(teacher_body.get("spec") or {})
            hourly = replica_rate(teacher_spec, ctl.settings) * max(teacher_spec.replicas, 1)
    computed: Computed = dataset_status(
        spec,
        status,
        generation=meta.get("generation"),
        child=child,
        dependency=dependency,
        teacher_url=teacher_url,
        pricing=pricing,
        teacher_hourly_usd=hourly,
        now=cost_clock(now, ctl.settings.cost_interval_seconds),
    )
    ctl.write_status(key, body, computed, now=now)


def register(ctl: Controller) -> KindInfo:
    info = KindInfo(KIND, PLURAL, reconcile, refs)
    ctl.register(info)
    return info

