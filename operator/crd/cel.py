"""Evaluate a CRD's CEL rules outside the cluster, so local mode rejects what the API server rejects.

The rules are written once, in the API models, and travel in the CRD schema; this walks the schema
beside an object and evaluates every `x-kubernetes-validations` rule with cel-python. Transition
rules (those that read `oldSelf`) only mean something on update and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import celpy

from .schema import JsonSchema


@dataclass(frozen=True)
class RuleViolation:
    path: str
    message: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@lru_cache(maxsize=256)
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def violations(schema: JsonSchema, value: Any, path: str = "spec") -> list[RuleViolation]:
    """Every CEL rule of `schema` (recursively) that `value` breaks, with the path of the field."""
    found: list[RuleViolation] = []
    if value is None:
        return found
    for entry in schema.get("x-kubernetes-validations", []):
        rule = entry["rule"]
        if "oldSelf" in rule:
            continue
        if not _holds(rule, value):
            where = path + entry.get("fieldPath", "")
            found.append(RuleViolation(where, entry.get("message", f"failed rule: {rule}"), rule))
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                found.extend(violations(sub, value[name], f"{path}.{name}"))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, sub_value in value.items():
                found.extend(violations(extra, sub_value, f"{path}[{name}]"))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found.extend(violations(schema["items"], item, f"{path}[{index}]"))
    return found


def _holds(rule: str, value: Any) -> bool:
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, Exception):
        # An evaluation error fails validation on the API server too.
        return False
    return bool(result)
