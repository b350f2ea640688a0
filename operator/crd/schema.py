"""pydantic model -> structural OpenAPI v3 schema, as the Kubernetes API server wants it.

No maintained library does this. Pydantic's JSON Schema differs from a structural schema in a few
known ways, each handled here: `$ref`/`$defs` are inlined; `anyOf: [X, null]` becomes X with
`nullable: true`; `const` becomes a one-value `enum`; numeric `exclusiveMinimum: N` becomes
`minimum: N, exclusiveMinimum: true`; `title`s, `default: null` and `additionalProperties: false`
beside `properties` go; and `dict[str, Any]` becomes `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

JsonSchema = dict[str, Any]

_DROPPED_KEYS = {"title", "examples", "$schema"}


class _KubernetesJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, with the tweaks that are easiest at generation time."""

    def field_title_should_be_set(self, schema: Any) -> bool:  # noqa: ARG002 - pydantic's signature
        return False

    def default_schema(self, schema: Any) -> JsonSchema:
        # Pydantic leaves default_factory values out of the schema. The API server only fills in
        # nested defaults when the parent object exists, so nested models need their own default
        # for `kubectl get -o yaml` to show every effective value.
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            schema = {key: value for key, value in schema.items() if key != "default_factory"}
            schema["default"] = factory()
        return super().default_schema(schema)


def model_schema(model: type[BaseModel]) -> JsonSchema:
    """The structural schema of a model, by alias (camelCase), in validation mode."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_KubernetesJsonSchema)
    defs = raw.pop("$defs", {})
    return _structural(raw, defs)


def _resolve(ref: str, defs: dict[str, JsonSchema]) -> JsonSchema:
    name = ref.removeprefix("#/$defs/")
    if name not in defs:
        raise ValueError(f"unresolvable $ref {ref!r}")
    return copy.deepcopy(defs[name])


def _structural(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    node = dict(node)
    if "$ref" in node:
        # Keys beside a $ref (description, default, CEL rules of the field) win over the target's.
        target = _resolve(node.pop("$ref"), defs)
        node = _merge_field_into_target(target, node)
    if "allOf" in node and len(node["allOf"]) == 1:
        only = node.pop("allOf")[0]
        node = _merge_field_into_target(_structural(only, defs), node)

    nullable = False
    for key in ("anyOf", "oneOf"):
        if key not in node:
            continue
        options = node.pop(key)
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) < len(options)
        if len(non_null) != 1:
            raise ValueError(f"a union of several types cannot be structural: {options!r}")
        node = _merge_field_into_target(_structural(non_null[0], defs), node)

    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default":
            if value is not None:
                out["default"] = _without_nulls(value)
            continue
        if key == "const":
            out["enum"] = [value]
            if "type" not in node:
                out["type"] = _json_type(value)
            continue
        if key == "properties":
            out["properties"] = {name: _structural(sub, defs) for name, sub in value.items()}
            continue
        if key == "items":
            if isinstance(value, list):
                raise ValueError("tuples cannot be structural")
            out["items"] = _structural(value, defs)
            continue
        if key == "additionalProperties":
            if value is False:
                continue
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
                continue
            out["additionalProperties"] = _structural(value, defs)
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
            continue
        if key == "prefixItems":
            raise ValueError("tuples cannot be structural")
        out[key] = value

    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in out and "enum" in out:
        out["type"] = _json_type(out["enum"][0])
    if nullable:
        out["nullable"] = True
    return out


def _without_nulls(value: Any) -> Any:
    # A null in a default would be stored, and `has()` in CEL rules would see the field as set.
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _merge_field_into_target(target: JsonSchema, field: JsonSchema) -> JsonSchema:
    merged = dict(target)
    for key, value in field.items():
        if key == "x-kubernetes-validations":
            merged[key] = [*target.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise ValueError(f"no OpenAPI type for {value!r}")
