"""Upstream outputs on a claim, reported by their public name: consumers mount them and pin that
name; one reported outside the upstream's output is a condition saying so, never a crash."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from alpaca_operator.reconcile import Plan, finetune, modelserver
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings()
UID = "uid-1"
DIGEST = "d" * 64
BASE = {"builtin": "smollm2-135m-instruct"}
DATA_SPEC = {"teacher": {"baseURL": "https://api.example.com/v1", "model": "m"},
             "output": {"pvc": {"claimName": "alpaca", "subPath": "quickstart/dataset"}}}
TUNE_SPEC = {"baseModel": BASE, "method": "lora", "dataset": {"instructDatasetRef": {"name": "data"}}, "gpus": {"perNode": 0},
             "output": {"pvc": {"claimName": "alpaca", "subPath": "quickstart/model"}}}


def body(kind: str, spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": kind, "spec": spec, "status": status or {},
            "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1}}


def succeeded(kind: str, spec: dict[str, Any], uri: str, name: str) -> dict[tuple[str, str], dict[str, Any]]:
    result = {"artifact": {"uri": uri, "sha256": DIGEST}, "sizeBytes": 10, "finishedAt": "2026-01-01T11:00:00Z"}
    return {(kind, name): body(kind, spec, {"phase": "Succeeded", "result": result}, name=name)}


def condition(plan: Plan, type_: str) -> tuple[str, str, str]:
    found = next(c for c in plan.status.conditions if c.type == type_)
    return found.status, found.reason, found.message


def config(plan: Plan) -> dict[str, Any]:
    return json.loads(plan.children[0]["data"]["config.json"])


@pytest.mark.parametrize("reported", ["pvc://alpaca/quickstart/dataset/dataset.jsonl", "/var/lib/alpaca/output/dataset.jsonl"])
def test_finetune_trains_on_the_claim_and_pins_the_public_name(reported: str) -> None:
    plan = finetune.reconcile(body("FineTune", TUNE_SPEC), None, succeeded("InstructDataset", DATA_SPEC, reported, "data"), SETTINGS, NOW)
    assert plan.status.fields["dataset"] == {"uri": "pvc://alpaca/quickstart/dataset/dataset.jsonl", "sha256": DIGEST}
    assert config(plan)["dataset"] == "/var/lib/alpaca/dataset/dataset.jsonl"
    assert config(plan)["outputURI"] == "pvc://alpaca/quickstart/model"


def test_finetune_says_why_it_cannot_reach_a_dataset_reported_on_another_claim() -> None:
    references = succeeded("InstructDataset", DATA_SPEC, "pvc://scratch/quickstart/dataset/dataset.jsonl", "data")
    plan = finetune.reconcile(body("FineTune", TUNE_SPEC), None, references, SETTINGS, NOW)
    assert plan.children == []
    status, reason, message = condition(plan, "DatasetReady")
    assert (status, reason) == ("False", "UnreachableArtifact")
    assert "pvc://scratch/quickstart/dataset/dataset.jsonl" in message and "pvc://alpaca/quickstart/dataset" in message
    assert plan.status.fields.get("phase") != "Failed", "the upstream may yet report a reachable artifact"


@pytest.mark.parametrize("reported", ["pvc://alpaca/quickstart/model", "/var/lib/alpaca/output"])
def test_modelserver_serves_the_claims_folder_and_pins_the_public_name(reported: str) -> None:
    references = succeeded("FineTune", TUNE_SPEC, reported, "tuned")
    plan = modelserver.reconcile(body("ModelServer", {"model": {"fineTuneRef": {"name": "tuned"}}}), None, references, SETTINGS, NOW)
    assert plan.status.fields["model"] == {"uri": "pvc://alpaca/quickstart/model", "sha256": DIGEST}
    assert config(plan)["model"]["location"] == "/var/lib/alpaca/model"


def test_modelserver_says_why_it_cannot_reach_a_model_reported_on_another_claim() -> None:
    references = succeeded("FineTune", TUNE_SPEC, "pvc://scratch/quickstart/model", "tuned")
    plan = modelserver.reconcile(body("ModelServer", {"model": {"fineTuneRef": {"name": "tuned"}}}), None, references, SETTINGS, NOW)
    assert plan.children == []
    assert condition(plan, "ModelReady")[:2] == ("False", "UnreachableArtifact")


def test_an_adapter_is_pinned_under_its_public_name_and_refused_on_another_claim() -> None:
    spec = {"model": {"source": BASE}, "adapters": [{"name": "french", "fineTuneRef": {"name": "fr"}}]}
    served = modelserver.reconcile(body("ModelServer", spec), None, succeeded("FineTune", TUNE_SPEC, "pvc://alpaca/quickstart/model", "fr"),
                                   SETTINGS, NOW)
    assert served.status.fields["adapters"] == [{"name": "french", "model": {"uri": "pvc://alpaca/quickstart/model/adapter"}}]
    refused = modelserver.reconcile(body("ModelServer", spec), None, succeeded("FineTune", TUNE_SPEC, "pvc://scratch/model", "fr"),
                                    SETTINGS, NOW)
    assert refused.children == []
    assert condition(refused, "Ready")[:2] == ("False", "AdapterRefused")
    assert "pvc://scratch/model" in refused.status.fields["message"]
