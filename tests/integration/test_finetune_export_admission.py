"""FineTune spec.export on the real API server: the GGUF types it takes, and no change once created
(training may already have run without the export, or with it)."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "alpaca.dev", "v1alpha1", "finetunes"


def tune(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTune", "metadata": {"name": name},
            "spec": {"dataset": {"uri": "s3://data/alpaca.jsonl"}, "output": {"uri": "s3://models/tuned"}, **spec}}


def refused(call: Any) -> str:
    with pytest.raises(ApiException) as raised:
        call()
    assert raised.value.status == 422
    return json.loads(raised.value.body)["message"]


def test_export_takes_the_gguf_types_and_never_changes(api_client: kubernetes.client.ApiClient, crds: list[str],
                                                       namespace: str) -> None:
    api = kubernetes.client.CustomObjectsApi(api_client)
    create = api.create_namespaced_custom_object
    created = create(GROUP, VERSION, namespace, PLURAL, tune("gguf", export={"gguf": "q8_0"}))
    assert created["spec"]["export"] == {"gguf": "q8_0"}
    assert "spec.export.gguf" in refused(lambda: create(GROUP, VERSION, namespace, PLURAL, tune("bad", export={"gguf": "q4_k"})))

    patch = api.patch_namespaced_custom_object
    assert "export is immutable" in refused(lambda: patch(GROUP, VERSION, namespace, PLURAL, "gguf", {"spec": {"export": {"gguf": "f16"}}}))
    assert "export is immutable" in refused(lambda: patch(GROUP, VERSION, namespace, PLURAL, "gguf", {"spec": {"export": None}}))
    create(GROUP, VERSION, namespace, PLURAL, tune("plain"))
    assert "export is immutable" in refused(lambda: patch(GROUP, VERSION, namespace, PLURAL, "plain", {"spec": {"export": {"gguf": "f32"}}}))
