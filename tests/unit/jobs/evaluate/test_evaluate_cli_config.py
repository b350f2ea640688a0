"""`alpaca evaluate` reads the operator's config or local flags, and names what is missing or wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from alpaca_jobs.evaluate.cli import add_arguments, load_config
from alpaca_jobs.evaluate.runner import ConfigError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_local_flags_make_a_whole_config(tmp_path: Path) -> None:
    config = load_config(_args(
        "--output", str(tmp_path / "eval"), "--candidate-url", "http://127.0.0.1:8001/v1", "--candidate-model", "tuned",
        "--baseline-outputs", str(tmp_path / "teacher.jsonl"), "--judge-url", "http://127.0.0.1:8000/v1",
        "--judge-model", "teacher", "--sample-size", "5", "--budget-usd", "0.5"))
    assert config.name == "eval"
    assert config.candidate.endpoint is not None and config.candidate.endpoint.model == "tuned"
    assert config.baseline.outputs == str(tmp_path / "teacher.jsonl") and config.baseline.endpoint is None
    assert config.spec.baseline.outputs is not None and config.spec.baseline.outputs.uri == f"file://{tmp_path}/teacher.jsonl"
    assert (config.spec.tasks.sample_size, config.spec.budget_usd, config.judge.model) == (5, 0.5, "teacher")


def test_missing_flags_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--judge-url, --judge-model are required"):
        load_config(_args("--output", str(tmp_path)))
    with pytest.raises(ConfigError, match="--candidate-url with --candidate-model, or --candidate-outputs"):
        load_config(_args("--output", str(tmp_path), "--judge-url", "http://127.0.0.1:1/v1", "--judge-model", "j",
                          "--candidate-url", "http://127.0.0.1:2/v1"))


def test_a_config_file_is_validated_and_flags_override_it(tmp_path: Path) -> None:
    base = _args("--output", str(tmp_path / "a"), "--candidate-url", "http://127.0.0.1:1/v1", "--candidate-model", "c",
                 "--baseline-url", "http://127.0.0.1:2/v1", "--baseline-model", "b",
                 "--judge-url", "http://127.0.0.1:3/v1", "--judge-model", "j")
    path = tmp_path / "config.json"
    path.write_text(load_config(base).model_dump_json(by_alias=True))
    config = load_config(_args("--config", str(path), "--output", str(tmp_path / "b"), "--concurrency", "3"))
    assert config.output == str(tmp_path / "b") and config.spec.requests.max_concurrency == 3
    with pytest.raises(ConfigError, match="field 'spec.requests.maxConcurrency'"):
        load_config(_args("--config", str(path), "--concurrency", "0"))
    path.write_text('{"name": "x"}')
    with pytest.raises(ConfigError, match=r"config.json: field 'spec': Field required"):
        load_config(_args("--config", str(path)))


def test_an_output_flag_over_a_config_drops_the_configs_public_name(tmp_path: Path) -> None:
    """The config's pvc:// name was its own output's: a folder given by flag is reported as itself."""
    base = _args("--output", str(tmp_path / "a"), "--candidate-url", "http://127.0.0.1:1/v1", "--candidate-model", "c",
                 "--baseline-url", "http://127.0.0.1:2/v1", "--baseline-model", "b",
                 "--judge-url", "http://127.0.0.1:3/v1", "--judge-model", "j")
    path = tmp_path / "config.json"
    config = load_config(base).model_copy(update={"output_uri": "pvc://alpaca/quickstart/evaluation"})
    path.write_text(config.model_dump_json(by_alias=True, exclude_none=True))
    assert load_config(_args("--config", str(path))).output_uri == "pvc://alpaca/quickstart/evaluation"
    moved = load_config(_args("--config", str(path), "--output", str(tmp_path / "b")))
    assert (moved.output, moved.output_uri) == (str(tmp_path / "b"), None)
