"""Packing vs Alpaca's padded batches: how much of the computed work is real tokens, and how fast.

    PYTHONSAFEPATH=1 .venv/bin/python bench/packing.py            # defaults: one global batch of 128, micro-batch 4, max length 512
    PYTHONSAFEPATH=1 .venv/bin/python bench/packing.py --examples 256 --hidden 256

The data has the shape of Alpaca's (DESIGN.md): prompts of about 28 tokens plus the template,
responses of about 65 tokens, both long-tailed, 40% of examples with an input. Token ids are
random: only lengths matter to batching. Both sides run a forward and backward pass of the same
tiny random Llama on CPU over the same examples, in this process:

- baseline: Alpaca's recipe, shuffled, micro-batches of 4 padded to the longest, the model's own
  loss over every position (transformers' default SDPA attention);
- ours: the training workload's plan and step, whole examples packed into micro-batches of
  4 x 512 tokens, attention per example, the head only where a response token is predicted.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import torch

from alpaca_jobs.train import attention, collate, plan
from alpaca_jobs.train.data import IGNORE_INDEX, Example
from alpaca_jobs.train.step import loss_sum

TEMPLATE_TOKENS = {False: 24, True: 34}  # our two prompt templates, in LLaMA-tokenizer tokens


def lognormal_int(rng: random.Random, mean: float, sigma: float) -> int:
    mu = math.log(mean) - sigma**2 / 2  # so that the mean is `mean`
    return max(1, round(rng.lognormvariate(mu, sigma)))


def alpaca_shaped(count: int, vocab: int, max_len: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    examples = []
    for line in range(count):
        has_input = rng.random() < 0.4
        prompt = TEMPLATE_TOKENS[has_input] + lognormal_int(rng, 28, 0.7)
        response = min(lognormal_int(rng, 65, 0.9), max_len - prompt)
        ids = [rng.randrange(3, vocab) for _ in range(prompt + response)]
        examples.append(Example(tuple(ids), (IGNORE_INDEX,) * prompt + tuple(ids[prompt:]), line))
    return examples


def tiny_llama(vocab: int, hidden: int, layers: int, attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 64),
                         max_position_embeddings=1024)
    config._attn_implementation = attn
    return LlamaForCausalLM(config).train()


def baseline_batches(examples: list[Example], micro: int, pad: int, seed: int) -> list[collate.MicroBatch]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [collate.padded([examples[i] for i in order[s : s + micro]], pad) for s in range(0, len(order), micro)]


def our_batches(examples: list[Example], micro: int, max_len: int, global_batch: int) -> list[collate.MicroBatch]:
    batches = []
    for start in range(0, len(examples), global_batch):
        step = examples[start : start + global_batch]
        groups, _ = plan.rank_plan([len(e) for e in step], rank=0, world_size=1, packing=True,
                                   micro_batch_size=micro, max_seq_length=max_len)
        batches += [collate.packed([step[p] for p in g]) for g in groups]
    return batches


def run_baseline(model: torch.nn.Module, batches: list[collate.MicroBatch]) -> float:
    began = time.perf_counter()
    for b in batches:
        model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, use_cache=False).loss.backward()
    return time.perf_counter() - began


def run_ours(model: torch.nn.Module, batches: list[collate.MicroBatch]) -> float:
    began = time.perf_counter()
    for b in batches:
        loss, _ = loss_sum(model, b)
        loss.backward()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per side; the best is kept")
    args = parser.parse_args()

    examples = alpaca_shaped(args.examples, args.vocab, args.max_length)
    real = sum(len(e) for e in examples)
    base = baseline_batches(examples, args.micro_batch, pad=0, seed=0)
    ours = our_batches(examples, args.micro_batch, args.max_length, args.global_batch)
    base_computed = sum(b.computed_tokens for b in base)
    ours_computed = sum(b.computed_tokens for b in ours)
    assert sum(b.real_tokens for b in ours) == sum(b.real_tokens for b in base) == real

    attention.register()
    base_model = tiny_llama(args.vocab, args.hidden, args.layers, "sdpa")
    our_model = tiny_llama(args.vocab, args.hidden, args.layers, attention.NAME)
    run_baseline(base_model, base[:2])  # warm up allocators and kernels
    run_ours(our_model, ours[:2])
    base_s, ours_s = math.inf, math.inf
    for _ in range(args.rounds):  # interleaved, so machine noise hits both sides alike
        base_s = min(base_s, run_baseline(base_model, base))
        ours_s = min(ours_s, run_ours(our_model, ours))

    lengths = sorted(len(e) for e in examples)
    print(f"{args.examples} Alpaca-shaped examples: {real} real tokens, median length {lengths[len(lengths) // 2]}, "
          f"longest {lengths[-1]}; tiny Llama hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}, CPU")
    print(f"  baseline (shuffled, padded to longest of {args.micro_batch}): {len(base)} micro-batches, "
          f"{base_computed} computed tokens, real fraction {real / base_computed:.3f}, {real / base_s:,.0f} real tokens/s")
    print(f"  ours (packed into {args.micro_batch}x{args.max_length} tokens):  {len(ours)} micro-batches, "
          f"{ours_computed} computed tokens, real fraction {real / ours_computed:.3f}, {real / ours_s:,.0f} real tokens/s")
    ratio = base_s / ours_s
    print(f"  real-token throughput ratio ours/baseline: {ratio:.2f}")
    print(json.dumps({
        "bench": "packing",
        "ours": {"real_token_fraction": round(real / ours_computed, 4), "real_tokens_per_second": round(real / ours_s, 1),
                 "micro_batches": len(ours)},
        "baseline": {"real_token_fraction": round(real / base_computed, 4), "real_tokens_per_second": round(real / base_s, 1),
                     "micro_batches": len(base)},
        "ratio": round(ratio, 3),
    }))


if __name__ == "__main__":
    main()
