"""The generated CRDs on a real API server: they install, accept valid manifests, and reject
invalid ones with a message that names the field, the same answers local validation gives."""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.rest import ApiException
from support.manifests import INVALID, VALID, Invalid

from alpaca_operator.api.kinds import BY_KIND, KINDS

pytestmark = pytest.mark.integration


def _create(api_client: kubernetes.client.ApiClient, namespace: str, document: dict[str, Any]) -> dict[str, Any]:
    kind = BY_KIND[document["kind"]]
    return kubernetes.client.CustomObjectsApi(api_client).create_namespaced_custom_object(
        "alpaca.dev", "v1alpha1", namespace, kind.plural, document
    )


def test_crds_are_established(api_client: kubernetes.client.ApiClient, crds: list[str]) -> None:
    api = kubernetes.client.ApiextensionsV1Api(api_client)
    assert {f"{k.plural}.alpaca.dev" for k in KINDS} <= set(crds)
    for name in crds:
        conditions = {c.type: c.status for c in api.read_custom_resource_definition(name).status.conditions}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"


@pytest.mark.parametrize("kind", sorted(VALID))
def test_valid_manifest_is_accepted_and_defaulted(
    api_client: kubernetes.client.ApiClient, crds: list[str], namespace: str, kind: str
) -> None:
    created = _create(api_client, namespace, VALID[kind]())
    spec = created["spec"]
    if kind == "FineTune":
        # Alpaca's recipe filled in by the API server, beside what the manifest said.
        assert spec["hyperparameters"]["learningRate"] == 2e-5
        assert spec["hyperparameters"]["globalBatchSize"] == 128
        assert spec["hyperparameters"]["microBatchSize"] == 4
    if kind == "InstructDataset":
        assert spec["generation"]["seedTasksPerPrompt"] == 3
        assert spec["filters"]["rougeLThreshold"] == 0.7
    if kind == "ModelServer":
        assert spec["replicas"] == 1


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_naming_the_field(
    api_client: kubernetes.client.ApiClient, crds: list[str], namespace: str, case: Invalid
) -> None:
    with pytest.raises(ApiException) as raised:
        _create(api_client, namespace, case.manifest())
    assert raised.value.status == 422, raised.value.body
    message = json.loads(raised.value.body)["message"]
    assert case.field in message, message


def test_immutable_fields_cannot_change(api_client: kubernetes.client.ApiClient, crds: list[str], namespace: str) -> None:
    _create(api_client, namespace, VALID["FineTune"]())
    api = kubernetes.client.CustomObjectsApi(api_client)
    with pytest.raises(ApiException) as raised:
        api.patch_namespaced_custom_object(
            "alpaca.dev", "v1alpha1", namespace, "finetunes", "alpaca-7b",
            {"spec": {"baseModel": {"uri": "s3://models/other"}}},
        )
    assert raised.value.status == 422
    assert "baseModel is immutable" in json.loads(raised.value.body)["message"]
    # Fields meant to change later (the budget, say) still can.
    patched = api.patch_namespaced_custom_object(
        "alpaca.dev", "v1alpha1", namespace, "finetunes", "alpaca-7b", {"spec": {"budgetUSD": 50}}
    )
    assert patched["spec"]["budgetUSD"] == 50


def test_status_is_a_subresource(api_client: kubernetes.client.ApiClient, crds: list[str], namespace: str) -> None:
    created = _create(api_client, namespace, VALID["InstructDataset"]() | {"status": {"phase": "Succeeded"}})
    assert "status" not in created or created["status"].get("phase") != "Succeeded"
    api = kubernetes.client.CustomObjectsApi(api_client)
    patched = api.patch_namespaced_custom_object_status(
        "alpaca.dev", "v1alpha1", namespace, "instructdatasets", "alpaca-data",
        {"status": {"phase": "Running", "progress": {"kept": 7}, "notAField": 1}},
    )
    assert patched["status"]["phase"] == "Running"
    assert patched["status"]["progress"]["kept"] == 7
    assert "notAField" not in patched["status"]
