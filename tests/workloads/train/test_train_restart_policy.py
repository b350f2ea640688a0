"""The pod's exit code under the launcher a PyTorchJob runs: permanent for bad input, retryable for
crashes and preemption, and a retried pod resumes from its last checkpoint to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, child_env, load_weights, read_metrics, train_args
from test_train_run import free_port

from alpaca_jobs.train.exit_codes import BAD_DATASET, RETRYABLE


def launcher(*args: str) -> list[str]:
    return [PYTHON, "-m", "alpaca_jobs.train.launch", "--nproc-per-node", "2", "-m", "alpaca_operator.cli", *args]


def pod_env() -> dict[str, str]:
    port = str(free_port())
    return child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                     PET_NNODES="1", PET_NODE_RANK="0")


def workers_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def start_and_wait_for_a_checkpoint(command: list[str], out: Path) -> subprocess.Popen[bytes]:
    pod = subprocess.Popen(command, env=pod_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("step-*/trainer_state.json")) and pod.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    assert pod.poll() is None, "the run ended before the fault could be injected"
    return pod


def test_bad_dataset_fails_the_pod_for_good(tmp_path: Path, tiny_model: Path) -> None:
    run = subprocess.run(launcher(*train_args(tmp_path / "none.jsonl", tiny_model, tmp_path / "out")),
                         env=pod_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == BAD_DATASET, run.stderr[-2000:]
    assert "none.jsonl: dataset file not found" in run.stderr


def test_a_killed_worker_asks_for_a_restart_and_the_next_pod_resumes(
    tmp_path: Path, dataset_file: Path, tiny_model: Path, reference_run: Path
) -> None:
    out = tmp_path / "out"
    command = launcher(*train_args(dataset_file, tiny_model, out, "--checkpoint-every", "2"))
    pod = start_and_wait_for_a_checkpoint(command, out)
    workers = workers_of(pod.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)  # what an OOM kill of rank 1 looks like
    assert pod.wait(timeout=120) == RETRYABLE
    assert not (out / "manifest.json").exists()

    retried = subprocess.run(command, env=pod_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert retried.returncode == 0, retried.stderr[-2000:]
    assert "resuming from" in retried.stderr
    final, reference = read_metrics(out), read_metrics(reference_run)
    assert [m["step"] for m in final] == list(range(1, 9))
    assert [m["loss"] for m in final] == pytest.approx([m["loss"] for m in reference], rel=2e-4)
    for name, tensor in load_weights(reference_run).items():
        torch.testing.assert_close(load_weights(out)[name], tensor, rtol=1e-3, atol=1e-4)


def test_a_preempted_pod_asks_for_a_restart(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    pod = start_and_wait_for_a_checkpoint(launcher(*train_args(dataset_file, tiny_model, out, "--checkpoint-every", "2")), out)
    pod.send_signal(signal.SIGTERM)  # what the kubelet sends a pod that is evicted or preempted
    assert pod.wait(timeout=120) == 128 + signal.SIGTERM
