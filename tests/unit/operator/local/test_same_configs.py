"""Local mode and the operator hand the workloads the same configs for examples/quickstart/.

Both call the builders' one function per kind; they differ only in what an applier answers (where
storage is, which env var holds a key, whether to report status, the listen address and metrics port). The test
builds the operator's ConfigMaps and local mode's config files for the same manifests and checks
that, with exactly those answers swapped in, they are equal field for field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alpaca_operator.api.common import Artifact
from alpaca_operator.api.workloads import GenerateConfig, ServeConfig, TrainConfig
from alpaca_operator.builders import finetune, instructdataset, modelserver
from alpaca_operator.builders.common import Parent
from alpaca_operator.builders.inputs import TeacherServer, dataset_from_upstream, model_from_upstream, model_source
from alpaca_operator.local.inputs import Outputs, generate_config, serve_config, train_config
from alpaca_operator.local.layout import Layout
from alpaca_operator.local.runner import serve_command
from alpaca_operator.manifests import load
from alpaca_operator.settings import OperatorSettings

QUICKSTART = Path(__file__).resolve().parents[4] / "examples" / "quickstart"
SETTINGS = OperatorSettings()
DIGEST = "d" * 64


def _config_map(manifests: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    return json.loads(manifests[0]["data"]["config.json"])


def test_quickstart_configs_are_the_operators(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    by_name = {m.name: m for m in load(sorted(QUICKSTART.glob("*.yaml")))}
    teacher, data, tune, chat = by_name["teacher"], by_name["quickstart-data"], by_name["quickstart-tune"], by_name["quickstart-chat"]

    def parent(name: str, plural: str) -> Parent:
        return Parent(name, "default", plural)

    # The teacher server (a built-in model).
    model, mounts = model_source(teacher.resource.spec.model.source)
    built = modelserver.build(parent("teacher", "modelservers"), teacher.resource.spec, SETTINGS, model, mounts)
    cluster = ServeConfig.model_validate(_config_map(built))
    local = serve_config(teacher, layout, {}, port=cluster.port)
    assert local.model_copy(update={"host": cluster.host, "metrics_port": cluster.metrics_port}) == cluster
    # And the flags beside the config file (the teacher's dtype).
    (server,) = built[1]["spec"]["template"]["spec"]["containers"]
    local_command = serve_command(local, tmp_path / "serve.json")
    assert local_command[local_command.index("--config") + 2:] == server["command"][server["command"].index("--config") + 2:]

    # The dataset, taught by that server.
    url = modelserver.url(parent("teacher", "modelservers"))
    resolved = instructdataset.resolve_teacher(data.resource.spec, SETTINGS, TeacherServer("teacher", url, cluster.served_model_name))
    cluster_gen = GenerateConfig.model_validate(_config_map(instructdataset.build(parent(data.name, "instructdatasets"), data.resource.spec, SETTINGS, resolved)))
    local_gen = generate_config(data, layout, {("ModelServer", "teacher"): Outputs(url="http://127.0.0.1:9/v1", served_model_name=cluster.served_model_name)})
    assert local_gen.model_copy(update={"output": cluster_gen.output, "teacher_url": cluster_gen.teacher_url,
                                        "status_target": cluster_gen.status_target}) == cluster_gen
    # Both report the dataset by the claim's public name, wherever the claim is mounted.
    assert local_gen.output_uri == cluster_gen.output_uri == "pvc://alpaca/quickstart/dataset"

    # The fine-tune, on that dataset.
    upstream = dataset_from_upstream(data.resource.spec.output, Artifact(uri="pvc://alpaca/quickstart/dataset/dataset.jsonl", sha256=DIGEST))
    cluster_train = TrainConfig.model_validate(_config_map(finetune.build(parent(tune.name, "finetunes"), tune.resource.spec, SETTINGS, upstream)))
    local_train = train_config(tune, layout, {("InstructDataset", data.name): Outputs(location=local_gen.output, sha256=DIGEST)})
    assert local_train.model_copy(update={"dataset": cluster_train.dataset, "output": cluster_train.output,
                                          "status_target": cluster_train.status_target}) == cluster_train
    # Including the built-in base model, GGUF file and all.
    assert local_train.base_model == cluster_train.base_model

    # The chat server, of that model.
    trained = model_from_upstream(tune.resource.spec.output, Artifact(uri="pvc://alpaca/quickstart/model", sha256=DIGEST))
    from alpaca_operator.api.workloads import ResolvedModel

    cluster_chat = ServeConfig.model_validate(_config_map(modelserver.build(
        parent(chat.name, "modelservers"), chat.resource.spec, SETTINGS, ResolvedModel(location=trained.location), trained.mounts)))
    local_chat = serve_config(chat, layout, {("FineTune", tune.name): Outputs(location=local_train.output)}, port=cluster_chat.port)
    assert local_chat.model_copy(update={"host": cluster_chat.host, "metrics_port": cluster_chat.metrics_port,
                                         "model": cluster_chat.model}) == cluster_chat


def test_local_mode_reads_the_results_contract_from_manifest_json(tmp_path: Path) -> None:
    from alpaca_operator.api.results import WorkloadResult
    from alpaca_operator.local.runner import _read_outputs

    by_name = {m.name: m for m in load(sorted(QUICKSTART.glob("*.yaml")))}
    result = WorkloadResult(artifact=Artifact(uri=f"{tmp_path}/dataset.jsonl", sha256=DIGEST), size_bytes=3, records=1,
                            finished_at="2026-01-01T00:00:00+00:00")
    (tmp_path / "manifest.json").write_text(json.dumps({"datasetSha256": "0" * 64, "result": result.to_wire()}))
    outputs = _read_outputs(by_name["quickstart-data"], str(tmp_path), Layout(tmp_path / ".alpaca"))
    assert outputs.sha256 == DIGEST, "the result's sha256, as the operator pins it, not another field"
    (tmp_path / "manifest.json").write_text(json.dumps({"datasetSha256": "0" * 64}))
    assert _read_outputs(by_name["quickstart-data"], str(tmp_path), Layout(tmp_path / ".alpaca")).sha256 is None, "no result: nothing to pin"


def test_local_mode_finds_what_a_result_names_on_a_claim_in_the_claims_folder(tmp_path: Path) -> None:
    """The quickstart's outputs are on a claim: the workloads report pvc:// names, and local mode reads
    them where it keeps that claim, for the next step and for the table a person reads."""
    from alpaca_operator.api.results import WorkloadResult
    from alpaca_operator.local.plan import Step
    from alpaca_operator.local.runner import StepReport, _read_outputs
    from alpaca_operator.local.summary import _details

    layout = Layout(tmp_path / ".alpaca")
    by_name = {m.name: m for m in load(sorted(QUICKSTART.glob("*.yaml")))}
    data, tune = by_name["quickstart-data"], by_name["quickstart-tune"]
    folders = {}
    for manifest, uri in ((data, "pvc://alpaca/quickstart/dataset/dataset.jsonl"), (tune, "pvc://alpaca/quickstart/model")):
        folder = layout.pvc_path("alpaca", manifest.resource.spec.output.pvc.sub_path)
        folder.mkdir(parents=True)
        result = WorkloadResult(artifact=Artifact(uri=uri, sha256=DIGEST), size_bytes=3, finished_at="2026-01-01T00:00:00+00:00")
        (folder / "manifest.json").write_text(json.dumps({"result": result.to_wire()}))
        folders[manifest.name] = folder

    dataset = _read_outputs(data, str(folders[data.name]), layout)
    assert dataset.artifact == str(tmp_path / ".alpaca/pvc/alpaca/quickstart/dataset/dataset.jsonl")
    assert train_config(tune, layout, {("InstructDataset", data.name): dataset}).dataset == dataset.artifact

    model = _read_outputs(tune, str(folders[tune.name]), layout)
    model_folder = str(tmp_path / ".alpaca/pvc/alpaca/quickstart/model")
    assert model.artifact == model_folder
    details = _details(StepReport(Step(tune), "Succeeded", model))
    assert model_folder in details and "pvc://" not in details
    chat = serve_config(by_name["quickstart-chat"], layout, {("FineTune", tune.name): model}, port=8000)
    assert chat.model.location == model_folder


@pytest.mark.parametrize(("uri", "expected"), [
    ("pvc://alpaca/quickstart/model", "pvc/alpaca/quickstart/model"),
    ("pvc://alpaca/dataset.jsonl", "pvc/alpaca/dataset.jsonl"),
    ("pvc://alpaca", "pvc/alpaca"),
])
def test_a_pvc_uri_is_the_claims_folder_locally(tmp_path: Path, uri: str, expected: str) -> None:
    assert Layout(tmp_path).resolve(uri) == str(tmp_path / expected)


def test_other_locations_stay_as_the_workload_reported_them(tmp_path: Path) -> None:
    assert Layout(tmp_path).resolve("file:///data/out/dataset.jsonl") == "/data/out/dataset.jsonl"
    assert Layout(tmp_path).resolve("s3://bucket/out/dataset.jsonl") == "s3://bucket/out/dataset.jsonl"
    assert Layout(tmp_path).resolve("/data/out") == "/data/out"
