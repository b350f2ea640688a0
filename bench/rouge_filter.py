"""ROUGE-L near-duplicate filtering: rouge_score the Alpaca way versus alpaca_jobs.generate.rouge.

    PYTHONSAFEPATH=1 .venv/bin/python bench/rouge_filter.py [--baseline-size 2000] [--size 52000]

Data: synthetic English instructions (tests/support/synthetic.py) with ~10% near-duplicates and ~1%
built to score exactly 0.7 against an earlier one. Both sides start from the 175 built-in seed
instructions and drop a candidate whose F-measure against any seed or kept instruction is above the
threshold, keeping the rest. The baseline is rouge_score as Alpaca's generator uses it: every
candidate pre-tokenised and scored with `_score_lcs` against every kept one, in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # support.synthetic

from rouge_score import rouge_scorer  # noqa: E402
from support.synthetic import SyntheticTasks  # noqa: E402

from alpaca_jobs.generate.rouge import RougeLFilter, tokenize  # noqa: E402
from alpaca_jobs.generate.seeds import load_seed_tasks  # noqa: E402


def baseline(instructions: list[str], seeds: list[str], threshold: float) -> tuple[list[bool], int]:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pool = [scorer._tokenizer.tokenize(s) for s in seeds]
    decisions, ties = [], 0
    for text in instructions:
        tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, other).fmeasure for other in pool]
        best = max(scores, default=0.0)
        ties += any(abs(s - threshold) < 1e-9 for s in scores)
        drop = best > threshold
        decisions.append(drop)
        if not drop:
            pool.append(tokens)
    return decisions, ties


def ours(instructions: list[str], seeds: list[str], threshold: float) -> list[bool]:
    rouge = RougeLFilter(threshold)
    for seed in seeds:
        rouge.add(tokenize(seed))
    decisions = []
    for text in instructions:
        tokens = tokenize(text)
        drop = rouge.too_similar(tokens)
        decisions.append(drop)
        if not drop:
            rouge.add(tokens)
    return decisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-size", type=int, default=2000)
    parser.add_argument("--size", type=int, default=52000)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    seeds = [task.instruction for task in load_seed_tasks()]
    instructions = SyntheticTasks(args.seed).instructions(max(args.size, args.baseline_size), near_duplicate_rate=0.1, tie_rate=0.01)
    head = instructions[: args.baseline_size]

    print(f"ROUGE-L filter, threshold {args.threshold}, {len(seeds)} seed instructions")
    start = time.perf_counter()
    expected, ties = baseline(head, seeds, args.threshold)
    baseline_s = time.perf_counter() - start
    print(f"  rouge_score, Alpaca's way, {len(head):>6} candidates: {baseline_s:8.2f} s, kept {expected.count(False)}")

    start = time.perf_counter()
    got = ours(head, seeds, args.threshold)
    ours_s = time.perf_counter() - start
    identical = got == expected
    print(f"  ours,                      {len(head):>6} candidates: {ours_s:8.3f} s, kept {got.count(False)}")
    print(f"  identical keep/drop decisions: {identical} ({ties} candidates scored exactly the threshold against some instruction)")

    start = time.perf_counter()
    big = ours(instructions[: args.size], seeds, args.threshold)
    big_s = time.perf_counter() - start
    print(f"  ours,                      {args.size:>6} candidates: {big_s:8.2f} s, kept {big.count(False)}")

    ratio = baseline_s / ours_s
    print(f"  speed-up on {len(head)}: {ratio:.0f}x")
    print(
        json.dumps(
            {
                "bench": "rouge_filter",
                "ours": {"seconds": round(ours_s, 4), "seconds_52k": round(big_s, 2), "kept_52k": big.count(False), "size": args.size},
                "baseline": {"seconds": round(baseline_s, 2), "candidates": len(head)},
                "ratio": round(ratio, 1),
                "identical": identical,
                "ties_at_threshold": ties,
            }
        )
    )


if __name__ == "__main__":
    main()
