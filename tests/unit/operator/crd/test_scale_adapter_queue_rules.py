"""The ModelServer's autoscaling, adapter and queue rules, as local mode and admission apply them."""

from __future__ import annotations

from typing import Any

import pytest

from alpaca_operator.manifests import ManifestError, parse

BASE = {"model": {"source": {"uri": "s3://models/base"}}}


def server(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": "s"}, "spec": {**BASE, **spec}}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}}, "needs resources.cpu"),
        ({"model": {"fineTuneRef": {"name": "t"}}, "adapters": [{"name": "a", "fineTuneRef": {"name": "u"}}]}, "adapters need model.source"),
        ({"runtime": "llama-cpp", "model": {"source": {"builtin": "smollm2-135m-instruct"}},
          "adapters": [{"name": "a", "fineTuneRef": {"name": "u"}}]}, "llama-cpp does not serve adapters"),
        ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2, "podsMetric": {"name": "m", "averageValue": "1"}}}, "minReplicas"),
        ({"autoscaling": {"maxReplicas": 2, "podsMetric": {"name": "queue depth", "averageValue": "1"}}}, "podsMetric.name"),
        ({"autoscaling": {"maxReplicas": 2, "podsMetric": {"name": "m", "averageValue": "four"}}}, "averageValue"),
        ({"queue": {"name": "not a label"}}, "queue.name"),
    ],
)
def test_refused_with_the_reason(spec: dict[str, Any], words: str) -> None:
    with pytest.raises(ManifestError, match=words):
        parse("s.yaml", server(**spec))


def test_the_documented_forms_pass() -> None:
    parse("s.yaml", server(resources={"cpu": "4"}, autoscaling={
        "minReplicas": 1, "maxReplicas": 4, "targetCPUUtilizationPercentage": 70,
        "podsMetric": {"name": "alpaca_serve_queue_depth", "averageValue": "4"}, "scaleDownStabilizationSeconds": 120}))
    parse("s.yaml", server(adapters=[{"name": "french", "fineTuneRef": {"name": "fr"}}, {"name": "german", "fineTuneRef": {"name": "de"}}],
                           queue={"name": "serving", "priorityClass": "high"}))
