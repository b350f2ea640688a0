"""The command line: config file first, flags for local use, API keys from env or a mounted file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from alpaca_jobs.generate import cli
from alpaca_jobs.generate.manifest import Manifest, StopReason
from alpaca_jobs.generate.runner import ConfigError, resolve_api_key


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def _config_file(tmp_path: Path, **extra: object) -> Path:
    config = {
        "name": "demo",
        "spec": {"teacher": {"baseURL": "http://127.0.0.1:9/v1", "model": "m"}, "output": {"uri": "file:///data"}},
        "output": str(tmp_path / "out"),
        "teacherURL": "http://127.0.0.1:9/v1",
        "teacherModel": "m",
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_config_file_with_flag_overrides(tmp_path: Path) -> None:
    config = cli.load_config(_args("--config", str(_config_file(tmp_path)), "--num-examples", "7", "--concurrency", "3"))
    assert config.spec.generation.num_examples == 7
    assert config.spec.teacher.max_concurrency == 3
    assert config.spec.generation.seed_tasks_per_prompt == 3  # defaults untouched
    assert config.output == str(tmp_path / "out")


def test_flags_alone_build_a_config(tmp_path: Path) -> None:
    config = cli.load_config(
        _args("--output", str(tmp_path / "d"), "--teacher-url", "http://127.0.0.1:8000/v1", "--model", "t", "--budget-usd", "2")
    )
    assert config.teacher_url == "http://127.0.0.1:8000/v1" and config.teacher_model == "t"
    assert config.spec.budget_usd == 2 and config.name == "d"


def test_missing_flags_are_named() -> None:
    with pytest.raises(ConfigError, match="--teacher-url, --model are required"):
        cli.load_config(_args("--output", "x"))


def test_bad_config_files_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{\n  oops")
    with pytest.raises(ConfigError, match=r"c.json:2: not JSON"):
        cli.load_config(_args("--config", str(path)))
    bad = _config_file(tmp_path, spec={"teacher": {"baseURL": "http://x/v1", "model": "m", "maxConcurrency": 0}, "output": {"uri": "file:///d"}})
    with pytest.raises(ConfigError, match=r"field 'spec.teacher.maxConcurrency'"):
        cli.load_config(_args("--config", str(bad)))
    with pytest.raises(ConfigError, match="invalid value|greater than"):
        cli.load_config(_args("--config", str(_config_file(tmp_path)), "--num-examples", "0"))


def test_api_key_from_env_or_mounted_file(tmp_path: Path) -> None:
    assert resolve_api_key(None, {}) is None
    assert resolve_api_key("KEY", {"KEY": " sk-1 \n"}) == "sk-1"
    secret = tmp_path / "key"
    secret.write_text("sk-from-file\n")
    assert resolve_api_key("KEY", {"KEY_FILE": str(secret)}) == "sk-from-file"
    with pytest.raises(ConfigError, match="environment variable KEY, which is not set"):
        resolve_api_key("KEY", {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_api_key("KEY", {"KEY_FILE": str(tmp_path / "missing")})


def test_manifest_speaks_camel_case_and_round_trips() -> None:
    manifest = Manifest(
        name="d", teacher_url="http://t/v1", model="m", stop_reason=StopReason.BUDGET_EXHAUSTED, target=10, kept=3,
        generated=5, filtered={"too_short": 2}, requests=1, prompt_tokens=10, completion_tokens=20, cost_usd=0.5,
        budget_usd=0.5, seed_tasks=175, dataset_sha256="0" * 64, finished_at="2025-01-01T00:00:00+00:00",
    )
    wire = json.loads(manifest.model_dump_json(by_alias=True))
    assert wire["stopReason"] == "budget_exhausted" and wire["costUSD"] == 0.5 and wire["teacherURL"] == "http://t/v1"
    assert wire["datasetSha256"] == "0" * 64 and wire["failedRequests"] == {}
    assert Manifest.model_validate(wire) == manifest
    assert manifest.progress().to_wire()["costUSD"] == 0.5
