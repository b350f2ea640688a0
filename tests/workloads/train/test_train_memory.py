"""Host memory per rank when several ranks start: one full copy of the weights per node, not one per rank.

A model 1B-shaped in width (hidden 2048, MLP 5504, 16 heads, vocabulary 32000), cut to 6 layers
so that a CI machine holds it: 435M parameters, 1.74 GB in fp32. Two ranks under torchrun on CPU
report the peak RSS they reached while building the model (the manifest's `sharding`).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, build_tokenizer, child_env, write_jsonl
from test_train_run import free_port

from alpaca_jobs.train.prompts import format_prompt


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory, dataset_rows: list[dict[str, str]]) -> tuple[Path, int, int]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("wide-llama")
    tokenizer = build_tokenizer([format_prompt(r["instruction"], r["input"]) + r["output"] for r in dataset_rows])
    tokenizer.add_special_tokens({"pad_token": "<pad>"})  # a vocabulary that needs no resizing, as LLaMA's 32000
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=6,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        sizes = [p.numel() for p in LlamaForCausalLM(config).parameters()]
    model = LlamaForCausalLM(config).to(torch.bfloat16)  # checkpoints ship in 16 bits; training upcasts
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder, sum(sizes) * 4, max(sizes) * 4


def test_ranks_hold_their_shard_and_only_rank_0_reads_the_weights(
    tmp_path: Path, wide_model: tuple[Path, int, int], dataset_rows: list[dict[str, str]]
) -> None:
    model, fp32_bytes, largest = wide_model
    data = write_jsonl(tmp_path / "data.jsonl", dataset_rows[:8])
    port = str(free_port())
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=port,
                    PET_NNODES="1", PET_NPROC_PER_NODE="2", PET_NODE_RANK="0")
    out = tmp_path / "out"
    subprocess.run([PYTHON, "-m", "torch.distributed.run", "-m", "alpaca_operator.cli", "train", "--dataset", str(data),
                    "--base-model", str(model), "--output", str(out), "--max-steps", "1", "--global-batch-size", "4",
                    "--micro-batch-size", "2", "--max-seq-length", "256", "--no-progress"],
                   check=True, env=env, cwd=REPO, timeout=600)
    ranks = json.loads((out / "manifest.json").read_text())["sharding"]
    grew = [r["peakRssWithModelBytes"] - r["peakRssBeforeModelBytes"] for r in ranks]
    print(f"model {fp32_bytes / 2**30:.2f} GiB in fp32; peak RSS growth while building it: "
          + ", ".join(f"rank {i} {g / 2**30:.2f} GiB" for i, g in enumerate(grew)))
    # Rank 1 holds its half and at most one whole tensor in transit (the largest: the 262 MB embedding),
    # plus the allocator's slack; every rank loading the model would take the whole model at least.
    slack = 256 << 20
    assert fp32_bytes / 2 + largest + slack < fp32_bytes, "the model is too small for this test to tell"
    assert grew[1] < fp32_bytes / 2 + largest + slack
    # Rank 0 reads the whole model once, in its stored bf16 (half the fp32 bytes), and holds its own
    # fp32 half beside it until the copy is handed out.
    assert grew[0] < fp32_bytes / 2 + fp32_bytes / 2 + largest + slack
