"""Real training runs of a tiny random Llama on CPU: one process, two under torchrun, kill and resume."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, REPO, child_env, load_weights, read_metrics, train_args

from alpaca_jobs.storage import sha256_file


def test_one_process_lowers_the_loss_and_leaves_a_complete_model(reference_run: Path, tiny_model: Path) -> None:
    metrics = read_metrics(reference_run)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert {"step", "epoch", "loss", "learning_rate", "tokens_per_second"} <= set(metrics[0])
    assert metrics[-1]["loss"] < 0.8 * metrics[0]["loss"]
    manifest = json.loads((reference_run / "manifest.json").read_text())
    # 48 rows: 8 held out (the minimum), 40 trained on.
    assert (manifest["dataset"]["examples"], manifest["dataset"]["validationExamples"]) == (40, 8)
    assert metrics[-1]["epoch"] == pytest.approx(8 * 16 / 40, abs=1e-3)

    assert manifest["model"]["sha256"] == sha256_file(reference_run / "model.safetensors")
    assert manifest["steps"] == 8 and manifest["finalLoss"] == pytest.approx(metrics[-1]["loss"], rel=1e-5)
    assert manifest["tokens"] == metrics[-1]["tokens"] > 0
    assert (reference_run / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((reference_run / "alpaca_prompt.json").read_text())["format"] == "chat"
    assert not (reference_run / "checkpoints").exists()
    before, after = load_weights(tiny_model), load_weights(reference_run)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])


def test_saved_model_loads_with_transformers_and_generates(reference_run: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alpaca_jobs.train.prompts import format_prompt

    tokenizer = AutoTokenizer.from_pretrained(reference_run)
    model = AutoModelForCausalLM.from_pretrained(reference_run)
    assert tokenizer.pad_token is not None, "the pad token added for training is saved with the tokenizer"
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    prompt = tokenizer(format_prompt("Repeat the word twice.", "apple"), return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def validation(metrics: list[dict]) -> list[float]:
    return [m["validation_loss"] for m in metrics if "validation_loss" in m]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_under_torchrun_shard_the_model_and_match_one_process(
    tmp_path: Path, dataset_file: Path, tiny_model: Path, reference_run: Path
) -> None:
    """Started as a PyTorchJob starts its pods: torchrun reads the PET_* variables, rendezvous at MASTER_ADDR."""
    out = tmp_path / "out"
    port = str(free_port())
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                    PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0")
    subprocess.run([PYTHON, "-m", "torch.distributed.run", "-m", "alpaca_operator.cli", *train_args(dataset_file, tiny_model, out)],
                   check=True, env=env, cwd=REPO, timeout=300)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["worldSize"] == 2
    shards = manifest["sharding"]
    total = shards[0]["totalParameters"]
    assert len(shards) == 2 and all(s["placements"] == ["S(0)"] for s in shards)
    assert sum(s["localParameters"] for s in shards) == total
    assert all(abs(s["localParameters"] - total / 2) < 0.02 * total for s in shards)

    two, one = read_metrics(out), read_metrics(reference_run)
    assert two[-1]["loss"] < 0.8 * two[0]["loss"]
    # The global batch and the loss normalisation do not depend on the number of ranks.
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=2e-4)
    # Both ranks evaluate their share of the same held-out rows and the sums meet: one process's figure.
    assert validation(two) == pytest.approx(validation(one), rel=2e-4) and len(validation(one)) == 2
    merged, alone = load_weights(out), load_weights(reference_run)
    for name, tensor in alone.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-3, atol=1e-4)


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, dataset_file: Path, tiny_model: Path, reference_run: Path) -> None:
    out = tmp_path / "out"
    command = [PYTHON, "-m", "alpaca_operator.cli", *train_args(dataset_file, tiny_model, out, "--checkpoint-every", "2")]
    victim = subprocess.Popen(command, env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("step-*/trainer_state.json")) and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.002)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "manifest.json").exists()
    killed_at = len(read_metrics(out))
    assert killed_at < 8

    resumed = subprocess.run(command, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stderr
    final, reference = read_metrics(out), read_metrics(reference_run)
    assert [m["step"] for m in final] == list(range(1, 9))
    assert [m["loss"] for m in final] == pytest.approx([m["loss"] for m in reference], rel=1e-5)
    assert validation(final) == pytest.approx(validation(reference), rel=1e-5) and len(validation(reference)) == 2
    for name, tensor in load_weights(reference_run).items():
        torch.testing.assert_close(load_weights(out)[name], tensor, rtol=1e-5, atol=1e-6)


def test_validation_loss_is_measured_on_held_out_tasks_every_n_steps_and_at_the_end(
    reference_run: Path, dataset_rows: list[dict[str, str]]
) -> None:
    metrics = read_metrics(reference_run)
    measured = [m["step"] for m in metrics if "validation_loss" in m]
    assert measured == [4, 8]  # --eval-every 4 over 8 steps
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["finalValidationLoss"] == pytest.approx(metrics[-1]["validation_loss"], abs=1e-6)
    # The model learned the shape of the tasks: the held-out loss ends well below the first training loss.
    assert metrics[-1]["validation_loss"] < 0.9 * metrics[0]["loss"]

    held_lines = set(manifest["dataset"]["validationLines"])
    task = lambda row: (row["instruction"].strip(), row["input"].strip())  # noqa: E731
    held = {task(dataset_rows[line - 1]) for line in held_lines}
    trained = {task(row) for line, row in enumerate(dataset_rows, start=1) if line not in held_lines}
    assert len(held_lines) == 8 and not held & trained
