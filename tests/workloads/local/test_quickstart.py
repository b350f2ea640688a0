"""`alpaca run` end to end: the quickstart's manifests, shrunk, through generation, training and
serving on this machine, then a chat request with the openai client; and a re-run that skips."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from support.quickstart import write_shrunk_quickstart

pytestmark = pytest.mark.slow


def _alpaca_run(*args: str, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "alpaca_operator.cli", "run", *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
    )


def _wait_for(text: str, log: Path, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None:
            pytest.fail(f"alpaca run exited with {process.returncode} before {text!r}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {text!r} after {timeout_s}s:\n{log.read_text()[-4000:]}")
        time.sleep(1)


def test_quickstart_runs_end_to_end_then_skips_what_is_unchanged(tmp_path: Path) -> None:
    manifests, state = tmp_path / "manifests", tmp_path / "state"
    write_shrunk_quickstart(manifests)

    first_log = tmp_path / "first.log"
    process = _alpaca_run(str(manifests), "--state-dir", str(state), log=first_log)
    try:
        _wait_for("serving until Ctrl-C", first_log, process, timeout_s=1500)
        config = json.loads((state / "state" / "configs" / "ModelServer-quickstart-chat.json").read_text())
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{config['port']}/v1", api_key="unused")
        reply = client.chat.completions.create(
            model="quickstart-chat",
            messages=[{"role": "user", "content": "Give one tip for staying healthy."}],
            max_tokens=16,
            temperature=0,
        )
        assert reply.choices[0].message.content
        assert 0 < reply.usage.completion_tokens <= 16
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=120)
    assert code == 0, first_log.read_text()[-4000:]

    dataset_dir = state / "pvc" / "alpaca" / "quickstart" / "dataset"
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    rows = (dataset_dir / "dataset.jsonl").read_text().splitlines()
    assert manifest["stopReason"] == "completed" and manifest["kept"] == len(rows) == 3
    assert all(set(json.loads(row)) == {"instruction", "input", "output"} for row in rows)
    model_dir = state / "pvc" / "alpaca" / "quickstart" / "model"
    assert (model_dir / "model.safetensors").exists() or list(model_dir.glob("*.safetensors"))
    assert (model_dir / "loss_curve.png").stat().st_size > 0
    trained = json.loads((model_dir / "manifest.json").read_text())
    assert trained["steps"] == 2
    # Reported as in a cluster, by the claim's public name, which local mode reads back as the
    # claim's folder here (the FineTune trained on that dataset, the chat server loaded that model).
    assert manifest["result"]["artifact"]["uri"] == "pvc://alpaca/quickstart/dataset/dataset.jsonl"
    assert trained["result"]["artifact"]["uri"] == "pvc://alpaca/quickstart/model"
    train_config = json.loads((state / "state" / "configs" / "FineTune-quickstart-tune.json").read_text())
    assert train_config["dataset"] == str(dataset_dir / "dataset.jsonl")
    assert config["model"]["location"] == str(model_dir)
    # The quickstart ends with the tuned model judged against its base: every sampled task judged.
    report = json.loads((state / "pvc" / "alpaca" / "quickstart" / "evaluation" / "summary.json").read_text())
    assert report["judged"] == report["tasks"] == 2 and report["score"] is not None
    assert (state / "pvc" / "alpaca" / "quickstart" / "evaluation" / "win_rate.png").stat().st_size > 0
    assert "win rate" in first_log.read_text()

    # Nothing changed: the dataset and the model are reused, the teacher is never even loaded.
    second_log = tmp_path / "second.log"
    rerun = _alpaca_run(str(manifests), "--state-dir", str(state), "--exit", log=second_log)
    assert rerun.wait(timeout=600) == 0, second_log.read_text()[-4000:]
    output = second_log.read_text()
    assert output.count("unchanged since the last run: skipped") == 3
    assert "needs ModelServer teacher" not in output
    assert json.loads((dataset_dir / "manifest.json").read_text()) == manifest
