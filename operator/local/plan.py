"""Order manifests by their references, as the operator's waits would, for running them locally."""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter

from ..api import EvaluationSpec, FineTuneSpec, InstructDatasetSpec, ModelServerSpec
from ..manifests import Manifest, ManifestError


@dataclass(frozen=True)
class Step:
    manifest: Manifest
    # (kind, name) of the resources this one needs finished (or Ready, for servers) first.
    needs: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        return (self.manifest.kind, self.manifest.name)

    @property
    def title(self) -> str:
        return f"{self.manifest.kind} {self.manifest.name}"


def references(manifest: Manifest) -> list[tuple[str, str, str]]:
    """(field path, kind, name) of every alpaca.dev resource a manifest refers to."""
    spec = manifest.resource.spec
    found: list[tuple[str, str, str]] = []
    if isinstance(spec, InstructDatasetSpec) and spec.teacher.model_server_ref:
        found.append(("spec.teacher.modelServerRef", "ModelServer", spec.teacher.model_server_ref.name))
    if isinstance(spec, FineTuneSpec) and spec.dataset.instruct_dataset_ref:
        found.append(("spec.dataset.instructDatasetRef", "InstructDataset", spec.dataset.instruct_dataset_ref.name))
    if isinstance(spec, ModelServerSpec) and spec.model.fine_tune_ref:
        found.append(("spec.model.fineTuneRef", "FineTune", spec.model.fine_tune_ref.name))
    if isinstance(spec, ModelServerSpec):
        found.extend((f"spec.adapters[{i}].fineTuneRef", "FineTune", a.fine_tune_ref.name) for i, a in enumerate(spec.adapters))
    if isinstance(spec, EvaluationSpec):
        for role in ("candidate", "baseline", "judge"):
            if (ref := getattr(spec, role).model_server_ref) is not None:
                found.append((f"spec.{role}.modelServerRef", "ModelServer", ref.name))
    return found


def plan(manifests: list[Manifest]) -> list[Step]:
    """Steps in an order where every reference comes before what refers to it.

    A reference to a resource that is not among the manifests is an error here, where the
    operator would wait: locally nothing else will ever create it.
    """
    by_key = {(m.kind, m.name): m for m in manifests}
    graph: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for manifest in manifests:
        needs: set[tuple[str, str]] = set()
        for path, kind, name in references(manifest):
            if (kind, name) not in by_key:
                raise ManifestError(
                    manifest.source, f"{manifest.kind} {manifest.name!r}",
                    [f"{path}.name: no {kind} named {name!r} among the manifests given"],
                )
            needs.add((kind, name))
        graph[(manifest.kind, manifest.name)] = needs
    try:
        # Ties keep the order the manifests were given in, so plans are stable run to run.
        sorter = TopologicalSorter(graph)
        sorter.prepare()
        order: list[tuple[str, str]] = []
        position = {key: index for index, key in enumerate(graph)}
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=position.__getitem__)
            order.extend(ready)
            sorter.done(*ready)
    except CycleError as exc:
        cycle = " -> ".join(f"{kind} {name}" for kind, name in exc.args[1])
        raise ManifestError("manifests", "the references", [f"form a cycle: {cycle}"]) from None
    return [Step(by_key[key], tuple(sorted(graph[key]))) for key in order]
