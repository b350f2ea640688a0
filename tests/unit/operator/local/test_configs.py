"""Local mode builds the same workload configs the operator hands its pods."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.manifests import VALID

from alpaca_operator.api.workloads import GenerateConfig, TrainConfig
from alpaca_operator.local.inputs import Outputs, generate_config, serve_config, train_config
from alpaca_operator.local.layout import Layout, secret_env_var
from alpaca_operator.local.state import fingerprint
from alpaca_operator.manifests import ManifestError, parse


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


def test_pvc_output_becomes_a_folder_under_the_state_root(layout: Layout) -> None:
    manifest = parse("d.yaml", VALID["InstructDataset"]())
    config = generate_config(manifest, layout, {})
    assert config.output == str(layout.root / "pvc" / "alpaca-data" / "datasets" / "alpaca")
    assert config.teacher_url == "https://api.example.com/v1"
    # The key itself never appears: only the name of the variable that holds it locally.
    assert config.api_key_env == "TEACHER_KEY_API_KEY"
    assert config.pricing.output_usd_per_million_tokens == 0.6
    assert GenerateConfig.model_validate_json(config.model_dump_json(by_alias=True)) == config


def test_model_server_teacher_uses_the_running_server(layout: Layout) -> None:
    document = VALID["InstructDataset"]()
    document["spec"]["teacher"] = {"modelServerRef": {"name": "teacher"}}
    document["spec"].pop("budgetUSD", None)  # no budget holds for an in-cluster teacher
    manifest = parse("d.yaml", document)
    upstream = {("ModelServer", "teacher"): Outputs(url="http://127.0.0.1:9/v1", served_model_name="teacher")}
    config = generate_config(manifest, layout, upstream)
    assert (config.teacher_url, config.teacher_model, config.api_key_env) == ("http://127.0.0.1:9/v1", "teacher", None)


def test_config_map_seeds_are_refused_locally_with_the_field(layout: Layout) -> None:
    document = VALID["InstructDataset"]()
    document["spec"]["seedTasks"] = {"configMapRef": {"name": "seeds", "key": "seeds.jsonl"}}
    with pytest.raises(ManifestError, match="spec.seedTasks.configMapRef"):
        generate_config(parse("d.yaml", document), layout, {})


def test_prompt_template_is_a_local_file_and_a_configmap_one_is_refused_with_the_field(layout: Layout) -> None:
    document = VALID["InstructDataset"]()
    document["spec"]["promptTemplate"] = {"pvc": {"claimName": "texts", "path": "prompts/alpaca.txt"}}
    assert generate_config(parse("d.yaml", document), layout, {}).prompt_template == str(layout.root / "pvc" / "texts" / "prompts" / "alpaca.txt")
    document["spec"]["promptTemplate"] = {"uri": "file:///srv/prompt.txt"}
    assert generate_config(parse("d.yaml", document), layout, {}).prompt_template == "/srv/prompt.txt"
    document["spec"]["promptTemplate"] = {"configMapRef": {"name": "prompts", "key": "alpaca.txt"}}
    with pytest.raises(ManifestError, match="spec.promptTemplate.configMapRef"):
        generate_config(parse("d.yaml", document), layout, {})


def test_finetune_reads_the_upstream_dataset_and_pins_its_digest(layout: Layout) -> None:
    manifest = parse("t.yaml", VALID["FineTune"]())
    upstream = {("InstructDataset", "alpaca-data"): Outputs(location="/data/ids", sha256="ab" * 32)}
    config = train_config(manifest, layout, upstream)
    assert config.dataset == "/data/ids/dataset.jsonl"
    assert config.dataset_sha256 == "ab" * 32
    assert config.base_model.location == "s3://models/llama-7b"
    assert TrainConfig.model_validate_json(config.model_dump_json(by_alias=True)) == config


def test_server_of_a_finetune_serves_its_model_folder(layout: Layout) -> None:
    manifest = parse("s.yaml", VALID["ModelServer"]())
    upstream = {("FineTune", "alpaca-7b"): Outputs(location="/models/tune")}
    config = serve_config(manifest, layout, upstream, port=8123)
    assert config.model.location == "/models/tune"
    assert (config.served_model_name, config.host, config.port) == ("alpaca-chat", "127.0.0.1", 8123)


def test_secret_env_var_names_are_shell_safe() -> None:
    from alpaca_operator.api.common import SecretKeyRef

    assert secret_env_var(SecretKeyRef(name="openai.key", key="api-key")) == "OPENAI_KEY_API_KEY"


def test_fingerprint_changes_with_spec_and_upstream_only() -> None:
    spec = parse("t.yaml", VALID["FineTune"]()).resource.spec.to_wire()
    base = fingerprint("FineTune", spec, ["a" * 64])
    assert fingerprint("FineTune", dict(spec), ["a" * 64]) == base
    assert fingerprint("FineTune", spec | {"budgetUSD": 3}, ["a" * 64]) != base
    assert fingerprint("FineTune", spec, ["b" * 64]) != base
