"""The pieces every reconcile shares: its opening checks, and the ModelServers and URLs it asks."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator.api.common import SecretKeyRef
from alpaca_operator.api.endpoint import TokenPricing
from alpaca_operator.api.finetune import FineTuneSpec
from alpaca_operator.builders.inputs import EndpointTarget
from alpaca_operator.observe import ChildState
from alpaca_operator.reconcile import Opened, Plan, open_resource
from alpaca_operator.reconcile.endpoints import key_refusal, ready_server, servers_hourly_usd
from alpaca_operator.settings import OperatorSettings

SETTINGS = OperatorSettings.model_validate({"gpuHourUSD": {"nvidia-l4": 0.5}})
UID = "uid-1"
TUNE = {"dataset": {"uri": "s3://b/d.jsonl"}, "output": {"uri": "s3://b/m"}}


def body(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "FineTune", "spec": spec, "status": status or {}, "metadata": {"name": "x", "namespace": "ns", "uid": UID, "generation": 4}}


def server(name: str, phase: str = "Ready", *, gpus: int = 0, replicas: int = 1, auth: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"source": {"builtin": "smollm2-135m-instruct"}}, "gpusPerReplica": gpus,
                            "gpuType": "nvidia-l4", "replicas": replicas}
    if auth:
        spec["auth"] = {"apiKeySecretRef": {"name": f"{name}-token", "key": "token"}}
    status = {"phase": phase, "url": f"http://{name}.ns.svc:8000/v1"} if phase == "Ready" else {"phase": phase}
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": spec, "status": status}


def child(owner: str = UID) -> ChildState:
    return ChildState(name="x-train", phase="Running", reason="Running", owner_uid=owner)


def trainjob_kind(spec: FineTuneSpec) -> str:
    return "TrainJob" if spec.backend.value == "trainjob" else "PyTorchJob"


# -- the opening -----------------------------------------------------------------------------

def test_a_spec_it_can_act_on_opens_with_the_resource_as_parent() -> None:
    opened = open_resource(body(TUNE, {"phase": "Running"}), child(), FineTuneSpec, "finetunes", "PyTorchJob", "model")
    assert isinstance(opened, Opened)
    assert opened.status == {"phase": "Running"}
    assert (opened.parent.name, opened.parent.namespace, opened.parent.plural, opened.parent.generation) == ("x", "ns", "finetunes", 4)


def test_an_invalid_spec_ends_it_naming_the_field() -> None:
    plan = open_resource(body({**TUNE, "method": "magic"}), None, FineTuneSpec, "finetunes", "PyTorchJob")
    assert isinstance(plan, Plan) and plan.status.fields["phase"] == "Failed"
    assert "method" in plan.status.fields["message"] and plan.status.conditions[0].reason == "InvalidSpec"


@pytest.mark.parametrize(("backend", "kind"), [("pytorchjob", "PyTorchJob"), ("trainjob", "TrainJob")])
def test_a_namesakes_child_is_waited_for_and_named_by_the_kind_the_spec_makes(backend: str, kind: str) -> None:
    plan = open_resource(body({**TUNE, "backend": backend}), child(owner="uid-0"), FineTuneSpec, "finetunes", trainjob_kind, "model")
    assert isinstance(plan, Plan) and plan.status.fields == {"phase": "Pending"}
    assert plan.status.conditions[0].reason == "WaitingForOldChild" and f"a {kind} named 'x-train'" in plan.status.conditions[0].message


@pytest.mark.parametrize(
    ("artifact_field", "status", "phase", "reason"),
    [
        # Batch kinds: finished work is kept as it is; a child gone before its outcome is never run again.
        ("model", {"phase": "Succeeded", "jobName": "x-train"}, "Succeeded", None),
        ("model", {"phase": "Running", "jobName": "x-train"}, "Failed", "PyTorchJobLost"),
        ("model", {"phase": "Running", "jobName": "x-train", "result": {"artifact": {"uri": "s3://b/m"}}}, "Succeeded", "Completed"),
        # A server (no artifact field) goes on whatever its status says.
        (None, {"phase": "Succeeded", "jobName": "x-train"}, None, None),
    ],
)
def test_finished_or_lost_work_of_a_batch_kind_is_never_run_again(
    artifact_field: str | None, status: dict[str, Any], phase: str | None, reason: str | None
) -> None:
    outcome = open_resource(body(TUNE, status), None, FineTuneSpec, "finetunes", "PyTorchJob", artifact_field)
    if phase is None:
        assert isinstance(outcome, Opened)
        return
    assert isinstance(outcome, Plan) and outcome.children == [] and outcome.status.fields["phase"] == phase
    assert [c.reason for c in outcome.status.conditions] == ([reason] if reason else [])


# -- ModelServers as endpoints ---------------------------------------------------------------

@pytest.mark.parametrize(
    ("references", "reason", "message"),
    [
        ({}, "NotFound", "judge: ModelServer 'srv' does not exist; re-checked periodically"),
        ({("ModelServer", "srv"): server("srv", "Progressing")}, "Waiting", "judge: waiting for ModelServer 'srv' to be Ready (phase Progressing)"),
        ({("ModelServer", "srv"): server("srv")}, "Ready", "judge: ModelServer 'srv' at http://srv.ns.svc:8000/v1"),
    ],
)
def test_a_server_is_an_endpoint_only_once_ready_and_the_condition_says_why(references: dict, reason: str, message: str) -> None:
    endpoint, condition = ready_server("srv", references, SETTINGS, "JudgeReady", prefix="judge: ")
    assert (condition.type, condition.reason, condition.message) == ("JudgeReady", reason, message)
    assert (endpoint is not None) == (reason == "Ready") and (condition.status == "True") == (reason == "Ready")


def test_a_ready_server_brings_its_served_name_its_token_secret_and_its_price() -> None:
    references = {("ModelServer", "srv"): server("srv", gpus=2, replicas=3, auth=True)}
    endpoint, _ = ready_server("srv", references, SETTINGS, "TeacherReady")
    assert endpoint is not None
    assert (endpoint.url, endpoint.served_model_name) == ("http://srv.ns.svc:8000/v1", "srv")
    assert endpoint.api_key_secret_ref == SecretKeyRef(name="srv-token", key="token")
    assert endpoint.hourly_usd == pytest.approx(3 * 2 * 0.5)


def test_servers_are_priced_once_each_and_a_missing_one_costs_nothing() -> None:
    references = {("ModelServer", "a"): server("a", gpus=1, replicas=2), ("ModelServer", "b"): server("b", gpus=4)}
    assert servers_hourly_usd(["a", "b", "a", "gone"], references, SETTINGS) == pytest.approx(2 * 0.5 + 4 * 0.5)
    assert servers_hourly_usd([], references, SETTINGS) == 0.0


@pytest.mark.parametrize(
    ("url", "key", "server_name", "refused"),
    [
        ("http://169.254.169.254/v1", SecretKeyRef(name="k", key="k"), None, True),
        ("http://169.254.169.254/v1", None, None, False),  # no key to leak
        ("http://169.254.169.254/v1", SecretKeyRef(name="k", key="k"), "srv", False),  # an in-cluster server's own token
        ("https://api.example.com/v1", SecretKeyRef(name="k", key="k"), None, False),
    ],
)
def test_a_key_goes_only_where_the_operator_allows(url: str, key: SecretKeyRef | None, server_name: str | None, refused: bool) -> None:
    endpoint = EndpointTarget(url, "m", TokenPricing(), key, server_name)
    assert (key_refusal(endpoint, SETTINGS) is not None) == refused
