"""Where one client's decode time goes in `alpaca serve`'s engine: its step loop against a bare
transformers forward loop on the same model, cache and prompt, and the share of the matrix products.

    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_profile.py                  # 128 tokens, 1 thread
    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_profile.py --dtype bfloat16 --threads 2

Both decode the builtin SmolLM2-135M-Instruct greedily, one token per forward pass, in this process:

- ours: `Engine.step()` (admission, batching bookkeeping, sampling, detokenization, stop strings);
- baseline: `model(input_ids=next, cache=DynamicCache)` and an argmax, nothing else (the floor for any
  engine built on the transformers model).

The ratio is baseline / ours in milliseconds per token (1.0: the engine costs nothing beyond the
forward pass). A cProfile of the engine's run then splits its time into torch's linear layers (the
weights read once per token: memory-bound on CPU) and the rest (attention, norms, Python). The
load average is printed beside the figures: on a shared machine they compare only within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import time

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about a robot learning to paint."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the median is reported")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    import torch
    from transformers import DynamicCache

    from alpaca_jobs.serve import batch
    from alpaca_jobs.serve.engine import Engine
    from alpaca_jobs.serve.loading import load
    from alpaca_jobs.serve.sampling import SamplingParams
    from alpaca_operator.api.workloads import ResolvedModel

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    loaded = load(ResolvedModel(builtin=MODEL), device="cpu", dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
    loop = asyncio.new_event_loop()
    keyword = batch.cache_keyword(model)

    def engine_run() -> tuple[float, int]:
        engine = Engine(model, tokenizer, max_batch_size=1)
        engine.submit([prompt], SamplingParams(max_tokens=args.max_tokens, temperature=0.0), 1, loop)
        engine.step()  # the prefill and the first token: timed apart from decoding
        started, steps = time.perf_counter(), 0
        while engine.running:
            engine.step()
            steps += 1
        return (time.perf_counter() - started) / max(steps, 1), steps

    def bare_run() -> float:
        cache = DynamicCache()
        out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1, **{keyword: cache})
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        started = time.perf_counter()
        for _ in range(args.max_tokens - 1):
            out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{keyword: cache})
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - started) / (args.max_tokens - 1)

    engine_run(), bare_run()  # warm-up
    load_before = round(os.getloadavg()[0], 2)
    ours, baseline, steps = [], [], 0
    for _ in range(args.repeats):
        seconds, steps = engine_run()
        ours.append(seconds)
        baseline.append(bare_run())
    profile = cProfile.Profile()
    profile.enable()
    engine_run()
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())  # tottime of every function: the whole run
    linear = sum(entry[2] for key, entry in stats.items() if key[2] in ("<built-in method torch._C._nn.linear>",))
    load_after = round(os.getloadavg()[0], 2)

    ours_ms, baseline_ms = statistics.median(ours) * 1000, statistics.median(baseline) * 1000
    print(f"load average {load_before} before, {load_after} after; {args.dtype}, {args.threads} thread(s); "
          f"{steps} decode steps")
    print(f"engine step loop   {ours_ms:7.1f} ms/token")
    print(f"bare forward loop  {baseline_ms:7.1f} ms/token   (baseline / ours {baseline_ms / ours_ms:.2f})")
    print(f"linear layers      {100 * linear / total:5.1f}% of the engine's profiled time")
    print(json.dumps({
        "bench": "serve_profile",
        "ours": {"ms_per_token": round(ours_ms, 2), "linear_share": round(linear / total, 3)},
        "baseline": {"ms_per_token": round(baseline_ms, 2)},
        "ratio": round(baseline_ms / ours_ms, 3),
        "dtype": args.dtype, "threads": args.threads, "max_tokens": args.max_tokens,
        "load_average": {"before": load_before, "after": load_after},
    }))


if __name__ == "__main__":
    main()
