"""The generated schemas are structural and bounded, as the API server requires."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from alpaca_operator.api.kinds import KINDS
from alpaca_operator.crd.generate import crd
from alpaca_operator.crd.schema import model_schema

FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const", "prefixItems"}


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


SCHEMAS = {f"{k.kind}.{part}": model_schema(getattr(k, part)) for k in KINDS for part in ("spec", "status")}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_structural(name: str) -> None:
    for path, node in _nodes(SCHEMAS[name]):
        assert not FORBIDDEN & node.keys(), f"{name}{path} has {FORBIDDEN & node.keys()}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{name}{path} has no type"
        assert node.get("additionalProperties") is not False, f"{name}{path}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node
        assert node.get("default", 0) is not None


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_lists_and_strings_are_bounded_for_cel(name: str) -> None:
    for path, node in _nodes(SCHEMAS[name]):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{name}{path} needs maxItems"
        if node.get("type") == "string" and ".status" not in name:
            assert "maxLength" in node or "enum" in node, f"{name}{path} needs maxLength"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_spec_field_is_described(kind: Any) -> None:
    for path, node in _nodes(model_schema(kind.spec)):
        if path and not path.endswith("[]") and not path.endswith("}"):
            assert node.get("description"), f"{kind.kind}.spec{path} needs a description for kubectl explain"


def test_optional_fields_are_nullable_and_dicts_of_any_keep_unknown_fields() -> None:
    spec = SCHEMAS["FineTune.spec"]
    assert spec["properties"]["budgetUSD"]["nullable"] is True
    affinity = spec["properties"]["placement"]["properties"]["affinity"]
    assert affinity["x-kubernetes-preserve-unknown-fields"] is True


def test_nested_defaults_are_materialised() -> None:
    spec = SCHEMAS["FineTune.spec"]
    assert spec["properties"]["hyperparameters"]["default"]["learningRate"] == 2e-5
    assert spec["properties"]["baseModel"]["default"] == {"builtin": "smollm2-135m-instruct"}


def test_conditions_are_a_map_keyed_by_type() -> None:
    conditions = SCHEMAS["FineTune.status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_presentation(kind: Any) -> None:
    document = crd(kind)
    names = document["spec"]["names"]
    assert names["shortNames"] and names["categories"] == ["alpaca"]
    version = document["spec"]["versions"][0]
    assert version["subresources"]["status"] == {}
    if kind.kind == "ModelServer":
        # kubectl scale and HPAs: the count in spec.replicas, the pods' selector string in status.
        assert version["subresources"]["scale"] == {
            "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas", "labelSelectorPath": ".status.selector",
        }
    else:
        assert set(version["subresources"]) == {"status"}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Ready", "Cost", "Age"} <= columns
