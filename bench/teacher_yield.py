"""Teacher yield, numbered vs structured mode, and the cost of a schema in `alpaca serve`.

    PYTHONSAFEPATH=1 .venv/bin/python bench/teacher_yield.py [--requests 16] [--clients 16] [--overhead-clients 16] [--overhead-requests 2]
    PYTHONSAFEPATH=1 .venv/bin/python bench/teacher_yield.py --settings [--requests 16] [--clients 16]

One process serves the builtin SmolLM2-135M-Instruct with the real `alpaca serve` app (uvicorn on
127.0.0.1). Against it, in the same run:
- yield: the quickstart's generation settings (completions API, 8 slots, 3 seed tasks shown,
  maxTokens 384, temperature 0.7, top_p 0.9) and the same request seeds, once as numbered text
  (Alpaca's format, the baseline) and once structured (a JSON array under a json_schema
  response_format). The answers go through the generator's own teacher client, parser, filters and
  ROUGE-L (GenerationState), so the kept counts are what `alpaca generate` would keep.
- settings (`--settings`, instead of the two above): numbered mode with the quickstart's generation
  settings as examples/quickstart/10-dataset.yaml has them now (ours) against the settings it had
  before (8 slots, maxTokens 384: the baseline), the same request seeds; kept per completion token
  is what sets the quickstart's generation time on a CPU teacher.
- overhead: `--overhead-clients` concurrent openai clients, each sending `--overhead-requests` chat requests
  one after another, with and without a schema; completion tokens per second of wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))

import httpx  # noqa: E402
import openai  # noqa: E402

from alpaca_jobs.generate.checkpoint import Record  # noqa: E402
from alpaca_jobs.generate.prompt import build_prompt, build_structured_prompt, choose_examples, open_slots, request_rng  # noqa: E402
from alpaca_jobs.generate.retry import RetryPolicy  # noqa: E402
from alpaca_jobs.generate.seeds import load_seed_tasks  # noqa: E402
from alpaca_jobs.generate.state import GenerationState  # noqa: E402
from alpaca_jobs.generate.teacher import Teacher  # noqa: E402
from alpaca_operator.api.instructdataset import TeacherAPI, TeacherFormat  # noqa: E402
from alpaca_operator.api.workloads import GenerateConfig  # noqa: E402

MODEL = "smollm2"
QUICKSTART_DATASET = Path(__file__).resolve().parents[1] / "examples" / "quickstart" / "10-dataset.yaml"
# The quickstart's generation settings before they were tuned by this benchmark's --settings run.
GENERATION = {"numExamples": 1_000_000, "instructionsPerRequest": 8, "maxTokens": 384, "temperature": 0.7, "topP": 0.9}


def quickstart_generation() -> dict[str, Any]:
    """The generation settings examples/quickstart/10-dataset.yaml declares now."""
    import yaml

    declared = yaml.safe_load(QUICKSTART_DATASET.read_text())["spec"]["generation"]
    return {**declared, "numExamples": 1_000_000}


def start_server(max_batch_size: int, dtype: str = "auto") -> tuple[str, Any]:
    import uvicorn

    from alpaca_jobs.serve.api import create_app
    from alpaca_jobs.serve.loading import load
    from alpaca_jobs.serve.serving import ServeOptions
    from alpaca_operator.api.workloads import ResolvedModel

    options = ServeOptions(served_model_name=MODEL, max_batch_size=max_batch_size, max_queue=256, max_new_tokens=1536)
    app = create_app(lambda: load(ResolvedModel(builtin="smollm2-135m-instruct"), device="cpu", dtype=dtype), options)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return base + "/v1", server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("alpaca serve did not become ready")


def _config(base_url: str, teacher_format: TeacherFormat, generation: dict[str, Any] | None = None) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "name": "bench",
        "spec": {"teacher": {"baseURL": base_url, "model": MODEL, "api": "completions", "format": teacher_format.value},
                 "generation": generation or GENERATION, "output": {"uri": "file:///unused"}},
        "output": "unused", "teacherURL": base_url, "teacherModel": MODEL,
        "pricing": {"inputUSDPerMillionTokens": 0.0, "outputUSDPerMillionTokens": 0.0},
    })


async def teacher_yield(
    base_url: str, teacher_format: TeacherFormat, requests: int, clients: int, generation_settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`requests` teacher requests, `clients` at a time, read as the generator reads them."""
    config = _config(base_url, teacher_format, generation_settings)
    spec = config.spec
    generation = spec.generation
    seeds = [s.as_task() for s in load_seed_tasks()]
    state = GenerationState(seeds, spec, config.pricing)
    teacher = Teacher(base_url=base_url, model=MODEL, api_key=None, generation=generation, timeout_s=3600,
                      api=TeacherAPI.COMPLETIONS, format=teacher_format, retry=RetryPolicy(max_retries=2))
    wanted = open_slots(generation.instructions_per_request, generation.seed_tasks_per_prompt,
                        generation.generated_tasks_per_prompt)
    gate = asyncio.Semaphore(clients)
    answers: dict[int, Record] = {}

    async def ask(request: int) -> None:
        examples = choose_examples(seeds, [], generation.seed_tasks_per_prompt, 0, request_rng(generation.random_seed, request))
        prompt = (build_structured_prompt(examples, wanted) if teacher_format is TeacherFormat.STRUCTURED
                  else build_prompt(examples, generation.instructions_per_request))
        async with gate:
            answer = await teacher.complete(prompt)
        answers[request] = Record(request, len(examples) + 1, "answered", content=answer.content,
                                  finish_reason=answer.finish_reason, prompt_tokens=answer.prompt_tokens,
                                  completion_tokens=answer.completion_tokens, problem=answer.problem)

    started = time.perf_counter()
    await asyncio.gather(*(ask(r) for r in range(requests)))
    seconds = time.perf_counter() - started
    await teacher.close()
    for request in sorted(answers):  # in request order, as the journal would replay them
        state.apply(answers[request])
    tokens = state.prompt_tokens + state.completion_tokens
    malformed = state.filtered.get("malformed", 0) + sum(state.failed_requests.values())
    return {
        "requests": state.requests,
        "generated": state.generated,
        "kept": len(state.kept),
        "kept_per_request": round(len(state.kept) / requests, 3),
        "prompt_tokens": state.prompt_tokens,
        "completion_tokens": state.completion_tokens,
        "kept_per_1k_tokens": round(1000 * len(state.kept) / tokens, 3) if tokens else 0.0,
        "kept_per_1k_completion_tokens": round(1000 * len(state.kept) / state.completion_tokens, 3)
        if state.completion_tokens else 0.0,
        "malformed_fraction": round(malformed / max(1, state.generated), 3),
        "filtered": dict(sorted(state.filtered.items())),
        "seconds": round(seconds, 1),
        "seconds_per_kept": round(seconds / len(state.kept), 2) if state.kept else None,
        "examples": [t.as_record() for t in state.kept[:3]],
    }


# Long enough (at least 24 non-empty steps) that every answer runs to max_tokens, as the plain ones
# do: both sides decode the same number of tokens per request, so tokens/s compares decode steps.
OVERHEAD_SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"},
                   "steps": {"type": "array", "items": {"type": "string", "pattern": "\\S"}, "minItems": 24}},
    "required": ["title", "steps"],
    "additionalProperties": False,
}


async def throughput(base_url: str, clients: int, per_client: int, schema: bool) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    extra: dict[str, Any] = {}
    if schema:
        extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "recipe", "schema": OVERHEAD_SCHEMA}}
    tokens = 0

    async def one(index: int) -> None:
        nonlocal tokens
        for round_ in range(per_client):
            response = await client.chat.completions.create(
                model=MODEL, max_tokens=96, temperature=0.7, seed=index * 100 + round_,
                messages=[{"role": "user", "content": f"Write recipe number {index + 1} for a soup, as steps."}], **extra)
            tokens += response.usage.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    seconds = time.perf_counter() - started
    await client.close()
    return {"completion_tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 2),
            "requests": clients * per_client}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="teacher requests per mode")
    parser.add_argument("--clients", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--overhead-clients", type=int, default=16, help="concurrent clients in the overhead part")
    parser.add_argument("--overhead-requests", type=int, default=2, help="chat requests per client in the overhead part")
    parser.add_argument("--settings", action="store_true", help="compare the quickstart's settings, old and current (numbered mode)")
    parser.add_argument("--skip-yield", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    base_url, _server = start_server(max(args.clients, args.overhead_clients))
    report: dict[str, Any] = {"bench": "teacher_yield", "ours": {}, "baseline": {}}
    if args.settings:
        import os

        report["bench"] = "teacher_yield_settings"
        report["load_average"] = os.getloadavg()
        current = quickstart_generation()
        before = asyncio.run(teacher_yield(base_url, TeacherFormat.NUMBERED, args.requests, args.clients))
        print("before    ", json.dumps(before), flush=True)
        now = asyncio.run(teacher_yield(base_url, TeacherFormat.NUMBERED, args.requests, args.clients, current))
        print("now       ", json.dumps(now), flush=True)
        report["settings"] = {"baseline": GENERATION, "ours": current}
        for key in ("kept_per_request", "kept_per_1k_tokens", "kept_per_1k_completion_tokens", "malformed_fraction", "seconds_per_kept"):
            report["ours"][key] = now[key]
            report["baseline"][key] = before[key]
        base = before["kept_per_1k_completion_tokens"]
        report["ratio"] = round(now["kept_per_1k_completion_tokens"] / base, 2) if base else None
        report["load_average_after"] = os.getloadavg()
        print(json.dumps(report))
        return
    if not args.skip_yield:
        numbered = asyncio.run(teacher_yield(base_url, TeacherFormat.NUMBERED, args.requests, args.clients))
        print("numbered  ", json.dumps(numbered), flush=True)
        structured = asyncio.run(teacher_yield(base_url, TeacherFormat.STRUCTURED, args.requests, args.clients))
        print("structured", json.dumps(structured), flush=True)
        for key in ("kept_per_request", "kept_per_1k_tokens", "kept_per_1k_completion_tokens", "malformed_fraction"):
            report["ours"][key] = structured[key]
            report["baseline"][key] = numbered[key]
        base = numbered["kept_per_1k_tokens"]
        report["ratio"] = round(structured["kept_per_1k_tokens"] / base, 2) if base else None
    if not args.skip_overhead:
        asyncio.run(throughput(base_url, 2, 1, True))  # warm: the schema's first compilation, the first batch
        plain = asyncio.run(throughput(base_url, args.overhead_clients, args.overhead_requests, False))
        constrained = asyncio.run(throughput(base_url, args.overhead_clients, args.overhead_requests, True))
        print("no schema ", json.dumps(plain), flush=True)
        print("schema    ", json.dumps(constrained), flush=True)
        report["ours"]["tokens_per_s_with_schema"] = constrained["tokens_per_s"]
        report["baseline"]["tokens_per_s_without_schema"] = plain["tokens_per_s"]
        report["schema_speed_ratio"] = round(constrained["tokens_per_s"] / plain["tokens_per_s"], 3)
        report.setdefault("ratio", report["schema_speed_ratio"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
