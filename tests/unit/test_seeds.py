"""Checks on the project's own seed task set and held-out evaluation set (seeds/)."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

SEEDS_DIR = Path(__file__).resolve().parents[2] / "seeds"
SEED_FILE = SEEDS_DIR / "seed_tasks.jsonl"
EVAL_FILE = SEEDS_DIR / "eval_tasks.jsonl"

EXPECTED_KEYS = ["id", "name", "instruction", "instances", "is_classification"]
NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
ROUGE_THRESHOLD = 0.7
# The generation filters' blacklist: tasks a text-only model cannot do.
BLACKLIST = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
]
BLACKLIST_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in BLACKLIST) + r")\b", re.IGNORECASE)


def _load(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    tasks = []
    for n, line in enumerate(lines, start=1):
        assert line.strip(), f"{path.name}:{n}: blank line"
        try:
            tasks.append(json.loads(line))
        except json.JSONDecodeError as exc:  # pragma: no cover - failure path
            pytest.fail(f"{path.name}:{n}: invalid JSON: {exc}")
    return tasks


@pytest.fixture(scope="module")
def seeds() -> list[dict]:
    return _load(SEED_FILE)


@pytest.fixture(scope="module")
def evals() -> list[dict]:
    return _load(EVAL_FILE)


@pytest.fixture(scope="module")
def scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def _both(seeds, evals):
    return [("seed_task", seeds), ("eval_task", evals)]


def test_counts(seeds, evals):
    assert len(seeds) == 175
    assert len(evals) == 40


def test_ids_sequential_and_unique(seeds, evals):
    for prefix, tasks in _both(seeds, evals):
        ids = [t["id"] for t in tasks]
        assert ids == [f"{prefix}_{i}" for i in range(len(tasks))]
        assert len(set(ids)) == len(ids)


def test_names_unique_kebab_case(seeds, evals):
    for _, tasks in _both(seeds, evals):
        names = [t["name"] for t in tasks]
        assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]
        for name in names:
            assert isinstance(name, str) and NAME_RE.match(name), name
    # a task name must not be reused across the two sets either
    assert not {t["name"] for t in seeds} & {t["name"] for t in evals}


def test_schema_and_types(seeds, evals):
    for _, tasks in _both(seeds, evals):
        for t in tasks:
            assert list(t.keys()) == EXPECTED_KEYS, t.get("id")
            assert isinstance(t["id"], str)
            assert isinstance(t["instruction"], str)
            assert isinstance(t["is_classification"], bool), t["id"]
            instances = t["instances"]
            assert isinstance(instances, list) and len(instances) == 1, t["id"]
            inst = instances[0]
            assert isinstance(inst, dict) and sorted(inst.keys()) == ["input", "output"], t["id"]
            assert isinstance(inst["input"], str), t["id"]
            assert isinstance(inst["output"], str) and inst["output"].strip(), t["id"]


def test_instruction_lengths(seeds, evals):
    for _, tasks in _both(seeds, evals):
        for t in tasks:
            ins = t["instruction"]
            assert ins.strip() == ins and ins, t["id"]
            assert 4 <= len(ins.split()) <= 150, (t["id"], ins)


def test_input_fraction(seeds):
    with_input = sum(1 for t in seeds if t["instances"][0]["input"].strip())
    assert 0.30 <= with_input / len(seeds) <= 0.60, with_input


def test_enough_classification_tasks(seeds):
    assert sum(t["is_classification"] for t in seeds) >= 15


def test_generation_filters(seeds, evals):
    """The seeds must pass the same filters that generated instructions go through."""
    for _, tasks in _both(seeds, evals):
        for t in tasks:
            ins = t["instruction"]
            hit = BLACKLIST_RE.search(ins)
            assert hit is None, (t["id"], hit and hit.group(0))
            assert not ins.lower().startswith("write a program"), t["id"]
            first = ins[0]
            assert first.isascii() and first.isalnum(), (t["id"], first)


def test_no_near_duplicate_seeds(seeds, scorer):
    instructions = [t["instruction"] for t in seeds]
    too_close = []
    for a, b in itertools.combinations(instructions, 2):
        f = scorer.score(a, b)["rougeL"].fmeasure
        if f > ROUGE_THRESHOLD:
            too_close.append((round(f, 3), a, b))
    assert not too_close, too_close


def test_eval_distinct_from_seeds(seeds, evals, scorer):
    seed_ins = [t["instruction"] for t in seeds]
    eval_ins = [t["instruction"] for t in evals]
    too_close = []
    # eval vs every seed
    for e in eval_ins:
        for s in seed_ins:
            f = scorer.score(e, s)["rougeL"].fmeasure
            if f > ROUGE_THRESHOLD:
                too_close.append((round(f, 3), e, s))
    # and every seed against the eval set (target/prediction swapped)
    for s in seed_ins:
        for e in eval_ins:
            f = scorer.score(s, e)["rougeL"].fmeasure
            if f > ROUGE_THRESHOLD:
                too_close.append((round(f, 3), s, e))
    assert not too_close, too_close


def test_no_near_duplicate_evals(evals, scorer):
    instructions = [t["instruction"] for t in evals]
    for a, b in itertools.combinations(instructions, 2):
        assert scorer.score(a, b)["rougeL"].fmeasure <= ROUGE_THRESHOLD, (a, b)
