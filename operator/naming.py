"""Deterministic names and labels of the objects the operator creates.

A child's name is a pure function of its parent's name, so a handler that runs again after a
restart finds the object it already made (409) instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
import re

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
# Kubeflow's training operator names one Service per replica `<job>-<type>-<index>` (master-0,
# worker-0 ... worker-510 for the 512 nodes a FineTune may ask for), and those are DNS-1035 labels.
LONGEST_REPLICA_SUFFIX = len("-worker-510")
MAX_PYTORCHJOB = MAX_LABEL - LONGEST_REPLICA_SUFFIX

GENERATE = "generate"
TRAIN = "train"
SERVE = "serve"
EVALUATE = "evaluate"
WORKLOAD = "workload"

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def is_dns_1035(name: str, max_length: int = MAX_LABEL) -> bool:
    return len(name) <= max_length and bool(_DNS_1035.match(name))


def child_name(parent: str, suffix: str, max_length: int = MAX_LABEL) -> str:
    """`<parent>-<suffix>` when that is a DNS-1035 label that fits; else a stable, valid stand-in.

    Every child kind accepts a DNS-1035 label (Services, Jobs, the training operator's job names
    and per-replica Services), so every child gets one. A parent name that starts with a digit or
    holds dots, or a name that would be too long, becomes `<suffix>-<cleaned parent>-<digest>`:
    it starts with a letter, and the digest of the full parent name keeps names of different
    parents apart.
    """
    full = f"{parent}-{suffix}"
    if is_dns_1035(full, max_length):
        return full
    digest = hashlib.sha256(parent.encode()).hexdigest()[:8]
    cleaned = re.sub(r"[^a-z0-9-]+", "-", parent.lower()).strip("-")
    keep = max_length - len(suffix) - len(digest) - 2
    stem = cleaned[:keep].strip("-")
    return f"{suffix}-{stem}-{digest}" if stem else f"{suffix}-{digest}"


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
