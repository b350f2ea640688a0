"""Local mode's EvaluateConfig: the builder's own function, with servers that earlier steps started."""

from __future__ import annotations

from ..api.evaluation import EvaluationSpec
from ..api.workloads import EvaluateConfig
from ..builders import evaluation
from ..builders.common import Parent
from ..manifests import Manifest, ManifestError
from ..settings import OperatorSettings
from .inputs import LOCAL_NAMESPACE, Outputs, running_server, where
from .layout import Layout

REPORT_FILE = "summary.json"


def evaluate_config(
    manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs], settings: OperatorSettings | None = None
) -> EvaluateConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, EvaluationSpec)
    servers = {ref.name: running_server(ref.name, upstream) for _, ref in evaluation.server_refs(spec)}
    try:
        resolved = evaluation.resolve(spec, settings or OperatorSettings(), servers)
        return evaluation.evaluate_config(Parent(manifest.name, LOCAL_NAMESPACE, "evaluations"), spec, resolved, where(layout))
    except evaluation.Unresolved as exc:
        field_name = str(exc).split(":", 1)[0]
        raise ManifestError(manifest.source, f"Evaluation {manifest.name!r}", [f"spec.{field_name}: {str(exc).split(': ', 1)[-1]}"]) from None
