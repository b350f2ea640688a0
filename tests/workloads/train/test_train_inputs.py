"""Bad input stops the run before any training, with a message naming the file and line or the field,
and an exit code that tells the job controller not to retry (jobs/train/exit_codes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import train_args

from alpaca_jobs.train.exit_codes import BAD_DATASET, BAD_MODEL, INVALID_CONFIG
from alpaca_operator.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def test_missing_dataset(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, train_args(tmp_path / "none.jsonl", tiny_model, tmp_path / "out"))
    assert code == BAD_DATASET and "none.jsonl: dataset file not found" in err


def test_malformed_row_is_named_by_line(tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"instruction": "Hi.", "output": "hi"}) + "\n" + '{"instruction": "Hi."}\n')
    code, err = run_cli(capsys, train_args(data, tiny_model, tmp_path / "out"))
    assert code == BAD_DATASET and "bad.jsonl:2: field 'output' must be a non-empty string" in err


def test_digest_mismatch(tmp_path: Path, dataset_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, train_args(dataset_file, tiny_model, tmp_path / "out", "--dataset-sha256", "0" * 64))
    assert code == BAD_DATASET and "but datasetSha256 pins" in err


def test_sequence_length_the_model_cannot_take(tmp_path: Path, dataset_file: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = train_args(dataset_file, tiny_model, tmp_path / "out") + ["--max-seq-length", "4096"]
    code, err = run_cli(capsys, args)
    assert code == BAD_MODEL and "maxSeqLength is 4096 but the base model takes at most 256" in err


def test_missing_base_model_is_a_model_error(tmp_path: Path, dataset_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(capsys, train_args(dataset_file, tmp_path / "no-model", tmp_path / "out"))
    assert code == BAD_MODEL and "no-model" in err


def test_invalid_config_file_names_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"name": "x", "dataset": "d.jsonl", "output": "o", "baseModel": {},
                                  "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"},
                                           "hyperparameters": {"learningRate": -1}}}))
    code, err = run_cli(capsys, ["train", "--config", str(config)])
    assert code == INVALID_CONFIG and "spec.hyperparameters.learningRate" in err


def test_config_file_is_what_the_operator_writes(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    """A TrainConfig in its wire form (camelCase) is read, and flags override it."""
    from alpaca_jobs.train.cli import add_arguments, build_config
    import argparse

    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "name": "ft", "dataset": str(dataset_file), "output": str(tmp_path / "o"), "outputURI": "pvc://alpaca/ft",
        "baseModel": {"location": str(tiny_model)},
        "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}, "method": "lora",
                 "hyperparameters": {"globalBatchSize": 32, "microBatchSize": 8, "packing": False}},
        "statusTarget": {"plural": "finetunes", "namespace": "ns", "name": "ft"},
    }))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    parsed = build_config(parser.parse_args(["--config", str(config), "--max-steps", "3"]))
    hp = parsed.spec.hyperparameters
    assert (hp.global_batch_size, hp.micro_batch_size, hp.packing, hp.max_steps) == (32, 8, False, 3)
    assert parsed.spec.method.value == "lora" and parsed.status_target.name == "ft"
    assert parsed.output_uri == "pvc://alpaca/ft"
    # The public name was the config's own output's: a folder given by flag is reported as itself.
    moved = build_config(parser.parse_args(["--config", str(config), "--output", str(tmp_path / "here")]))
    assert (moved.output, moved.output_uri) == (str(tmp_path / "here"), None)
