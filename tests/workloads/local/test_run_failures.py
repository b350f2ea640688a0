"""`alpaca run` stops at a failing step with that step's reason and keeps what earlier steps made;
a bad manifest stops it before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from support.teacher import TeacherServer


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-P", "-m", "alpaca_operator.cli", "run", "--exit", "--quiet", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


def _dataset(base_url: str) -> dict:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "InstructDataset",
        "metadata": {"name": "data"},
        "spec": {
            "teacher": {"baseURL": base_url, "model": "teacher"},
            "generation": {"numExamples": 10},
            "output": {"pvc": {"claimName": "work", "subPath": "data"}},
        },
    }


def _finetune(base_model: dict) -> dict:
    return {
        "apiVersion": "alpaca.dev/v1alpha1",
        "kind": "FineTune",
        "metadata": {"name": "tune"},
        "spec": {
            "baseModel": base_model,
            "dataset": {"instructDatasetRef": {"name": "data"}},
            "gpus": {"perNode": 0},
            "output": {"pvc": {"claimName": "work", "subPath": "model"}},
        },
    }


def test_failing_step_stops_the_run_with_its_reason_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with TeacherServer() as teacher:
        (tmp_path / "pipeline.yaml").write_text(
            yaml.safe_dump_all([_dataset(teacher.base_url), _finetune({"uri": f"file://{missing}"})])
        )
        result = _run(str(tmp_path / "pipeline.yaml"), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert "FineTune tune failed" in result.stderr
    assert str(missing) in result.stderr
    assert "outputs of the steps that finished are kept" in result.stderr
    dataset = tmp_path / "state" / "pvc" / "work" / "data" / "dataset.jsonl"
    assert len(dataset.read_text().splitlines()) == 10


def test_bad_manifest_is_named_before_anything_runs(tmp_path: Path) -> None:
    broken = _finetune({"builtin": "smollm2-135m-instruct"})
    broken["spec"]["hyperparameters"] = {"learningRate": -1}
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(broken))
    result = _run(str(tmp_path / "tune.yaml"), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "tune.yaml" in result.stderr and "FineTune 'tune'" in result.stderr
    assert "spec.hyperparameters.learningRate" in result.stderr
    assert not (tmp_path / "state").exists()
