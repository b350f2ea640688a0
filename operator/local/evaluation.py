"""Local mode's EvaluateConfig: the builder's own function, with servers that earlier steps started."""

from __future__ import annotations

from ..api.common import SecretKeyRef
from ..api.evaluation import EvaluationSpec
from ..api.workloads import EvaluateConfig
from ..builders import evaluation
from ..builders.common import Parent
from ..builders.inputs import TeacherServer
from ..manifests import Manifest, ManifestError
from ..settings import OperatorSettings
from .inputs import LOCAL_NAMESPACE, Outputs, where
from .layout import Layout

REPORT_FILE = "summary.json"


def evaluate_config(
    manifest: Manifest, layout: Layout, upstream: dict[tuple[str, str], Outputs], settings: OperatorSettings | None = None
) -> EvaluateConfig:
    spec = manifest.resource.spec
    assert isinstance(spec, EvaluationSpec)
    servers: dict[str, TeacherServer] = {}
    for _, ref in evaluation.server_refs(spec):
        running = upstream[("ModelServer", ref.name)]
        assert running.url and running.served_model_name
        auth = SecretKeyRef(name=running.api_key_secret[0], key=running.api_key_secret[1]) if running.api_key_secret else None
        servers[ref.name] = TeacherServer(name=ref.name, url=running.url, served_model_name=running.served_model_name, api_key_secret_ref=auth)
    try:
        resolved = evaluation.resolve(spec, settings or OperatorSettings(), servers)
        return evaluation.evaluate_config(Parent(manifest.name, LOCAL_NAMESPACE, "evaluations"), spec, resolved, where(layout))
    except evaluation.Unresolved as exc:
        field_name = str(exc).split(":", 1)[0]
        raise ManifestError(manifest.source, f"Evaluation {manifest.name!r}", [f"spec.{field_name}: {str(exc).split(': ', 1)[-1]}"]) from None
