"""ModelServer autoscaling and adapters, and queued batch children: the pure reconciles."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from alpaca_operator.observe import ChildState
from alpaca_operator.reconcile import Plan, finetune, instructdataset, modelserver
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings()
UID = "uid-1"
BASE_SOURCE = {"uri": "s3://models/base"}
SERVE = {"model": {"source": BASE_SOURCE}}
SCALING = {"minReplicas": 1, "maxReplicas": 3, "podsMetric": {"name": "alpaca_serve_running_sequences", "averageValue": "8"}}


def body(kind: str, spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": kind, "spec": spec, "status": status or {},
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1}}


def condition(plan: Plan, type_: str) -> tuple[str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason


def kinds(plan: Plan) -> list[str]:
    return [c["kind"] for c in plan.children]


def serving(plan: Plan, replicas: int = 1) -> ChildState:
    deployment = next(c for c in plan.children if c["kind"] == "Deployment")
    digest = deployment["metadata"]["annotations"]["alpaca.dev/spec-hash"]
    return ChildState(name="x-serve", phase="Ready", reason="Ready", spec_hash=digest, replicas=replicas,
                      ready_replicas=replicas, pods=replicas, owner_uid=UID)


# -- autoscaling -----------------------------------------------------------------------------

def test_autoscaling_adds_the_hpa_and_reports_the_deployments_count_and_selector() -> None:
    plan = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}), None, {}, SETTINGS, NOW)
    assert kinds(plan) == ["ConfigMap", "Service", "Deployment", "HorizontalPodAutoscaler"]
    assert plan.status.fields["autoscalerName"] == "x-serve"
    assert plan.status.fields["selector"] == "app.kubernetes.io/component=serve,app.kubernetes.io/instance=x,app.kubernetes.io/managed-by=alpaca-operator"
    # The HPA chose 3: status reports what the Deployment runs, not spec.replicas.
    scaled = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}, {"autoscalerName": "x-serve"}),
                                   serving(plan, replicas=3), {}, SETTINGS, NOW)
    assert scaled.children == [] and scaled.status.fields["replicas"] == 3


def test_turning_autoscaling_on_hands_the_running_count_over_once() -> None:
    fixed = modelserver.reconcile(body("ModelServer", {**SERVE, "replicas": 3}), None, {}, SETTINGS, NOW)
    assert fixed.handover is None
    on = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}), serving(fixed, replicas=3), {}, SETTINGS, NOW)
    assert on.handover == {"apiVersion": "apps/v1", "kind": "Deployment",
                           "metadata": {"name": "x-serve", "namespace": "ns"}, "spec": {"replicas": 3}}
    # Once the HPA is recorded, later edits never write a count again.
    edited = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": {**SCALING, "maxReplicas": 5}}, {"autoscalerName": "x-serve"}),
                                   serving(on, replicas=3), {}, SETTINGS, NOW)
    assert edited.children and edited.handover is None
    assert "replicas" not in next(c for c in edited.children if c["kind"] == "Deployment")["spec"]


def test_turning_autoscaling_off_removes_the_hpa_and_gives_replicas_back_to_the_spec() -> None:
    on = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}), None, {}, SETTINGS, NOW)
    off = modelserver.reconcile(body("ModelServer", {**SERVE, "replicas": 2}, {"autoscalerName": "x-serve"}), serving(on), {}, SETTINGS, NOW)
    assert kinds(off) == ["ConfigMap", "Service", "Deployment"]
    assert off.children[-1]["spec"]["replicas"] == 2
    assert [(r["kind"], r["metadata"]["name"]) for r in off.remove] == [("HorizontalPodAutoscaler", "x-serve")]
    assert off.status.fields["autoscalerName"] is None and off.status.fields["replicas"] == 2


def test_a_lost_status_write_neither_forgets_the_hpa_nor_stops_its_removal() -> None:
    on = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}), None, {}, SETTINGS, NOW)
    # Applied, but the status saying so was never written: the next look records it all the same.
    again = modelserver.reconcile(body("ModelServer", {**SERVE, "autoscaling": SCALING}), serving(on), {}, SETTINGS, NOW)
    assert again.children == [] and again.handover is None and again.status.fields["autoscalerName"] == "x-serve"
    # Turned off, the HPA deleted, the status not yet written: deleted again (a no-op) until it is.
    off = modelserver.reconcile(body("ModelServer", SERVE), None, {}, SETTINGS, NOW)
    retried = modelserver.reconcile(body("ModelServer", SERVE, {"autoscalerName": "x-serve"}), serving(off), {}, SETTINGS, NOW)
    assert retried.children == [] and [r["kind"] for r in retried.remove] == ["HorizontalPodAutoscaler"]


def test_a_server_never_autoscaled_removes_nothing() -> None:
    first = modelserver.reconcile(body("ModelServer", SERVE), None, {}, SETTINGS, NOW)
    edited = modelserver.reconcile(body("ModelServer", {**SERVE, "replicas": 2}), serving(first), {}, SETTINGS, NOW)
    assert edited.remove == [] and first.remove == []


# -- adapters --------------------------------------------------------------------------------

RESULT = {"artifact": {"uri": "s3://b/fr", "sha256": "f" * 64}, "sizeBytes": 10, "finishedAt": "2026-01-01T11:00:00Z"}


def tune(name: str, *, method: str = "lora", base: dict[str, Any] = BASE_SOURCE, phase: str = "Succeeded", result: bool = True) -> dict[str, Any]:
    spec = {"baseModel": base, "method": method, "dataset": {"uri": "s3://b/d.jsonl"}, "output": {"uri": f"s3://b/{name}"}}
    return body("FineTune", spec, {"phase": phase, **({"result": {**RESULT, "artifact": {"uri": f"s3://b/{name}"}}} if result else {})}, name=name)


WITH_ADAPTERS = {**SERVE, "adapters": [{"name": "french", "fineTuneRef": {"name": "fr"}}, {"name": "german", "fineTuneRef": {"name": "de"}}]}


def test_adapters_refer_to_their_finetunes() -> None:
    assert modelserver.refs(body("ModelServer", WITH_ADAPTERS)) == [("FineTune", "fr"), ("FineTune", "de")]


def test_two_lora_finetunes_on_the_base_are_served_by_name() -> None:
    refs = {("FineTune", "fr"): tune("fr"), ("FineTune", "de"): tune("de")}
    plan = modelserver.reconcile(body("ModelServer", WITH_ADAPTERS), None, refs, SETTINGS, NOW)
    assert condition(plan, "AdaptersReady") == ("True", "Pinned")
    assert [a["name"] for a in plan.status.fields["adapters"]] == ["french", "german"]
    assert plan.status.fields["adapters"][0]["model"]["uri"] == "s3://b/fr/adapter"
    import json

    config = json.loads(plan.children[0]["data"]["config.json"])
    assert [a["name"] for a in config["adapters"]] == ["french", "german"]


@pytest.mark.parametrize(
    ("fr", "words"),
    [
        (tune("fr", method="full"), "not lora"),
        (tune("fr", base={"builtin": "smollm2-135m-instruct"}), "not on this server's model.source"),
        (tune("fr", phase="Failed", result=False), "failed"),
    ],
)
def test_an_adapter_that_cannot_be_served_is_refused_with_the_reason(fr: dict[str, Any], words: str) -> None:
    refs = {("FineTune", "fr"): fr, ("FineTune", "de"): tune("de")}
    plan = modelserver.reconcile(body("ModelServer", WITH_ADAPTERS), None, refs, SETTINGS, NOW)
    assert plan.children == []
    assert condition(plan, "Ready") == ("False", "AdapterRefused")
    assert words in plan.status.fields["message"]


def test_an_adapter_named_like_the_base_is_refused() -> None:
    spec = {**SERVE, "servedModelName": "base", "adapters": [{"name": "base", "fineTuneRef": {"name": "fr"}}]}
    plan = modelserver.reconcile(body("ModelServer", spec), None, {("FineTune", "fr"): tune("fr")}, SETTINGS, NOW)
    assert condition(plan, "Ready") == ("False", "AdapterRefused")


def test_a_server_waits_for_its_adapters_and_a_running_one_keeps_serving_the_old_set() -> None:
    refs = {("FineTune", "fr"): tune("fr"), ("FineTune", "de"): tune("de", phase="Running", result=False)}
    plan = modelserver.reconcile(body("ModelServer", WITH_ADAPTERS), None, refs, SETTINGS, NOW)
    assert plan.children == [] and condition(plan, "AdaptersReady") == ("False", "Waiting")
    old = modelserver.reconcile(body("ModelServer", SERVE), None, {}, SETTINGS, NOW)
    pinned = [{"name": "french", "model": {"uri": "s3://b/fr/adapter"}}]
    running = modelserver.reconcile(body("ModelServer", WITH_ADAPTERS, {"adapters": pinned}), serving(old), refs, SETTINGS, NOW)
    assert running.children == [] and running.status.fields["adapters"] == pinned
    assert condition(running, "Ready") == ("True", "Ready")


# -- queues ----------------------------------------------------------------------------------

QUEUED = OperatorSettings.model_validate({"queue": {"name": "gpu-queue"}})
TUNE = {"dataset": {"uri": "s3://b/d.jsonl"}, "output": {"uri": "s3://b/m"}}
SUSPENDED = ChildState(name="x-train", phase="Pending", reason="Suspended", message="the PyTorchJob is suspended", owner_uid=UID)


def test_a_suspended_child_in_a_queue_reads_queued() -> None:
    plan = finetune.reconcile(body("FineTune", TUNE, {"jobName": "x-train"}), SUSPENDED, {}, QUEUED, NOW)
    assert condition(plan, "Ready") == ("False", "Queued")
    assert "gpu-queue" in plan.status.fields["message"]
    own = finetune.reconcile(body("FineTune", {**TUNE, "queue": {"name": "mine"}}, {"jobName": "x-train"}), SUSPENDED, {}, QUEUED, NOW)
    assert "'mine'" in own.status.fields["message"]


def test_a_suspension_without_a_queue_keeps_its_own_reason() -> None:
    plan = finetune.reconcile(body("FineTune", TUNE, {"jobName": "x-train"}), SUSPENDED, {}, SETTINGS, NOW)
    assert condition(plan, "Ready") == ("False", "Suspended")


def test_a_queued_generation_job_reads_queued_and_running_once_admitted() -> None:
    spec = {"teacher": {"baseURL": "https://api.example.com/v1", "model": "m"}, "output": {"uri": "s3://b/d"}}
    job = ChildState(name="x-generate", phase="Pending", reason="Suspended", owner_uid=UID)
    plan = instructdataset.reconcile(body("InstructDataset", spec, {"jobName": "x-generate"}), job, {}, QUEUED, NOW)
    assert condition(plan, "Ready") == ("False", "Queued")
    admitted = ChildState(name="x-generate", phase="Running", reason="Running", owner_uid=UID)
    plan = instructdataset.reconcile(body("InstructDataset", spec, {"jobName": "x-generate"}), admitted, {}, QUEUED, NOW)
    assert condition(plan, "Ready") == ("False", "Running")
