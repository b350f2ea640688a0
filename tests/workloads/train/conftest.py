"""A tiny random Llama with its own tokenizer, and a small fixed Alpaca dataset, built offline."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "maple", "candle", "rocket", "garden", "silver"]


def alpaca_rows(count: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """Tasks a tiny model can learn in a few steps, about 40% with an input as in Alpaca's data."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        word = rng.choice(WORDS)
        if i % 5 < 2:
            rows.append({"instruction": "Repeat the word twice.", "input": word, "output": f"{word} {word}"})
        elif i % 5 == 2:
            rows.append({"instruction": f"Write the word {word} in capitals.", "input": "", "output": word.upper()})
        else:
            n = rng.randint(2, 6)
            rows.append({"instruction": f"Count from one to {n}.", "input": "", "output": " ".join(str(k) for k in range(1, n + 1))})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = __import__("tokenizers").decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_llama(folder: Path, texts: list[str], *, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(texts)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def dataset_rows() -> list[dict[str, str]]:
    return alpaca_rows()


@pytest.fixture(scope="session")
def dataset_file(tmp_path_factory: pytest.TempPathFactory, dataset_rows: list[dict[str, str]]) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "dataset.jsonl", dataset_rows)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, dataset_rows: list[dict[str, str]]) -> Path:
    from alpaca_jobs.train.prompts import format_prompt

    texts = [format_prompt(r["instruction"], r["input"]) + r["output"] for r in dataset_rows]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), texts)


REPO = Path(__file__).resolve().parents[3]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable

# One recipe shared by the runs that are compared with each other.
RECIPE = ["--max-steps", "8", "--global-batch-size", "16", "--micro-batch-size", "2", "--max-seq-length", "96",
          "--learning-rate", "3e-3", "--warmup-ratio", "0.1", "--eval-every", "4", "--no-progress"]


def train_args(dataset: Path, model: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", str(dataset), "--base-model", str(model), "--output", str(output), *RECIPE, *extra]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env.update(PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, dataset_file: Path, tiny_model: Path) -> Path:
    """The recipe trained by one plain process, uninterrupted."""
    import subprocess

    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run([PYTHON, "-m", "alpaca_operator.cli", *train_args(dataset_file, tiny_model, out)],
                   check=True, env=child_env(), cwd=REPO, timeout=300)
    return out
