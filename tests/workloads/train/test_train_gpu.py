"""The training run on a CUDA GPU (skipped elsewhere): bf16, packed attention, a kill and a resume."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, child_env, read_metrics, train_args

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_run_in_bf16_survives_a_kill_and_resumes(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    command = [PYTHON, "-m", "alpaca_operator.cli", *train_args(dataset_file, tiny_model, out, "--gpus", "1",
                                                                "--checkpoint-every", "2")]
    victim = subprocess.Popen(command, env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("step-*/trainer_state.json")) and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, (victim.stderr.read() if victim.stderr else b"")[-2000:]

    resumed = subprocess.run(command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["device"], manifest["precision"], manifest["steps"]) == ("cuda", "bf16", 8)
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["loss"] < 0.8 * metrics[0]["loss"]
