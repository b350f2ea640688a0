"""Kept instructions per second: `alpaca generate` versus Alpaca's one-request-at-a-time loop.

    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_throughput.py [--examples 3000] [--concurrency 32]

Both talk to the same local OpenAI-compatible teacher (tests/support/teacher.py, in its own process)
that answers every request after a fixed 200 ms with 17 synthetic tasks. The baseline does what
Alpaca's generator does: one request, wait, parse, filter (same filters, ROUGE-L included), repeat.
Ours is the real workload (`alpaca_jobs.generate.runner.generate`: journal, filters, manifest),
with `maxConcurrency` requests in flight.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # support.teacher

import openai  # noqa: E402

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
        for item in parse_completion(choice.message.content or "", 4, truncated=choice.finish_reason == "length"):
            if item.task is None or filters.reason_to_drop(item.task.instruction):
                continue
            tokens = tokenize(item.task.instruction)
            if not rouge.too_similar(tokens):
                rouge.add(tokens)
                kept += 1
    return kept, time.perf_counter() - start


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
    parser.add_argument("--baseline-requests", type=int, default=25, help="requests the baseline sends")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay", type=float, default=0.2, help="teacher's answer time in seconds")
    args = parser.parse_args()

    receive, send = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(args.delay, send), daemon=True)
    server.start()
    base_url = f"http://127.0.0.1:{receive.recv()}/v1"
    try:
        print(f"teacher answers after {args.delay * 1000:.0f} ms with 17 tasks per request")
        base_kept, base_s = baseline(base_url, args.baseline_requests)
        base_rate = base_kept / base_s
        print(f"  one at a time: {args.baseline_requests} requests, kept {base_kept} in {base_s:.2f} s = {base_rate:.0f}/s")
        our_kept, our_requests, our_s = ours(base_url, args.examples, args.concurrency)
        our_rate = our_kept / our_s
        print(f"  alpaca generate, {args.concurrency} in flight: {our_requests} requests, kept {our_kept} in {our_s:.2f} s = {our_rate:.0f}/s")
    finally:
        server.terminate()
    ratio = our_rate / base_rate
    print(f"  speed-up: {ratio:.1f}x")
    print(
        json.dumps(
            {
                "bench": "generate_throughput",
                "ours": {"kept_per_s": round(our_rate, 1), "kept": our_kept, "seconds": round(our_s, 2), "concurrency": args.concurrency},
                "baseline": {"kept_per_s": round(base_rate, 1), "kept": base_kept, "seconds": round(base_s, 2)},
                "ratio": round(ratio, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
