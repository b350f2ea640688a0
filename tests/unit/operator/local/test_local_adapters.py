"""Local mode serves a ModelServer's adapters from their FineTunes' folders, after those FineTunes ran."""

from __future__ import annotations

from pathlib import Path

from alpaca_operator.local.inputs import Outputs, serve_config
from alpaca_operator.local.layout import Layout
from alpaca_operator.local.plan import references
from alpaca_operator.manifests import parse

SERVER = {
    "apiVersion": "alpaca.dev/v1alpha1", "kind": "ModelServer", "metadata": {"name": "multi"},
    "spec": {"model": {"source": {"builtin": "smollm2-135m-instruct"}},
             "adapters": [{"name": "french", "fineTuneRef": {"name": "fr"}}, {"name": "german", "fineTuneRef": {"name": "de"}}]},
}


def test_adapter_finetunes_come_first_and_their_adapter_folders_are_served(tmp_path: Path) -> None:
    manifest = parse("s.yaml", SERVER)
    assert [(kind, name) for _, kind, name in references(manifest)] == [("FineTune", "fr"), ("FineTune", "de")]
    upstream = {("FineTune", "fr"): Outputs(location=str(tmp_path / "fr")), ("FineTune", "de"): Outputs(location=str(tmp_path / "de"))}
    config = serve_config(manifest, Layout(tmp_path), upstream, 8123)
    assert [(a.name, a.location) for a in config.adapters] == [
        ("french", str(tmp_path / "fr" / "adapter")), ("german", str(tmp_path / "de" / "adapter"))]
