"""Local mode runs Evaluations: after the servers they name, with the operator's own config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_operator.api.workloads import EvaluateConfig
from alpaca_operator.builders import evaluation as build
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import TeacherServer
from alpaca_operator.local.evaluation import evaluate_config
from alpaca_operator.local.inputs import Outputs
from alpaca_operator.local.layout import Layout
from alpaca_operator.local.plan import plan
from alpaca_operator.manifests import ManifestError, load, parse
from alpaca_operator.settings import OperatorSettings

QUICKSTART = Path(__file__).resolve().parents[4] / "examples" / "quickstart"


def test_the_quickstart_evaluation_runs_last_after_both_servers() -> None:
    steps = plan(load([QUICKSTART]))
    titles = [s.title for s in steps]
    assert titles[-1] == "Evaluation quickstart-eval"
    assert set(steps[-1].needs) == {("ModelServer", "quickstart-chat"), ("ModelServer", "teacher")}


def test_local_config_is_the_operators_with_local_answers(tmp_path: Path) -> None:
    """The same builder function: only the applier's answers (where, keys, reporting) differ."""
    manifest = next(m for m in load([QUICKSTART]) if m.kind == "Evaluation")
    spec = manifest.resource.spec
    cluster_servers = {name: TeacherServer(name, f"http://{name}.default.svc:8000/v1", name) for name in ("quickstart-chat", "teacher")}
    cluster = build.build(Parent(manifest.name, "default", "evaluations"), spec, OperatorSettings(), build.resolve(spec, OperatorSettings(), cluster_servers))
    cluster_config = EvaluateConfig.model_validate(json.loads(cluster[0]["data"]["config.json"]))
    upstream = {("ModelServer", name): Outputs(url=f"http://127.0.0.1:{port}/v1", served_model_name=name)
                for name, port in (("quickstart-chat", 9001), ("teacher", 9002))}
    local = evaluate_config(manifest, Layout(tmp_path), upstream)
    assert local.output == str(tmp_path / "pvc" / "alpaca" / "quickstart" / "evaluation")
    assert local.status_target is None and cluster_config.status_target is not None
    assert local.candidate.endpoint and local.candidate.endpoint.url == "http://127.0.0.1:9001/v1"
    assert local.judge.url == local.baseline.endpoint.url == "http://127.0.0.1:9002/v1"  # type: ignore[union-attr]
    swapped = {"output": cluster_config.output, "status_target": cluster_config.status_target}
    for role in ("candidate", "baseline"):
        side = getattr(local, role)
        swapped[role] = side.model_copy(update={"endpoint": side.endpoint.model_copy(update={"url": getattr(cluster_config, role).endpoint.url})})
    swapped["judge"] = local.judge.model_copy(update={"url": cluster_config.judge.url})
    assert local.model_copy(update=swapped) == cluster_config


def _manifest(spec_extra: dict[str, object]) -> object:
    document = {
        "apiVersion": "alpaca.dev/v1alpha1", "kind": "Evaluation", "metadata": {"name": "e"},
        "spec": {"candidate": {"baseURL": "http://127.0.0.1:1/v1", "model": "a"},
                 "baseline": {"baseURL": "http://127.0.0.1:2/v1", "model": "b", "apiKeySecretRef": {"name": "base", "key": "key"}},
                 "judge": {"baseURL": "http://127.0.0.1:3/v1", "model": "j"},
                 "output": {"uri": "file:///tmp/out"}, **spec_extra},
    }
    return parse("e.yaml", document)


def test_a_config_map_is_refused_locally_naming_the_field(tmp_path: Path) -> None:
    manifest = _manifest({"tasks": {"configMapRef": {"name": "t", "key": "k"}}})
    with pytest.raises(ManifestError, match=r"spec\.tasks\.configMapRef: ConfigMaps exist only in a cluster"):
        evaluate_config(manifest, Layout(tmp_path), {})  # type: ignore[arg-type]


def test_local_files_and_keys(tmp_path: Path) -> None:
    manifest = _manifest({"tasks": {"uri": "file:///data/tasks.jsonl"}, "candidate": {"outputs": {"uri": "file:///data/mine.jsonl"}}})
    config = evaluate_config(manifest, Layout(tmp_path), {})  # type: ignore[arg-type]
    assert config.tasks == "/data/tasks.jsonl" and config.output == "/tmp/out"
    assert config.candidate.outputs == "/data/mine.jsonl" and config.candidate.endpoint is None
    # A Secret key is a local environment variable named after it, as for a teacher.
    assert config.baseline.endpoint is not None and config.baseline.endpoint.api_key_env == "BASE_KEY"


def test_the_evaluated_server_keeps_serving_and_the_teacher_stops_after_its_last_user(tmp_path: Path) -> None:
    """The order of starts and stops, with the processes left out (the runner's own decisions)."""
    from alpaca_operator.local.runner import LocalRunner, StepReport

    events: list[str] = []

    class Recording(LocalRunner):
        def _start_server(self, step, ready_timeout_s: float = 600) -> StepReport:  # type: ignore[no-untyped-def, override]
            events.append(f"start {step.manifest.name}")
            self.servers[step.key] = None  # type: ignore[assignment]
            self.outputs[step.key] = Outputs(url="http://127.0.0.1:9/v1", served_model_name=step.manifest.name)
            return StepReport(step, "Ready", self.outputs[step.key])

        def stop_server(self, key, timeout_s: float = 30) -> None:  # type: ignore[no-untyped-def, override]
            if self.servers.pop(key, "gone") != "gone":
                events.append(f"stop {key[1]}")

        def _run_batch(self, step):  # type: ignore[no-untyped-def, override]
            events.append(f"run {step.manifest.name}")
            return Outputs(location=str(tmp_path / step.manifest.name), sha256=step.manifest.name)

    runner = Recording(Layout(tmp_path), echo=False, say=lambda _line: None)
    runner.run(plan(load([QUICKSTART])), keep_serving=True)
    assert events == [
        "start teacher", "run quickstart-data", "run quickstart-tune",
        "start quickstart-chat", "run quickstart-eval", "stop teacher",
    ]
    assert set(runner.servers) == {("ModelServer", "quickstart-chat")}, "the evaluated model is served on"
