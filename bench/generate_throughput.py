"""Kept instructions per second: `alpaca generate` versus two loops shaped like Alpaca's generator.

    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_throughput.py [--examples 3000] [--concurrency 32]

All talk to the same local OpenAI-compatible teacher (tests/support/teacher.py, in its own process)
that answers every request after a fixed 200 ms with 17 synthetic tasks per prompt. The baselines:
- Alpaca's loop as it was written (generate_instruction.py): 5 prompts in one completions request,
  one request in flight, and ROUGE-L by rouge_score against the whole growing pool of instructions
  (spread over every core with a process pool, as Alpaca did);
- one prompt per request, one at a time, with our filters and ROUGE-L (today's figure).
Ours is the real workload (`alpaca_jobs.generate.runner.generate`: journal, filters, manifest),
with `maxConcurrency` requests in flight. The headline ratio is against Alpaca's loop.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # support.teacher

import openai  # noqa: E402
from rouge_score import rouge_scorer  # noqa: E402

from alpaca_jobs.generate.filters import InstructionFilters  # noqa: E402
from alpaca_jobs.generate.parse import parse_completion  # noqa: E402
from alpaca_jobs.generate.prompt import build_prompt, choose_examples, request_rng  # noqa: E402
from alpaca_jobs.generate.rouge import RougeLFilter, tokenize  # noqa: E402
from alpaca_jobs.generate.runner import RunOptions, generate  # noqa: E402
from alpaca_jobs.generate.seeds import load_seed_tasks  # noqa: E402
from alpaca_operator.api.instructdataset import Filters, Generation  # noqa: E402
from alpaca_operator.api.workloads import GenerateConfig  # noqa: E402


def _serve(delay_s: float, port_out: multiprocessing.connection.Connection) -> None:
    from support.teacher import TeacherServer

    server = TeacherServer(delay_s=delay_s).start()
    port_out.send(server.port)
    port_out.close()
    while True:
        time.sleep(3600)


def baseline(base_url: str, requests: int) -> tuple[int, float]:
    """Alpaca's loop: one request at a time, each answer filtered before the next is sent."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=3)
    generation = Generation()
    seeds = [s.as_task() for s in load_seed_tasks()]
    filters = InstructionFilters(Filters())
    rouge = RougeLFilter(0.7)
    for seed in seeds:
        rouge.add(tokenize(seed.instruction))
    kept = 0
    start = time.perf_counter()
    for request in range(requests):
        examples = choose_examples(seeds, [], 3, 0, request_rng(0, request))
        completion = client.chat.completions.create(
            model="teacher",
            messages=[{"role": "user", "content": build_prompt(examples, 20)}],
            temperature=generation.temperature,
            top_p=generation.top_p,
            max_tokens=generation.max_tokens,
        )
        choice = completion.choices[0]
        for item in parse_completion(choice.message.content or "", 4, truncated=choice.finish_reason == "length", last_slot=20):
            if item.task is None or filters.reason_to_drop(item.task.instruction):
                continue
            tokens = tokenize(item.task.instruction)
            if not rouge.too_similar(tokens):
                rouge.add(tokens)
                kept += 1
    return kept, time.perf_counter() - start


def alpaca_loop(base_url: str, requests: int, prompts_per_request: int = 5) -> tuple[int, float]:
    """Alpaca's generate_instruction.py: batched prompts, one request at a time, rouge_score ROUGE-L."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=3)
    generation = Generation()
    seeds = [s.as_task() for s in load_seed_tasks()]
    filters = InstructionFilters(Filters())
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool_tokens = [scorer._tokenizer.tokenize(seed.instruction) for seed in seeds]
    kept = 0
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for request in range(requests):
            prompts = [
                build_prompt(choose_examples(seeds, [], 3, 0, request_rng(0, request * prompts_per_request + i)), 20)
                for i in range(prompts_per_request)
            ]
            completion = client.completions.create(
                model="teacher", prompt=prompts, temperature=generation.temperature, top_p=generation.top_p,
                max_tokens=generation.max_tokens, stop=["\n21. Instruction"],
            )
            for choice in completion.choices:
                for item in parse_completion(choice.text or "", 4, truncated=choice.finish_reason == "length", last_slot=20):
                    if item.task is None or filters.reason_to_drop(item.task.instruction):
                        continue
                    tokens = scorer._tokenizer.tokenize(item.task.instruction)
                    scores = pool.map(_lcs_f1, [(tokens, old) for old in pool_tokens], chunksize=256)
                    if max(scores) > 0.7:
                        continue
                    pool_tokens.append(tokens)
                    kept += 1
    return kept, time.perf_counter() - start


def _lcs_f1(pair: tuple[list[str], list[str]]) -> float:
    return rouge_scorer._score_lcs(pair[0], pair[1]).fmeasure


def ours(base_url: str, examples: int, concurrency: int) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as folder:
        config = GenerateConfig.model_validate(
            {
                "name": "bench",
                "spec": {
                    "teacher": {"baseURL": base_url, "model": "teacher", "maxConcurrency": concurrency},
                    "generation": {"numExamples": examples},
                    "output": {"uri": f"file://{folder}"},
                },
                "output": folder,
                "teacherURL": base_url,
                "teacherModel": "teacher",
            }
        )
        start = time.perf_counter()
        manifest = generate(config, options=RunOptions(progress_bar=False))
        return manifest.kept, manifest.requests, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=3000, help="examples ours keeps")
    parser.add_argument("--baseline-requests", type=int, default=25, help="requests each baseline sends")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.2, help="teacher's answer time in seconds")
    args = parser.parse_args()

    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(args.delay, send), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{receive.recv()}/v1"
    try:
        print(f"teacher answers after {args.delay * 1000:.0f} ms with 17 tasks per request")
        alpaca_kept, alpaca_s = alpaca_loop(base_url, args.baseline_requests)
        alpaca_rate = alpaca_kept / alpaca_s
        print(f"  Alpaca's loop (5 prompts a request, rouge_score): {args.baseline_requests} requests, kept {alpaca_kept} in {alpaca_s:.2f} s = {alpaca_rate:.0f}/s")
        base_kept, base_s = baseline(base_url, args.baseline_requests)
        base_rate = base_kept / base_s
        print(f"  one prompt at a time: {args.baseline_requests} requests, kept {base_kept} in {base_s:.2f} s = {base_rate:.0f}/s")
        our_kept, our_requests, our_s = ours(base_url, args.examples, args.concurrency)
        our_rate = our_kept / our_s
        print(f"  alpaca generate, {args.concurrency} in flight: {our_requests} requests, kept {our_kept} in {our_s:.2f} s = {our_rate:.0f}/s")
    finally:
        server.terminate()
    ratio = our_rate / alpaca_rate
    print(f"  speed-up: {ratio:.1f}x over Alpaca's loop, {our_rate / base_rate:.1f}x over one prompt at a time")
    print(
        json.dumps(
            {
                "bench": "generate_throughput",
                "ours": {"kept_per_s": round(our_rate, 1), "kept": our_kept, "seconds": round(our_s, 2), "concurrency": args.concurrency},
                "baseline": {"name": "alpaca_loop", "kept_per_s": round(alpaca_rate, 1), "kept": alpaca_kept, "seconds": round(alpaca_s, 2)},
                "ratio": round(ratio, 1),
                "one_at_a_time": {"kept_per_s": round(base_rate, 1), "kept": base_kept, "seconds": round(base_s, 2)},
                "ratio_vs_one_at_a_time": round(our_rate / base_rate, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
