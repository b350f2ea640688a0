"""ModelServer: wait for and pin the model, plan Deployment + Service + config (applied), accrue cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ValidationError

from ..api.finetune import FineTuneSpec
from ..api.modelserver import ModelServerSpec
from ..api.results import RESULT_KEY, WorkloadResult
from ..api.workloads import ResolvedModel
from ..builders import modelserver as build
from ..builders.common import Mounts, Parent
from ..builders.inputs import model_from_upstream, model_source
from ..conditions import FALSE, TRUE, Desired
from ..naming import SPEC_HASH_ANNOTATION
from ..observe import FAILED, MODEL_READY, ChildState, parse_time, server_accrual, server_status, summarize_deployment
from ..settings import OperatorSettings
from . import Body, Plan, References, foreign, invalid_spec, waiting_for_old_child

KIND = "ModelServer"
PLURAL = "modelservers"


def refs(body: Body) -> list[tuple[str, str]]:
    ref = ((body.get("spec") or {}).get("model") or {}).get("fineTuneRef")
    return [("FineTune", ref["name"])] if ref and ref.get("name") else []


def resolve_model(
    spec: ModelServerSpec, references: References
) -> tuple[ResolvedModel | None, Mounts, dict[str, Any] | None, Desired | None]:
    """(model, mounts, pinned artifact, ModelReady condition or None when the model is given directly)."""
    ref = spec.model.fine_tune_ref
    if ref is None:
        assert spec.model.source is not None
        model, mounts = model_source(spec.model.source)
        source = spec.model.source
        uri = source.uri or (f"builtin://{source.builtin.value}" if source.builtin else f"pvc://{source.pvc.claim_name}/{source.pvc.sub_path}" if source.pvc else "")
        return model, mounts, {"uri": uri}, None
    upstream = references.get(("FineTune", ref.name))
    if upstream is None:
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "NotFound", f"FineTune {ref.name!r} does not exist; re-checked periodically")
    status: dict[str, Any] = upstream.get("status") or {}
    phase = status.get("phase")
    if phase == FAILED:
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "FineTuneFailed", f"FineTune {ref.name!r} failed")
    if phase != "Succeeded":
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "Waiting", f"waiting for FineTune {ref.name!r} to succeed (phase {phase or 'unknown'})")
    if not status.get(RESULT_KEY):
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "WaitingForResult", f"FineTune {ref.name!r} succeeded; waiting for its workload's result (model and sha256)")
    artifact = WorkloadResult.model_validate(status[RESULT_KEY]).artifact
    resolved = model_from_upstream(FineTuneSpec.model_validate(upstream.get("spec") or {}).output, artifact)
    pinned = resolved.pinned.to_wire() if resolved.pinned else None
    return ResolvedModel(location=resolved.location), resolved.mounts, pinned, Desired(MODEL_READY, TRUE, "Pinned", f"serving the model of FineTune {ref.name!r}")


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    meta = body["metadata"]
    try:
        spec = ModelServerSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        return Plan(invalid_spec(exc))
    if foreign(body, child):
        assert child is not None
        return waiting_for_old_child(body, "Deployment", child)
    status: dict[str, Any] = body.get("status") or {}
    parent = Parent(meta["name"], meta["namespace"], PLURAL, meta.get("generation"))
    model, mounts, pinned, dependency = resolve_model(spec, references)
    children = []
    if child is not None and dependency is not None and dependency.status != TRUE:
        # Already serving: an upstream that went away later does not take the server down.
        dependency, pinned = None, status.get("model")
    elif model is not None:
        try:
            config_map, deployment, service = build.build(parent, spec, settings, model, mounts)
        except build.UnsupportedModel as exc:
            return Plan(invalid_spec(exc))
        if child is None or child.spec_hash != deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
            # Replicas, resources, image, placement...: a server applies spec edits by rolling out,
            # and server-side apply removes what the spec no longer asks for.
            policy = build.network_policy(parent, spec)
            children = [config_map, service, *([policy] if policy else []), deployment]
            if child is None:
                child = summarize_deployment(deployment)  # reported as the Deployment just made
    computed = server_status(
        current=status,
        child=child,
        dependency=dependency,
        url=build.url(parent),
        served_model_name=build.served_model_name(meta["name"], spec),
        pinned=pinned,
        replicas=spec.replicas,
    )
    last = parse_time(status.get("accruedUntil"))
    if last is None or (now - last).total_seconds() >= settings.cost_interval_seconds:
        pods = child.pods if child is not None else 0
        computed.fields.update(server_accrual(status, pods=pods, gpus_per_pod=spec.gpus_per_replica, pod_rate_usd=build.replica_rate(spec, settings), now=now))
    return Plan(computed, children, apply=True)
