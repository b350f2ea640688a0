"""Deterministic names and labels of the objects the operator creates.

A child's name is a pure function of its parent's name, so a handler that runs again after a
restart finds the object it already made (409) instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json

MANAGED_BY = "alpaca-operator"
PART_OF = "alpaca-operator"

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"

# The generation of the parent a child was built from, and a digest of what was built: together
# they tell whether a spec edit reached the child.
GENERATION_ANNOTATION = "alpaca.dev/parent-generation"
SPEC_HASH_ANNOTATION = "alpaca.dev/spec-hash"

# Labels and most names (Jobs, Services) must be DNS-1123 labels: 63 characters.
MAX_LABEL = 63

GENERATE = "generate"
TRAIN = "train"
SERVE = "serve"
WORKLOAD = "workload"


def child_name(parent: str, suffix: str, max_length: int = MAX_LABEL) -> str:
    """`<parent>-<suffix>`, shortened with a digest of the full name when it would be too long."""
    full = f"{parent}-{suffix}"
    if len(full) <= max_length:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    keep = max_length - len(suffix) - len(digest) - 2
    return f"{parent[:keep].rstrip('-.')}-{digest}-{suffix}"


def labels(parent: str, component: str) -> dict[str, str]:
    """The `app.kubernetes.io/*` labels of every child; instance + component identify the parent."""
    return {
        NAME: f"alpaca-{component}",
        INSTANCE: label_value(parent),
        COMPONENT: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        PART_OF_LABEL: PART_OF,
    }


def selector(parent: str, component: str) -> dict[str, str]:
    """The labels that select a parent's pods (a subset of labels(), stable across versions)."""
    return {INSTANCE: label_value(parent), COMPONENT: component, MANAGED_BY_LABEL: MANAGED_BY}


def label_value(value: str) -> str:
    """A label value (63 characters at most) that stays unique for long object names."""
    if len(value) <= MAX_LABEL:
        return value
    return f"{value[:54].rstrip('-.')}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


def spec_hash(manifest_part: object) -> str:
    """A short digest of a built object, compared on later reconciles to see if a spec edit applies."""
    return hashlib.sha256(json.dumps(manifest_part, sort_keys=True, default=str).encode()).hexdigest()[:16]
