"""The quickstart's generation step, two settings side by side, to their target on one `alpaca serve`.

    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_quickstart.py --baseline teacher.maxConcurrency=8 [--rounds 1]
    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_quickstart.py --ours generation.maxTokens=256 --baseline '' ...
    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_quickstart.py --baseline '' --baseline-api --target 16
    PYTHONSAFEPATH=1 .venv/bin/python bench/generate_quickstart.py --baseline '' --dtype bfloat16 --baseline-dtype float32 --target 8

One process serves the builtin SmolLM2-135M-Instruct with the real `alpaca serve` app (uvicorn on
127.0.0.1, the batch size of examples/quickstart/00-teacher.yaml). Against it, the real workload
(`alpaca_jobs.generate.runner.generate`: journal, filters, ROUGE-L, manifest) runs the spec of
examples/quickstart/10-dataset.yaml as an in-cluster teacher's dataset (so requests in flight at the
target are cancelled, as in the quickstart) with `--ours` overrides, then with `--baseline` overrides,
each from an empty output folder, alternating for `--rounds`. Both sides send the same request
seeds. Reported per side: seconds to the target, requests, tokens, and what the teacher decoded per
second; the ratio is baseline seconds / ours (above 1: ours reaches the target sooner). The machine's
load average is printed beside every run: on a shared machine only the ratio carries. With
`--baseline-dtype` the baseline gets a server of its own, of that dtype, loaded beside ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.append(str(Path(__file__).resolve().parent))

from teacher_yield import MODEL, start_server  # noqa: E402

from alpaca_jobs.generate.runner import RunOptions, generate  # noqa: E402
from alpaca_operator.api.workloads import GenerateConfig  # noqa: E402

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart"


def overrides(text: str) -> dict[str, Any]:
    """`a.b=1,c.d=x` as a nested dict of spec fields (values read as YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        path, _, value = item.partition("=")
        *parents, leaf = path.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = yaml.safe_load(value)
    return nested


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def quickstart_spec() -> dict[str, Any]:
    return yaml.safe_load((QUICKSTART / "10-dataset.yaml").read_text())["spec"]


def run_once(base_url: str, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="generate-quickstart-") as folder:
        config = GenerateConfig.model_validate({
            "name": "bench", "spec": spec, "output": folder, "teacherURL": base_url, "teacherModel": MODEL,
        })
        load = os.getloadavg()[0]
        started = time.perf_counter()
        manifest = generate(config, options=RunOptions(progress_bar=False))
        seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "kept": manifest.kept,
        "requests": manifest.requests,
        "cancelled": manifest.cancelled_requests,
        "prompt_tokens": manifest.prompt_tokens,
        "completion_tokens": manifest.completion_tokens,
        "completion_tokens_per_s": round(manifest.completion_tokens / seconds, 2),
        "filtered": manifest.filtered,
        "load_average": [round(load, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", default="", help="spec overrides of ours, e.g. teacher.maxConcurrency=8 (default: none)")
    parser.add_argument("--baseline", required=True, help="spec overrides of the baseline ('' for the quickstart as is)")
    parser.add_argument("--target", type=int, default=None, help="numExamples (default: the quickstart's)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--baseline-api", action="store_true",
        help="the baseline names the same server as an API teacher (baseURL): its answers in flight at the target "
        "are awaited and it sends only what the yield guess needs, as every teacher was treated before",
    )
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: the quickstart teacher's maxBatchSize")
    parser.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16"], help="default: the quickstart teacher's dtype")
    parser.add_argument(
        "--baseline-dtype", default=None, choices=["auto", "float32", "bfloat16"],
        help="the baseline's own server, of this dtype, beside ours (default: both sides share ours)",
    )
    args = parser.parse_args()
    teacher = yaml.safe_load((QUICKSTART / "00-teacher.yaml").read_text())["spec"]
    batch_size = args.max_batch_size or teacher["batching"]["maxBatchSize"]
    dtype = args.dtype or teacher.get("dtype", "auto")
    base_url, _server = start_server(batch_size, dtype=dtype)
    baseline_dtype = args.baseline_dtype or dtype
    # A second server only when the dtypes differ: one at a time serves, so they never share the cores.
    baseline_url = base_url if baseline_dtype == dtype else start_server(batch_size, dtype=baseline_dtype)[0]
    urls = {"ours": base_url, "baseline": baseline_url}
    spec = quickstart_spec()
    spec["teacher"] = {k: v for k, v in spec["teacher"].items() if k != "modelServerRef"} | {"modelServerRef": {"name": "teacher"}}
    if args.target is not None:
        spec["generation"]["numExamples"] = args.target
    sides = {"ours": merged(spec, overrides(args.ours)), "baseline": merged(spec, overrides(args.baseline))}
    if args.baseline_api:
        teacher_spec = {k: v for k, v in sides["baseline"]["teacher"].items() if k != "modelServerRef"}
        sides["baseline"]["teacher"] = teacher_spec | {"baseURL": baseline_url, "model": MODEL}
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
    for round_ in range(args.rounds):
        # Alternate which side goes first, so a change of load mid-run does not favour one side.
        for side in (("ours", "baseline") if round_ % 2 == 0 else ("baseline", "ours")):
            result = run_once(urls[side], sides[side])
            results[side].append(result)
            print(f"round {round_} {side:8s}", json.dumps(result), flush=True)
    total = {side: sum(r["seconds"] for r in runs) for side, runs in results.items()}
    print(json.dumps({
        "bench": "generate_quickstart",
        "ours": {"overrides": args.ours, "seconds": total["ours"], "runs": results["ours"]},
        "baseline": {"overrides": args.baseline, "seconds": total["baseline"], "runs": results["baseline"]},
        "baseline_api": args.baseline_api,
        "max_batch_size": batch_size,
        "dtype": dtype,
        "baseline_dtype": baseline_dtype,
        "ratio": round(total["baseline"] / total["ours"], 2),
    }))


if __name__ == "__main__":
    main()
