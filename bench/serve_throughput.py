"""Throughput of `alpaca serve` under concurrent clients, against plain `generate` one request at a time.

    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_throughput.py            # 16 clients, SmolLM2, CPU
    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_throughput.py --clients 4 --max-tokens 64

Ours: the real `alpaca serve` subprocess (builtin SmolLM2-135M-Instruct unless --model), answering
--clients concurrent openai clients, each sending one instruction from the project's seed tasks.
Baseline: the same model loaded in this process, answering the same instructions one at a time
with `model.generate`. Both decode greedily up to --max-tokens, so both produce the same amount
of work; the figure is generated tokens per second of wall time. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import httpx
import openai


def instructions(count: int) -> list[str]:
    lines = resources.files("alpaca_jobs.seeds").joinpath("seed_tasks.jsonl").read_text().splitlines()
    tasks = [json.loads(line) for line in lines if line.strip()]
    out = []
    for task in tasks[:count]:
        instance = task["instances"][0]
        out.append(task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else ""))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, port: int, batch: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "alpaca_operator.cli", "serve", "--model", model, "--port", str(port),
               "--served-model-name", "bench", "--max-batch-size", str(batch), "--max-new-tokens", "4096",
               "--log-level", "warning"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"alpaca serve exited with {process.returncode}:\n{process.stderr.read()}")
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("alpaca serve did not become ready")


def run_ours(base: str, prompts: list[str], max_tokens: int, clients: int) -> dict:
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=3600)

    def one(prompt: str) -> tuple[str, int, float, float]:
        started = time.perf_counter()
        first = None
        text, tokens = "", 0
        stream = client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    first = first or time.perf_counter()
                    text += choice.delta.content
        return text, tokens, (first or time.perf_counter()) - started, time.perf_counter() - started

    one("Say hello.")  # warm-up: first-call allocations are not throughput
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, prompts))
    wall = time.perf_counter() - started
    tokens = sum(r[1] for r in results)
    latencies = sorted(r[3] for r in results)
    return {
        "texts": [r[0] for r in results],
        "generated_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "p50_latency_s": round(latencies[len(latencies) // 2], 2),
        "p50_time_to_first_token_s": round(sorted(r[2] for r in results)[len(results) // 2], 2),
    }


def run_baseline(model_name: str, prompts: list[str], max_tokens: int) -> dict:
    import torch

    from alpaca_jobs.serve.loading import load
    from alpaca_jobs.serve.prompts import PromptFormat, render_chat
    from alpaca_jobs.serve.protocol import ChatMessage
    from alpaca_jobs.serve.cli import _model_from_flag

    loaded = load(_model_from_flag(model_name, None), device="cpu")
    tok, model = loaded.tokenizer, loaded.model

    def generate(prompt: str) -> tuple[str, int]:
        text = render_chat([ChatMessage(role="user", content=prompt)], loaded.prompt_style, tok)
        ids = tok(text, add_special_tokens=loaded.prompt_style.format is not PromptFormat.CHAT, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        eos = set([tok.eos_token_id])
        count = next((i for i, t in enumerate(new) if t in eos), len(new))
        return tok.decode(new[:count], skip_special_tokens=True), count

    generate("Say hello.")
    started = time.perf_counter()
    results = [generate(p) for p in prompts]
    wall = time.perf_counter() - started
    tokens = sum(r[1] for r in results)
    return {"texts": [r[0] for r in results], "generated_tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    prompts = instructions(args.clients)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(args.model, port, batch=args.clients)
    try:
        print(f"starting alpaca serve with {args.model} ...", flush=True)
        wait_ready(base, server)
        ours = run_ours(base, prompts, args.max_tokens, args.clients)
        print(f"ours:     {ours['generated_tokens']} tokens in {ours['wall_s']} s = {ours['tokens_per_s']} tokens/s "
              f"({args.clients} concurrent clients, p50 latency {ours['p50_latency_s']} s, "
              f"p50 first token {ours['p50_time_to_first_token_s']} s)", flush=True)
    finally:
        server.terminate()
        server.wait(120)
    baseline = run_baseline(args.model, prompts, args.max_tokens)
    print(f"baseline: {baseline['generated_tokens']} tokens in {baseline['wall_s']} s = {baseline['tokens_per_s']} tokens/s "
          "(model.generate, one request at a time)", flush=True)
    same = sum(a == b for a, b in zip(ours.pop("texts"), baseline.pop("texts")))
    ratio = round(ours["tokens_per_s"] / baseline["tokens_per_s"], 2)
    print(f"ratio {ratio}x; {same}/{len(prompts)} greedy answers identical to generate's", flush=True)
    print(json.dumps({
        "bench": "serve_throughput",
        "ours": ours,
        "baseline": baseline,
        "ratio": ratio,
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "model": args.model,
        "identical_answers": f"{same}/{len(prompts)}",
    }))


if __name__ == "__main__":
    main()
