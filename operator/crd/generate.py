"""The CustomResourceDefinitions, generated from the API models."""

from __future__ import annotations

from typing import Any

import yaml

from ..api.base import GROUP, VERSION
from ..api.kinds import EVALUATION, FINE_TUNE, INSTRUCT_DATASET, KINDS, MODEL_SERVER, Kind
from .schema import model_schema

CATEGORY = "alpaca"


def _column(name: str, json_path: str, type_: str = "string", *, priority: int = 0, description: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": json_path}
    if description:
        column["description"] = description
    if priority:
        column["priority"] = priority
    return column


_PHASE = _column("Phase", ".status.phase", description="Lifecycle phase (conditions carry the detail).")
_READY = _column("Ready", '.status.conditions[?(@.type=="Ready")].status', description="The Ready condition.")
_COST = _column("Cost", ".status.costUSD", "number", description="Cost so far in US dollars.")
_AGE = _column("Age", ".metadata.creationTimestamp", "date")

PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    INSTRUCT_DATASET.kind: [
        _PHASE,
        _READY,
        _column("Kept", ".status.progress.kept", "integer", description="Examples kept so far."),
        _column("Target", ".spec.generation.numExamples", "integer", description="Examples asked for."),
        _COST,
        _AGE,
        _column("Teacher", ".status.teacherURL", priority=1),
        _column("Dataset", ".status.dataset.uri", priority=1),
    ],
    FINE_TUNE.kind: [
        _PHASE,
        _READY,
        _column("Step", ".status.progress.step", "integer", description="Optimizer steps done."),
        _column("Loss", ".status.progress.loss", "number", description="Latest training loss."),
        _COST,
        _AGE,
        _column("Epoch", ".status.progress.epoch", "number", priority=1),
        _column("GPU-Hours", ".status.gpuHours", "number", priority=1),
        _column("Model", ".status.model.uri", priority=1),
    ],
    MODEL_SERVER.kind: [
        _PHASE,
        _READY,
        _column("URL", ".status.url", description="In-cluster base URL of the OpenAI-compatible API."),
        _column("Replicas", ".status.readyReplicas", "integer", description="Ready replicas."),
        _COST,
        _AGE,
        _column("Runtime", ".spec.runtime", priority=1),
        _column("Model", ".status.model.uri", priority=1),
    ],
    EVALUATION.kind: [
        _PHASE,
        _READY,
        _column("Win rate", ".status.score.winRate", "number", description="The candidate's wins plus half its ties, over judged tasks."),
        _COST,
        _AGE,
        _column("Low", ".status.score.winRateLow", "number", priority=1, description="Lower end of the 95% interval."),
        _column("High", ".status.score.winRateHigh", "number", priority=1, description="Upper end of the 95% interval."),
        _column("Judged", ".status.progress.judged", "integer", priority=1),
        _column("Report", ".status.report.uri", priority=1),
    ],
}


# A ModelServer scales like a Deployment: `kubectl scale ms`, and an HPA can target it (it reads
# the pods' selector from status.selector, a string, and the count from status.replicas).
SUBRESOURCES: dict[str, dict[str, Any]] = {
    MODEL_SERVER.kind: {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    },
}


def crd(kind: Kind) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of one kind."""
    spec_schema = model_schema(kind.spec)
    status_schema = model_schema(kind.status)
    description = spec_schema.pop("description", "")
    status_schema.pop("description", None)
    spec_schema["description"] = "What the user declares."
    status_schema["description"] = "What the operator observed; written only by the operator and its workloads."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "alpaca-operator", "app.kubernetes.io/part-of": "alpaca-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": SUBRESOURCES.get(kind.kind, {"status": {}}),
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind.kind],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]


def crd_file_name(kind: Kind) -> str:
    return f"{GROUP}_{kind.plural}.yaml"


def render(document: dict[str, Any]) -> str:
    """YAML as committed under crds/: stable key order, wide lines, no aliases."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:  # noqa: ARG002 - PyYAML's signature
            return True

    return yaml.dump(document, Dumper=_NoAliases, sort_keys=False, width=120, allow_unicode=True)


def render_all() -> dict[str, str]:
    """File name -> YAML of every CRD."""
    return {crd_file_name(kind): render(crd(kind)) for kind in KINDS}
