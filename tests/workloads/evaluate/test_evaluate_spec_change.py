"""A rerun into the same output folder after the Evaluation's spec changed: what the new spec
would ask differently is asked again, what it would ask the same is reused from the journal, and
the report bills only what the new evaluation holds, each request once."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from support.chat_server import ChatServer

from alpaca_jobs.evaluate.journal import JOURNAL_FILE, Journal
from alpaca_jobs.evaluate.runner import RunOptions, StopReason, evaluate
from alpaca_jobs.evaluate.tasks import load_tasks, sample
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_operator.api.workloads import EvaluateConfig

QUIET = RunOptions(retry=RetryPolicy(max_retries=1, base_delay_s=0.01, max_delay_s=0.05), progress_bar=False)
SEED = 7
PRICE = {"inputUSDPerMillionTokens": 3.0, "outputUSDPerMillionTokens": 15.0}


def _instruction(body: dict[str, Any]) -> str:
    return body["messages"][0]["content"]


def candidate(body: dict[str, Any]) -> str:
    # Longer than any max_tokens used here: the server cuts it, so max_tokens shapes the answer.
    return f"Candidate: {_instruction(body)}" + " and more" * 60


def baseline(body: dict[str, Any]) -> str:
    return f"Baseline: {_instruction(body)}"


def always_a(body: dict[str, Any]) -> str:
    return json.dumps({"winner": "A", "reason": "first"})


def always_b(body: dict[str, Any]) -> str:
    return json.dumps({"winner": "B", "reason": "second"})


SCRIPTS = {"candidate": candidate, "baseline": baseline, "judge-a": always_a, "judge-b": always_b}


def _config(server: ChatServer, output: Path, *, sample_size: int = 4, max_tokens: int = 64,
            judge: str = "judge-a", judge_max_tokens: int = 128) -> EvaluateConfig:
    url = server.base_url
    endpoint = {"url": url, "pricing": PRICE}
    return EvaluateConfig.model_validate({
        "name": "demo",
        "spec": {
            "candidate": {"baseURL": url, "model": "candidate"},
            "baseline": {"baseURL": url, "model": "baseline"},
            "judge": {"baseURL": url, "model": judge, "maxTokens": judge_max_tokens},
            "tasks": {"sampleSize": sample_size, "randomSeed": SEED},
            "generation": {"maxTokens": max_tokens},
            "output": {"uri": "file:///unused"},
        },
        "output": str(output),
        "candidate": {"label": "tuned", "endpoint": {**endpoint, "model": "candidate"}},
        "baseline": {"label": "base", "endpoint": {**endpoint, "model": "baseline"}},
        "judge": {**endpoint, "model": judge},
    })


def _run(server: ChatServer, config: EvaluateConfig) -> tuple[Counter[str], dict[str, Any]]:
    """Runs to the end; returns what the server was asked in this run, by model, and the summary."""
    before = Counter(server.stats.received)
    outcome = evaluate(config, keys={}, options=QUIET)
    assert outcome.stop_reason is StopReason.COMPLETED, outcome.message
    asked = Counter(server.stats.received)
    asked.subtract(before)
    return +asked, outcome.summary


BILLING = ("requests", "tokens", "promptTokens", "completionTokens", "costUSD", "unrecordedCostUSD")


def _billing(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: summary[key] for key in BILLING}


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "judgements.jsonl").read_text().splitlines()]


def test_an_unchanged_spec_asks_nothing_again(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        first, summary = _run(server, _config(server, tmp_path))
        assert first == {"candidate": 4, "baseline": 4, "judge-a": 8}
        again, resumed = _run(server, _config(server, tmp_path))
    assert again == {}
    assert _billing(resumed) == _billing(summary)
    assert summary["costUSD"] > 0


def test_changed_max_tokens_asks_the_answers_again_and_reports_only_the_new_evaluation(tmp_path: Path) -> None:
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    with ChatServer(SCRIPTS) as server:
        _run(server, _config(server, out, max_tokens=64))
        old_rows = _rows(out)
        asked, changed = _run(server, _config(server, out, max_tokens=48))
        new_bodies = server.stats.bodies[-sum(asked.values()):]
        # The answers differ (cut at 48 tokens now), so both verdicts of every task are asked again.
        assert asked == {"candidate": 4, "baseline": 4, "judge-a": 8}
        assert {b["max_tokens"] for b in new_bodies if b["model"] in ("candidate", "baseline")} == {48}
        # The same evaluation run from scratch elsewhere: the rerun's report bills exactly what it did.
        _, reference = _run(server, _config(server, fresh, max_tokens=48))
        # Going back to the first spec reuses what it already got.
        back, _ = _run(server, _config(server, out, max_tokens=64))
    assert _billing(changed) == _billing(reference)
    assert changed["truncated"]["candidate"] == 4
    rows = _rows(out)
    assert [r["candidate_output"] for r in rows] == [r["candidate_output"] for r in old_rows]
    assert [len(r["candidate_output"].split()) for r in _rows(fresh)] == [48] * 4
    assert back == {}
    # Nothing was thrown away: the journal still holds what both specs were answered.
    answers = [e for e in Journal(out / JOURNAL_FILE).load() if e.kind == "answer"]
    assert len(answers) == 16 and len({e.fp for e in answers}) == 16


def test_a_changed_judge_reuses_the_answers_and_asks_the_verdicts_again(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        _run(server, _config(server, tmp_path, judge="judge-a"))
        assert {r["outcome"] for r in _rows(tmp_path)} == {"tie"}
        asked, summary = _run(server, _config(server, tmp_path, judge="judge-b"))
        assert asked == {"judge-b": 8}
        # The judge's settings are part of what a verdict depends on, too.
        more, _ = _run(server, _config(server, tmp_path, judge="judge-b", judge_max_tokens=96))
        assert more == {"judge-b": 8}
    assert {(r["verdict_candidate_first"], r["verdict_baseline_first"]) for r in _rows(tmp_path)} == {("B", "B")}
    assert summary["requests"] == {"candidate": 4, "baseline": 4, "judge": 8}


def test_a_changed_sample_asks_only_the_tasks_it_adds_and_bills_only_its_own(tmp_path: Path) -> None:
    tasks = load_tasks()
    small = {t.key for t in sample(tasks, 4, SEED)}
    large = {t.key for t in sample(tasks, 7, SEED)}
    added = len(large - small)
    assert added > 0
    with ChatServer(SCRIPTS) as server:
        _run(server, _config(server, tmp_path, sample_size=4))
        asked, summary = _run(server, _config(server, tmp_path, sample_size=7))
        shrunk, smaller = _run(server, _config(server, tmp_path, sample_size=4))
    assert shrunk == {}
    assert smaller["judged"] == 4 and smaller["requests"] == {"candidate": 4, "baseline": 4, "judge": 8}
    assert asked == {"candidate": added, "baseline": added, "judge-a": 2 * added}
    # Only the tasks of the new sample are billed to it, the reused ones as they were paid once.
    assert summary["judged"] == 7
    assert summary["requests"] == {"candidate": 7, "baseline": 7, "judge": 14}


def test_entries_of_a_journal_without_fingerprints_are_asked_again(tmp_path: Path) -> None:
    """Such a journal cannot say what produced its answers: reusing them could report another spec's."""
    with ChatServer(SCRIPTS) as server:
        _, first = _run(server, _config(server, tmp_path))
        journal = tmp_path / JOURNAL_FILE
        lines = [json.loads(line) for line in journal.read_text().splitlines()]
        journal.write_text("".join(json.dumps({k: v for k, v in line.items() if k != "fp"}) + "\n" for line in lines))
        asked, again = _run(server, _config(server, tmp_path))
    assert asked == {"candidate": 4, "baseline": 4, "judge-a": 8}
    assert _billing(again) == _billing(first)
