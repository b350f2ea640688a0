"""Choosing the next token of a 16-row batch at the quickstart's sampling settings, on real logits.

    OMP_NUM_THREADS=1 PYTHONSAFEPATH=1 python bench/serve_sampling.py [--rows 16] [--steps 6] [--repeats 3]

SmolLM2-135M-Instruct (the builtin GGUF, bfloat16, as the quickstart's teacher serves it) reads
`--rows` quickstart prompts (jobs/generate/prompt.py, 6 slots) and samples `--steps` tokens of
each at temperature 0.7; the logits of every step are kept, so both sides choose from the same
real distributions (SmolLM2's vocabulary: 49,152 tokens), temperature 0.7 and top_p 0.9:

- ours: `alpaca serve`'s sample_rows (each row its own parameters and random stream; the nucleus
  found by a partial top-k, the token drawn by one uniform number against its running sum);
- baseline: transformers' own TemperatureLogitsWarper + TopPLogitsWarper and torch.multinomial,
  batched over the rows (what `model.generate(do_sample=True, top_p=...)` does each step).

Reported: milliseconds per batch step for each side (best of --repeats), the nucleus sizes seen,
and the load average. The last line is the project's benchmark JSON; ratio = baseline / ours.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from alpaca_jobs.serve.batch import cache_keyword
from alpaca_jobs.serve.loading import load
from alpaca_jobs.serve.sampling import RowSampler, SamplingParams, nucleus, sample_rows
from alpaca_operator.api.workloads import ResolvedModel

TEMPERATURE, TOP_P = 0.7, 0.9  # examples/quickstart/10-dataset.yaml


def quickstart_prompts(count: int, tokenizer: object) -> list[list[int]]:
    # The prefix-cache bench builds the quickstart's prompts already: one recipe for both.
    spec = importlib.util.spec_from_file_location("serve_prefix_cache", Path(__file__).with_name("serve_prefix_cache.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.quickstart_prompts(count, tokenizer)


def real_logits(rows: int, steps: int) -> list[torch.Tensor]:
    """`steps` (rows, vocab) float32 logits: row i follows quickstart prompt i, sampling as it goes."""
    loaded = load(ResolvedModel(builtin="smollm2-135m-instruct"), device="cpu", dtype="bfloat16")
    keyword = cache_keyword(loaded.model)
    per_row: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for prompt in quickstart_prompts(rows, loaded.tokenizer):
            out = loaded.model(input_ids=torch.tensor([prompt]), use_cache=True)
            seen = []
            for _ in range(steps):
                logits = out.logits[0, -1].float()
                seen.append(logits)
                token = torch.multinomial(torch.softmax(logits / TEMPERATURE, dim=-1), 1)
                out = loaded.model(input_ids=token.view(1, 1), use_cache=True, **{keyword: out.past_key_values})
            per_row.append(seen)
    return [torch.stack([row[step] for row in per_row]) for step in range(steps)]


def best_ms(choose: Callable[[torch.Tensor], object], batches: list[torch.Tensor], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for logits in batches:
            choose(logits)
        best = min(best, (time.perf_counter() - started) / len(batches) * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batches = real_logits(args.rows, args.steps)
    sizes = sorted(len(nucleus(torch.softmax(row / TEMPERATURE, dim=-1), TOP_P)[0]) for b in batches for row in b)

    samplers = [RowSampler.create(SamplingParams(max_tokens=320, temperature=TEMPERATURE, top_p=TOP_P))
                for _ in range(args.rows)]
    history = [[] for _ in range(args.rows)]
    temperature, top_p = TemperatureLogitsWarper(TEMPERATURE), TopPLogitsWarper(TOP_P)

    def ours(logits: torch.Tensor) -> object:
        return sample_rows(logits, samplers, history)

    def baseline(logits: torch.Tensor) -> object:
        scores = top_p(None, temperature(None, logits))
        return torch.multinomial(torch.softmax(scores, dim=-1), 1)

    load_start = os.getloadavg()
    ours_ms = best_ms(ours, batches, args.repeats)
    baseline_ms = best_ms(baseline, batches, args.repeats)
    load_end = os.getloadavg()
    print(f"torch threads {torch.get_num_threads()}, {args.rows} rows x {args.steps} steps, nucleus size "
          f"median {sizes[len(sizes) // 2]} p90 {sizes[int(len(sizes) * 0.9)]} max {sizes[-1]} of "
          f"{batches[0].shape[-1]} tokens; load {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print(f"ours {ours_ms:.1f} ms per batch step | transformers' warpers + multinomial {baseline_ms:.1f} ms")
    print(json.dumps({"bench": "serve_sampling", "rows": args.rows, "steps": args.steps,
                      "temperature": TEMPERATURE, "top_p": TOP_P, "ours_ms": round(ours_ms, 2),
                      "baseline_ms": round(baseline_ms, 2), "ratio": round(baseline_ms / ours_ms, 2),
                      "nucleus_median": sizes[len(sizes) // 2], "torch_threads": torch.get_num_threads(),
                      "load_average": [round(load_start[0], 2), round(load_end[0], 2)]}))


if __name__ == "__main__":
    main()
