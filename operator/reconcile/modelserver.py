"""ModelServer: wait for and pin the model, plan Deployment + Service + config (applied), accrue cost."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..api.finetune import FineTuneSpec, Method
from ..api.modelserver import ModelServerSpec
from ..api.results import RESULT_KEY, WorkloadResult
from ..api.workloads import ResolvedModel
from ..builders import modelserver as build
from ..builders.common import Mounts
from ..builders.inputs import UnreachableArtifact, model_from_upstream, model_source
from ..conditions import FALSE, TRUE, Desired
from ..naming import SPEC_HASH_ANNOTATION
from ..observe import FAILED, MODEL_READY, ChildState, parse_time, server_accrual, server_status, summarize_deployment
from ..settings import OperatorSettings
from . import Body, Plan, References, invalid_spec, open_resource

KIND = "ModelServer"
PLURAL = "modelservers"


ADAPTERS_READY = "AdaptersReady"


def refs(body: Body) -> list[tuple[str, str]]:
    spec = body.get("spec") or {}
    ref = (spec.get("model") or {}).get("fineTuneRef")
    out = [("FineTune", ref["name"])] if ref and ref.get("name") else []
    for adapter in spec.get("adapters") or []:
        name = (adapter.get("fineTuneRef") or {}).get("name")
        if name and ("FineTune", name) not in out:
            out.append(("FineTune", name))
    return out


class AdapterRefused(ValueError):
    """An adapter this server cannot serve (not LoRA, another base, a clashing name): a spec problem."""


def resolve_adapters(
    parent: str, spec: ModelServerSpec, references: References
) -> tuple[tuple[build.AdapterInput, ...], list[dict[str, Any]], Desired | None]:
    """(adapters, their pinned outputs, the AdaptersReady condition; None when there are none).

    Raises AdapterRefused for an adapter that can never be served as declared.
    """
    if not spec.adapters:
        return (), [], None
    base = spec.model.source.to_wire() if spec.model.source is not None else None
    served = build.served_model_name(parent, spec)
    found: list[build.AdapterInput] = []
    pinned: list[dict[str, Any]] = []
    waiting: list[str] = []
    for index, adapter in enumerate(spec.adapters):
        name = adapter.fine_tune_ref.name
        if adapter.name == served:
            raise AdapterRefused(f"adapters[{index}].name: {adapter.name!r} is the base model's served name; pick another")
        upstream = references.get(("FineTune", name))
        if upstream is None:
            waiting.append(f"FineTune {name!r} does not exist")
            continue
        tuned = FineTuneSpec.model_validate(upstream.get("spec") or {})
        if tuned.method is not Method.LORA:
            raise AdapterRefused(f"adapters[{index}]: FineTune {name!r} used method {tuned.method.value}, not lora: it has no adapter to serve")
        if tuned.base_model.to_wire() != base:
            raise AdapterRefused(
                f"adapters[{index}]: FineTune {name!r} was trained on {tuned.base_model.to_wire()}, "
                f"not on this server's model.source {base}"
            )
        status: dict[str, Any] = upstream.get("status") or {}
        if status.get("phase") == FAILED:
            raise AdapterRefused(f"adapters[{index}]: FineTune {name!r} failed")
        if status.get("phase") != "Succeeded" or not status.get(RESULT_KEY):
            waiting.append(f"FineTune {name!r} has not succeeded yet (phase {status.get('phase') or 'unknown'})")
            continue
        artifact = WorkloadResult.model_validate(status[RESULT_KEY]).artifact
        try:
            output = model_from_upstream(tuned.output, artifact)
        except UnreachableArtifact as exc:
            raise AdapterRefused(f"adapters[{index}]: FineTune {name!r} {exc}") from None
        rank = tuned.lora.r if tuned.lora is not None else 8
        resolved = build.adapter_input(adapter.name, index, output, rank)
        found.append(resolved)
        # The FineTune's reported output (its uri, not a path inside this pod) with the adapter folder;
        # no sha256: the FineTune's digest is of its merged model, not of the adapter.
        where = output.pinned.uri if output.pinned is not None else artifact.uri
        pinned.append({"name": adapter.name, "model": {"uri": f"{where.rstrip('/')}/adapter"}})
    if waiting:
        return (), [], Desired(ADAPTERS_READY, FALSE, "Waiting", "waiting for adapters: " + "; ".join(waiting))
    names = ", ".join(a.name for a in found)
    return tuple(found), pinned, Desired(ADAPTERS_READY, TRUE, "Pinned", f"serving adapters {names}")


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
    tuned = FineTuneSpec.model_validate(upstream.get("spec") or {})
    # Checked before waiting: a FineTune that exports no GGUF never will (spec.export is immutable).
    gguf_file = build.fine_tune_gguf(spec.runtime, ref.name, tuned)
    status: dict[str, Any] = upstream.get("status") or {}
    phase = status.get("phase")
    if phase == FAILED:
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "FineTuneFailed", f"FineTune {ref.name!r} failed")
    if phase != "Succeeded":
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "Waiting", f"waiting for FineTune {ref.name!r} to succeed (phase {phase or 'unknown'})")
    if not status.get(RESULT_KEY):
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "WaitingForResult", f"FineTune {ref.name!r} succeeded; waiting for its workload's result (model and sha256)")
    artifact = WorkloadResult.model_validate(status[RESULT_KEY]).artifact
    try:
        resolved = model_from_upstream(tuned.output, artifact)
    except UnreachableArtifact as exc:
        return None, Mounts(), None, Desired(MODEL_READY, FALSE, "UnreachableArtifact", f"FineTune {ref.name!r} {exc}; not serving it")
    pinned = resolved.pinned.to_wire() if resolved.pinned else None
    return ResolvedModel(location=resolved.location, gguf_file=gguf_file), resolved.mounts, pinned, Desired(MODEL_READY, TRUE, "Pinned", f"serving the model of FineTune {ref.name!r}")


def reconcile(body: Body, child: ChildState | None, references: References, settings: OperatorSettings, now: datetime) -> Plan:
    meta = body["metadata"]
    opened = open_resource(body, child, ModelServerSpec, PLURAL, "Deployment")
    if isinstance(opened, Plan):
        return opened
    spec, status, parent = opened.spec, opened.status, opened.parent
    try:
        model, mounts, pinned, dependency = resolve_model(spec, references)
    except build.UnsupportedModel as exc:
        return Plan(invalid_spec(exc))
    try:
        adapters, pinned_adapters, adapters_ready = resolve_adapters(meta["name"], spec, references)
    except AdapterRefused as exc:
        return Plan(invalid_spec(exc, reason="AdapterRefused"))
    children: list[dict[str, Any]] = []
    remove: list[dict[str, Any]] = []
    handover: dict[str, Any] | None = None
    recorded = status.get("autoscalerName")
    autoscaler_name = recorded
    if spec.autoscaling is None and recorded:
        # Autoscaling was turned off: the HPA goes (again, harmlessly, until the status says so),
        # and replicas is the spec's again.
        remove.append(build.autoscaler_stub(parent))
        autoscaler_name = None
    if child is not None and dependency is not None and dependency.status != TRUE:
        # Already serving: an upstream that went away later does not take the server down.
        dependency, pinned = None, status.get("model")
    elif model is not None and (adapters_ready is None or adapters_ready.status == TRUE):
        try:
            config_map, deployment, service = build.build(parent, spec, settings, model, mounts, adapters)
        except build.UnsupportedModel as exc:
            return Plan(invalid_spec(exc))
        if spec.autoscaling is not None:
            # Applied now, or already (the same hash): recorded even when a status write was lost.
            autoscaler_name = build.autoscaler_name(meta["name"])
        if child is None or child.spec_hash != deployment["metadata"]["annotations"][SPEC_HASH_ANNOTATION]:
            # Replicas, resources, image, placement...: a server applies spec edits by rolling out,
            # and server-side apply removes what the spec no longer asks for.
            policy = build.network_policy(parent, spec)
            hpa = build.autoscaler(parent, spec)
            # The HPA after the Deployment it scales: made first, it warns FailedGetScale once.
            children = [config_map, service, *([policy] if policy else []), deployment, *([hpa] if hpa else [])]
            if hpa is not None and child is not None and not recorded:
                # The running count is handed over rather than dropped: dropped from the only
                # manager that set it, the API server would reset it to 1 until the HPA acts.
                handover = build.replicas_handover(parent, child.replicas)
            if child is None:
                child = summarize_deployment(deployment)  # reported as the Deployment just made
    elif child is not None and adapters_ready is not None:
        pinned_adapters = status.get("adapters") or []  # still serving the adapters it was serving
    computed = server_status(
        current=status,
        child=child,
        dependency=dependency,
        url=build.url(parent),
        served_model_name=build.served_model_name(meta["name"], spec),
        pinned=pinned,
        replicas=spec.replicas,
    )
    if adapters_ready is not None:
        computed.conditions.insert(0, adapters_ready)
    # With an HPA the Deployment's count is the HPA's: report that one (the scale subresource's status).
    replicas = child.replicas if spec.autoscaling is not None and child is not None else spec.replicas
    computed.fields.update(
        replicas=replicas, selector=build.pod_selector(meta["name"]), autoscalerName=autoscaler_name,
        adapters=pinned_adapters or None,
    )
    last = parse_time(status.get("accruedUntil"))
    if last is None or (now - last).total_seconds() >= settings.cost_interval_seconds:
        pods = child.pods if child is not None else 0
        computed.fields.update(server_accrual(status, pods=pods, gpus_per_pod=spec.gpus_per_replica, pod_rate_usd=build.replica_rate(spec, settings), now=now))
    return Plan(computed, children, apply=True, remove=remove, handover=handover)
