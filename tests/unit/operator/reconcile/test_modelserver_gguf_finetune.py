"""A llama-cpp ModelServer serving a FineTune: accepted, pointing llama-server at the model.gguf its
spec.export.gguf made training write; refused, naming that field, when the FineTune exports none
(before it even finishes: spec.export is immutable); other runtimes keep serving the folder."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from alpaca_operator.reconcile import modelserver
from alpaca_operator.settings import OperatorSettings

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
SETTINGS = OperatorSettings()
DIGEST = "d" * 64
RESULT = {"artifact": {"uri": "pvc://models/tuned", "sha256": DIGEST}, "sizeBytes": 10, "finishedAt": "2026-01-01T11:00:00Z"}


def body(kind: str, spec: dict[str, Any], status: dict[str, Any] | None = None, name: str = "x") -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": kind, "spec": spec, "status": status or {},
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1}}


def tuned(export: dict[str, Any] | None, status: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    spec: dict[str, Any] = {"dataset": {"uri": "s3://b/d.jsonl"}, "output": {"pvc": {"claimName": "models", "subPath": "tuned"}}}
    if export is not None:
        spec["export"] = export
    return {("FineTune", "t"): body("FineTune", spec, status, name="t")}


SERVER = {"model": {"fineTuneRef": {"name": "t"}}, "runtime": "llama-cpp"}
DONE = {"phase": "Succeeded", "result": RESULT}


def command(plan: Any) -> list[str]:
    deployment = next(c for c in plan.children if c["kind"] == "Deployment")
    return deployment["spec"]["template"]["spec"]["containers"][0]["command"]


def ready(plan: Any) -> tuple[str, str, str]:
    condition = next(c for c in plan.status.conditions if c.type == "Ready")
    return condition.status, condition.reason, condition.message


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0"])
def test_a_finetune_that_exports_gguf_is_served_from_its_model_gguf(kind: str) -> None:
    plan = modelserver.reconcile(body("ModelServer", SERVER), None, tuned({"gguf": kind}, DONE), SETTINGS, NOW)
    args = command(plan)
    assert args[0] == "llama-server"
    gguf = args[args.index("--model") + 1]
    # The FineTune's PVC output is mounted where the pod reads models; the file sits in that folder.
    deployment = next(c for c in plan.children if c["kind"] == "Deployment")
    mounts = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(gguf == f"{m['mountPath'].rstrip('/')}/model.gguf" for m in mounts), (gguf, mounts)
    assert plan.status.fields.get("phase") != "Failed"


@pytest.mark.parametrize("status", [{"phase": "Running"}, DONE])
def test_a_finetune_without_a_gguf_export_is_refused_naming_the_field(status: dict[str, Any]) -> None:
    plan = modelserver.reconcile(body("ModelServer", SERVER), None, tuned(None, status), SETTINGS, NOW)
    assert plan.children == []
    state, reason, message = ready(plan)
    assert (state, reason) == ("False", "InvalidSpec")
    assert "spec.export.gguf" in message and "'t'" in message and "llama-cpp" in message


def test_a_finetune_still_training_with_an_export_is_waited_for() -> None:
    plan = modelserver.reconcile(body("ModelServer", SERVER), None, tuned({"gguf": "f16"}, {"phase": "Running"}), SETTINGS, NOW)
    assert plan.children == [] and plan.status.fields.get("phase") != "Failed"


def test_other_runtimes_serve_the_folder_whether_or_not_it_exports() -> None:
    plan = modelserver.reconcile(body("ModelServer", {"model": {"fineTuneRef": {"name": "t"}}}), None,
                                 tuned({"gguf": "f16"}, DONE), SETTINGS, NOW)
    config = next(c for c in plan.children if c["kind"] == "ConfigMap")
    assert "model.gguf" not in str(config["data"]) and command(plan)[:2] == ["alpaca", "serve"]
