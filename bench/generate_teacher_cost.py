"""What a CPU teacher's forward passes cost at the quickstart's shapes: batch, context, dtype.

    OMP_NUM_THREADS=1 PYTHONSAFEPATH=1 .venv/bin/python bench/generate_teacher_cost.py [--repeats 2]

SmolLM2-135M-Instruct as `alpaca serve` loads it (the builtin GGUF, dequantised to float32), and a
bfloat16 copy of it. For each: prefill of one 600-token prompt (the quickstart's prompts are ~570
tokens, half of them the built-in guidelines), then decode steps of a batch of b sequences over a
key/value cache of `ctx` positions (random keys and values: the cost of a step does not depend on
them), for b in 1, 8, 16 and ctx in 200, 800 (a quickstart request's context runs from ~570 to
~890). These say how the generation step's time scales with concurrency, prompt length and dtype.
The ratio is float32 / bfloat16 decode time at batch 16 and context 800 (the quickstart's shape).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from typing import Any

import torch
from transformers import DynamicCache

from alpaca_jobs.serve.loading import load
from alpaca_operator.api.workloads import ResolvedModel

BATCHES = (1, 8, 16)
CONTEXTS = (200, 800)


def decode_ms(model: Any, batch: int, context: int, steps: int = 4) -> float:
    config = model.config
    dtype = next(model.parameters()).dtype
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    cache = DynamicCache()
    for layer in range(config.num_hidden_layers):
        shape = (batch, heads, context, dim)
        cache.update(torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype), layer)
    tokens = torch.randint(100, 20_000, (batch, 1))
    with torch.no_grad():
        started = time.perf_counter()
        for step in range(steps):
            mask = torch.ones(batch, context + step + 1, dtype=torch.long)
            out = model(input_ids=tokens, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens = out.logits[:, -1].argmax(-1, keepdim=True)
    return 1000 * (time.perf_counter() - started) / steps


def prefill_tokens_per_s(model: Any, length: int = 600) -> float:
    ids = torch.randint(100, 20_000, (1, length))
    with torch.no_grad():
        started = time.perf_counter()
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return length / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    base = load(ResolvedModel(builtin="smollm2-135m-instruct"), device="cpu", dtype="float32").model
    models = {"float32": base, "bfloat16": copy.deepcopy(base).to(torch.bfloat16)}
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in models}
    for repeat in range(args.repeats):
        for name, model in models.items():
            rate = prefill_tokens_per_s(model)
            results[name].setdefault("prefill_tokens_per_s", []).append(rate)
            print(f"repeat {repeat} {name:8s} prefill {rate:6.0f} tokens/s  load {os.getloadavg()[0]:.1f}", flush=True)
        for context in CONTEXTS:
            for batch in BATCHES:
                row = []
                for name, model in models.items():  # the two dtypes side by side at each shape
                    ms = decode_ms(model, batch, context)
                    results[name].setdefault(f"decode_ms_b{batch}_ctx{context}", []).append(ms)
                    row.append(f"{name} {ms:6.0f} ms/step ({batch / ms * 1000:5.1f} tokens/s)")
                print(f"repeat {repeat} ctx {context:4d} batch {batch:2d} | " + " | ".join(row),
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    best = {name: {key: round(min(v) if key.startswith("decode") else max(v), 1) for key, v in figures.items()}
            for name, figures in results.items()}
    key = "decode_ms_b16_ctx800"
    print(json.dumps({"bench": "generate_teacher_cost", "ours": {"dtype": "bfloat16", **best["bfloat16"]},
                      "baseline": {"dtype": "float32", **best["float32"]},
                      "ratio": round(best["float32"][key] / best["bfloat16"][key], 2),
                      "torch_threads": torch.get_num_threads(), "load_average_end": os.getloadavg()}))


if __name__ == "__main__":
    main()
