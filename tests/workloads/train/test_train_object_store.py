"""Training whose inputs and output live in an object store (a real S3-compatible server, moto's):
checkpoints are published to the bucket as they are taken, and a new pod with an empty disk resumes
from the last complete one to the same result as an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, child_env, train_args
from support.object_store import ObjectStore, object_store
from test_train_restart_policy import launcher, workers_of
from test_train_run import free_port

from alpaca_jobs.train.exit_codes import RETRYABLE


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStore]:
    with object_store() as store:
        yield store


def pod_env(s3: ObjectStore, disk: Path) -> dict[str, str]:
    """A fresh pod: its own empty local disk for caches and staging, the store's endpoint."""
    port = str(free_port())
    return child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                     PET_NNODES="1", PET_NODE_RANK="0", ALPACA_CACHE_DIR=str(disk), **s3.env)


def test_killed_pod_resumes_from_the_bucket_to_the_same_weights(
    s3: ObjectStore, tmp_path: Path, dataset_file: Path, tiny_model: Path, reference_run: Path
) -> None:
    from safetensors.torch import load

    fs = s3.filesystem()
    fs.put_file(str(dataset_file), f"{s3.bucket}/inputs/dataset.jsonl")
    fs.put(str(tiny_model), f"{s3.bucket}/inputs/base-model", recursive=True)
    output = s3.uri("runs", "ft")
    command = launcher(*train_args(s3.uri("inputs", "dataset.jsonl"), s3.uri("inputs", "base-model"), output,
                                   "--checkpoint-every", "2"))

    first = subprocess.Popen(command, env=pod_env(s3, tmp_path / "pod-1"), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not fs.glob(f"{s3.bucket}/runs/ft/checkpoints/step-*/trainer_state.json") and first.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint was published"
        time.sleep(0.05)
    assert first.poll() is None, "the run ended before a worker could be killed"
    os.kill(workers_of(first.pid)[1], signal.SIGKILL)
    assert first.wait(timeout=120) == RETRYABLE
    assert not fs.exists(f"{s3.bucket}/runs/ft/manifest.json")
    published = sorted(fs.glob(f"{s3.bucket}/runs/ft/checkpoints/step-*/trainer_state.json"))
    assert published, "the checkpoint is in the bucket, not on the lost pod's disk"

    second = subprocess.run(command, env=pod_env(s3, tmp_path / "pod-2"), cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from {output}/checkpoints/step-" in second.stderr

    metrics = [json.loads(line) for line in fs.cat_file(f"{s3.bucket}/runs/ft/metrics.jsonl").decode().splitlines()]
    reference = [json.loads(line) for line in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9)), "the metrics of the lost pod came back from the checkpoint"
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in reference], rel=2e-4)
    weights = load(fs.cat_file(f"{s3.bucket}/runs/ft/model.safetensors"))
    for name, tensor in load((reference_run / "model.safetensors").read_bytes()).items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-3, atol=1e-4)
    manifest = json.loads(fs.cat_file(f"{s3.bucket}/runs/ft/manifest.json"))
    assert manifest["model"]["sha256"] == hashlib.sha256(fs.cat_file(f"{s3.bucket}/runs/ft/model.safetensors")).hexdigest()
    assert not fs.glob(f"{s3.bucket}/runs/ft/checkpoints/**"), "checkpoints are removed once the model is published"

    again = subprocess.run(command, env=pod_env(s3, tmp_path / "pod-3"), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "already holds a finished model" in again.stderr, "finished work is not redone"
