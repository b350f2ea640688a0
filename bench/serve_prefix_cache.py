"""The quickstart's generation requests on our engine, with prefix caching on and off, in one run.

    OMP_NUM_THREADS=1 PYTHONSAFEPATH=1 nice -n 10 .venv/bin/python bench/serve_prefix_cache.py [--requests 32] [--max-tokens 320]

SmolLM2-135M-Instruct as `alpaca serve` loads it (the builtin GGUF; --dtype bfloat16 as the
quickstart's teacher sets, or float32), in this process, on the engine `alpaca serve` runs (no HTTP).
The prompts are the quickstart's (jobs/generate/prompt.py: the built-in guidelines, 3 seed tasks
chosen as the workload chooses them for request i, 6 slots) with its stop sequence and maxTokens,
answered greedily so that both sides decode the same tokens; --concurrency requests are in
flight at a time, as the quickstart's teacher.maxConcurrency 16 keeps them. Each side gets a
fresh engine on the same model; --order sets which goes first.

Reported per side: seconds, prompt tokens prefilled and reused, seconds spent in prefill passes,
completion tokens and completion tokens/s, and the load average. The last line is JSON; its
"ratio" is seconds without the cache / seconds with it (above 1: the cache is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import torch

from alpaca_jobs.generate.parse import stop_sequence
from alpaca_jobs.generate.prompt import build_prompt, choose_examples, request_rng
from alpaca_jobs.generate.seeds import load_seed_tasks
from alpaca_jobs.serve.engine import Engine
from alpaca_jobs.serve.loading import load
from alpaca_jobs.serve.prompts import encode
from alpaca_jobs.serve.sampling import SamplingParams
from alpaca_operator.api.workloads import ResolvedModel

SLOTS, SEEDS_PER_PROMPT = 6, 3  # examples/quickstart/10-dataset.yaml and the spec's default


class TimedEngine(Engine):
    """The engine, with the wall time of its prefill passes added up."""

    prefill_seconds = 0.0

    def _prefill(self, sequences: list[Any]) -> None:
        started = time.perf_counter()
        try:
            super()._prefill(sequences)
        finally:
            self.prefill_seconds += time.perf_counter() - started


def quickstart_prompts(count: int, tokenizer: Any) -> list[list[int]]:
    seeds = [seed.as_task() for seed in load_seed_tasks()]
    texts = [build_prompt(choose_examples(seeds, [], SEEDS_PER_PROMPT, 0, request_rng(0, i)), SLOTS) for i in range(count)]
    return [encode(text, tokenizer, chat=False) for text in texts]  # as /v1/completions encodes them


async def serve_all(engine: Engine, prompts: list[list[int]], concurrency: int, params: SamplingParams
                    ) -> tuple[list[str], int]:
    """Every prompt answered, at most `concurrency` in flight; the answers and their tokens in all."""
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    answers = [""] * len(prompts)
    tokens = [0] * len(prompts)

    async def one(index: int) -> None:
        async with slots:
            handle = engine.submit([prompts[index]], params, 1, loop)
            while True:
                event = await handle.events.get()
                answers[index] += event.text
                if event.finish_reason is not None:
                    tokens[index] = event.completion_tokens
                    return

    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return answers, sum(tokens)


def run_side(loaded: Any, prompts: list[list[int]], cache_tokens: int, args: argparse.Namespace) -> dict[str, Any]:
    engine = TimedEngine(loaded.model, loaded.tokenizer, max_batch_size=args.concurrency,
                         max_prefill_tokens=2048, max_prefill_tokens_while_decoding=256,  # alpaca serve's defaults
                         prefix_cache_tokens=cache_tokens)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, stop=(stop_sequence(SLOTS),))
    load_start = os.getloadavg()
    engine.start()
    started = time.perf_counter()
    answers, completion = asyncio.run(serve_all(engine, prompts, args.concurrency, params))
    seconds = time.perf_counter() - started
    engine.stop()
    return {
        "prefix_cache_tokens": cache_tokens, "seconds": round(seconds, 1),
        "prompt_tokens": sum(len(p) for p in prompts), "prefilled_tokens": engine.prefilled_tokens,
        "reused_tokens": engine.prefix_hit_tokens, "prefill_seconds": round(engine.prefill_seconds, 1),
        "completion_tokens": completion, "completion_tokens_per_s": round(completion / seconds, 1),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "answers": answers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=320)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--prefix-cache-tokens", type=int, default=4096, help="the 'on' side's store bound")
    parser.add_argument("--order", default="off,on", help="which side runs first")
    args = parser.parse_args()
    loaded = load(ResolvedModel(builtin="smollm2-135m-instruct"), device="cpu", dtype=args.dtype)
    prompts = quickstart_prompts(args.requests, loaded.tokenizer)
    print(f"torch threads {torch.get_num_threads()}, {len(prompts)} prompts of {min(map(len, prompts))}-"
          f"{max(map(len, prompts))} tokens, load average {os.getloadavg()}", flush=True)
    sides: dict[str, dict[str, Any]] = {}
    for side in args.order.split(","):
        result = run_side(loaded, prompts, args.prefix_cache_tokens if side == "on" else 0, args)
        sides[side] = result
        print(f"{side:3s} {result['seconds']:7.1f} s | prefilled {result['prefilled_tokens']:6d} of "
              f"{result['prompt_tokens']} prompt tokens ({result['reused_tokens']} reused) in "
              f"{result['prefill_seconds']:.1f} s | {result['completion_tokens']} completion tokens, "
              f"{result['completion_tokens_per_s']} tokens/s | load {result['load_average_start'][0]} -> "
              f"{result['load_average_end'][0]}", flush=True)
    same = sum(a == b for a, b in zip(sides["on"].pop("answers"), sides["off"].pop("answers"), strict=True))
    print(json.dumps({"bench": "serve_prefix_cache", "dtype": args.dtype, "requests": args.requests,
                      "concurrency": args.concurrency, "max_tokens": args.max_tokens, "ours": sides["on"],
                      "baseline": sides["off"], "same_answers": same,
                      "ratio": round(sides["off"]["seconds"] / sides["on"]["seconds"], 2),
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
