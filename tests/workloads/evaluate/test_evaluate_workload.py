"""`alpaca evaluate` end to end: the real openai client against scripted contestants and judges
served over real HTTP, where the win rate each judge must produce is known in advance."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.chat_server import ChatServer

from alpaca_jobs.evaluate import stats
from alpaca_jobs.evaluate.journal import JOURNAL_FILE, Journal
from alpaca_jobs.evaluate.runner import RunOptions, StopReason, evaluate
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.storage import sha256_file
from alpaca_operator.api.evaluation import EvaluationProgress, Score
from alpaca_operator.api.results import WorkloadResult
from alpaca_operator.api.workloads import EvaluateConfig, StatusTarget
from alpaca_operator.cli import main as alpaca_main

QUIET = RunOptions(retry=RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05), progress_bar=False)
ENV = {**os.environ, "PYTHONSAFEPATH": "1"}
TASKS = 12


# -- scripted contestants: the candidate always says more than the baseline -------------------------

def _instruction(body: dict[str, Any]) -> str:
    return body["messages"][0]["content"]


def candidate(body: dict[str, Any]) -> str:
    instruction = _instruction(body)
    extra = 3 + sum(map(ord, instruction)) % 9  # 3 to 11 more words, varying by task
    return f"Candidate: {instruction}" + " and then some" * extra


def baseline(body: dict[str, Any]) -> str:
    return f"Baseline: {_instruction(body)}"


# -- scripted judges ----------------------------------------------------------------------------------

def _pair(body: dict[str, Any]) -> tuple[str, str]:
    text = body["messages"][-1]["content"]
    first, rest = text.split("## Answer A\n", 1)[1].split("\n\n## Answer B\n", 1)
    return first, rest.rsplit("\n\nWhich answer is better?", 1)[0]


def always_a(body: dict[str, Any]) -> str:
    return json.dumps({"winner": "A", "reason": "the first one"})


def prefers_longer(body: dict[str, Any]) -> str:
    a, b = _pair(body)
    return json.dumps({"winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie", "reason": "longer"})


def prefers_candidate_in_words(body: dict[str, Any]) -> str:
    a, _ = _pair(body)
    return f"After careful thought, Output ({'a' if a.startswith('Candidate') else 'b'}) is better."


def garbage(body: dict[str, Any]) -> str:
    return "Lorem ipsum dolor sit amet, the weather is fine today."


SCRIPTS = {"candidate": candidate, "baseline": baseline, "always-a": always_a, "longer": prefers_longer,
           "candidate-judge": prefers_candidate_in_words, "garbage": garbage}


def _config(server: ChatServer, output: Path, *, judge: str, sample: int | None = TASKS, concurrency: int = 4,
            budget: float | None = None, structured: bool = True, baseline_outputs: Path | None = None,
            judge_pricing: dict[str, float] | None = None, judge_max_tokens: int = 256, **spec: Any) -> EvaluateConfig:
    url = server.base_url
    baseline_side: dict[str, Any] = (
        {"label": "written answers", "outputs": str(baseline_outputs)} if baseline_outputs
        else {"label": "base", "endpoint": {"url": url, "model": "baseline"}}
    )
    return EvaluateConfig.model_validate({
        "name": "demo",
        "spec": {
            "candidate": {"baseURL": url, "model": "candidate"},
            "baseline": {"outputs": {"uri": "file:///unused.jsonl"}} if baseline_outputs else {"baseURL": url, "model": "baseline"},
            "judge": {"baseURL": url, "model": judge, "structuredOutput": structured, "maxTokens": judge_max_tokens},
            "tasks": {"sampleSize": sample, "randomSeed": 7},
            "requests": {"maxConcurrency": concurrency},
            "output": {"uri": "file:///unused"},
            **({"budgetUSD": budget} if budget is not None else {}),
            **spec,
        },
        "output": str(output),
        "candidate": {"label": "tuned", "endpoint": {"url": url, "model": "candidate"}},
        "baseline": baseline_side,
        "judge": {"url": url, "model": judge, "pricing": judge_pricing or {}},
    })


def _summary(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text())


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "judgements.jsonl").read_text().splitlines()]


def _check_report(folder: Path, tasks: int) -> tuple[Score, list[dict[str, Any]]]:
    summary = _summary(folder)
    rows = _rows(folder)
    score = Score.model_validate(summary["score"])
    assert summary["judged"] == len(rows) == tasks
    assert score.wins + score.ties + score.losses == tasks
    assert [r["outcome"] for r in rows].count("tie") == score.ties
    assert score.win_rate_low <= score.win_rate <= score.win_rate_high
    assert (folder / "win_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((folder / "manifest.json").read_text())
    result = WorkloadResult.model_validate(manifest["result"])
    assert result.artifact.sha256 == sha256_file(folder / "summary.json")
    assert result.artifact.uri == f"{folder}/summary.json"
    return score, rows


def test_an_always_a_judge_gives_only_ties_and_is_asked_for_structured_verdicts(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        outcome = evaluate(_config(server, tmp_path, judge="always-a"), keys={}, options=QUIET)
        judge_bodies = [b for b in server.stats.bodies if b["model"] == "always-a"]
    assert outcome.stop_reason is StopReason.COMPLETED
    score, rows = _check_report(tmp_path, TASKS)
    assert (score.wins, score.ties, score.losses) == (0, TASKS, 0)
    assert score.win_rate == score.win_rate_low == score.win_rate_high == 0.5
    # Every outcome is half: the regression has nothing to explain and predicts exactly even.
    assert score.length_controlled_win_rate == pytest.approx(0.5, abs=1e-9)
    assert all(r["verdict_candidate_first"] == r["verdict_baseline_first"] == "A" for r in rows)
    # Each pair judged in both orders, under the verdict schema.
    assert len(judge_bodies) == 2 * TASKS
    assert all(b["response_format"]["type"] == "json_schema" for b in judge_bodies)
    assert {b["response_format"]["json_schema"]["schema"]["properties"]["winner"]["enum"] == ["A", "B", "tie"] for b in judge_bodies} == {True}
    # Both contestants got the same generation settings.
    settings = {(b["temperature"], b["top_p"], b["max_tokens"]) for b in server.stats.bodies if b["model"] in ("candidate", "baseline")}
    assert len(settings) == 1


def _lc_bound(candidate_lengths: list[int], baseline_lengths: list[int]) -> float:
    """How far above one half the length-controlled figure may be when the candidate always wins
    by being longer (stats.fit_length_model's first-order conditions, all outcomes 1, x_i >= x_min > 0):
      intercept_precision * a = sum(1 - p_i) <= sum((1 - p_i) x_i) / x_min = slope_precision * b / x_min,
    and b^2 * slope_precision / 2 <= objective(a, b) <= objective(0, b') <= n e^(-b' x_min) + slope_precision b'^2 / 2
    for every b'. Then sigmoid(a) - 1/2 <= a / 4."""
    x = stats.length_feature(candidate_lengths, baseline_lengths)
    x_min, n = float(x.min()), len(x)
    assert x_min > 0
    best = min(n * math.exp(-b * x_min) + stats.SLOPE_PRECISION * b * b / 2 for b in [i / 10 for i in range(1, 2000)])
    b_max = math.sqrt(2 * best / stats.SLOPE_PRECISION)
    return stats.SLOPE_PRECISION * b_max / (x_min * stats.INTERCEPT_PRECISION) / 4


def test_a_length_biased_judge_makes_a_longer_candidate_win_all_but_the_length_control_sees_through_it(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        outcome = evaluate(_config(server, tmp_path, judge="longer"), keys={}, options=QUIET)
    assert outcome.stop_reason is StopReason.COMPLETED
    score, rows = _check_report(tmp_path, TASKS)
    assert (score.wins, score.win_rate, score.win_rate_low) == (TASKS, 1.0, 1.0)
    bound = _lc_bound([len(r["candidate_output"]) for r in rows], [len(r["baseline_output"]) for r in rows])
    assert bound < 0.05  # the arithmetic leaves the figure close to even, not near the raw 1.0
    assert score.length_controlled_win_rate is not None
    assert 0.5 <= score.length_controlled_win_rate <= 0.5 + bound


def test_a_judge_that_always_picks_the_candidate_in_plain_words_gives_one(tmp_path: Path) -> None:
    """A judge answering in prose ("Output (a) is better"), no structured output asked, and the
    baseline's answers read from a file written beforehand."""
    from alpaca_jobs.evaluate.tasks import load_tasks

    written = tmp_path / "baseline.jsonl"
    written.write_text("".join(json.dumps({"instruction": t.instruction, "input": t.input, "output": f"Baseline: {t.instruction}"}) + "\n"
                               for t in load_tasks()))
    out = tmp_path / "out"
    with ChatServer(SCRIPTS) as server:
        outcome = evaluate(_config(server, out, judge="candidate-judge", structured=False, baseline_outputs=written),
                           keys={}, options=QUIET)
        assert server.stats.received["baseline"] == 0
        assert all("response_format" not in b for b in server.stats.bodies)
    assert outcome.stop_reason is StopReason.COMPLETED
    score, rows = _check_report(out, TASKS)
    assert (score.wins, score.win_rate, score.win_rate_low, score.win_rate_high) == (TASKS, 1.0, 1.0, 1.0)
    assert all((r["verdict_candidate_first"], r["verdict_baseline_first"]) == ("A", "B") for r in rows)
    assert outcome.summary["baseline"] == "written answers" and outcome.summary["unparsedVerdicts"] == 0


def test_a_judge_answering_garbage_counts_ties_and_says_how_many_were_unparsed(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        outcome = evaluate(_config(server, tmp_path, judge="garbage", structured=False, generation={"maxTokens": 4}),
                           keys={}, options=QUIET)
    score, rows = _check_report(tmp_path, TASKS)
    assert outcome.stop_reason is StopReason.COMPLETED
    assert (score.ties, score.win_rate) == (TASKS, 0.5)
    assert outcome.summary["unparsedVerdicts"] == 2 * TASKS
    # Answers cut at 4 tokens (the shortest, "Baseline:" and a 4-word instruction, has 5), the judge's 10 words under its 256.
    assert outcome.summary["truncated"] == {"baseline": TASKS, "candidate": TASKS, "judge": 0}
    assert all(r["verdict_candidate_first"] is None and "Lorem" in r["judge_reply_candidate_first"] for r in rows)


def test_an_outputs_file_without_a_task_is_refused_naming_the_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = tmp_path / "baseline.jsonl"
    written.write_text(json.dumps({"instruction": "Something else entirely.", "input": "", "output": "x"}) + "\n")
    with ChatServer(SCRIPTS) as server:
        config = _config(server, tmp_path / "out", judge="always-a", baseline_outputs=written)
        path = tmp_path / "config.json"
        path.write_text(config.model_dump_json(by_alias=True))
        assert alpaca_main(["evaluate", "--config", str(path), "--no-progress"]) == 2
        assert sum(server.stats.received.values()) == 0
    error = capsys.readouterr().err
    assert "baseline outputs" in error and "have no answer for the task" in error


BUDGET = 6.0


def test_the_budget_stops_cleanly_reports_what_was_judged_and_a_rerun_asks_nothing(tmp_path: Path) -> None:
    price = {"inputUSDPerMillionTokens": 1000.0, "outputUSDPerMillionTokens": 1000.0}
    with ChatServer(SCRIPTS) as server:
        # Worst cases near the real cost (short answers and verdicts), so the budget runs out midway.
        config = _config(server, tmp_path, judge="always-a", budget=BUDGET, judge_pricing=price, concurrency=2,
                         judge_max_tokens=32, generation={"maxTokens": 40})
        outcome = evaluate(config, keys={}, options=QUIET)
        summary = _summary(tmp_path)
        judged = summary["judged"]
        assert outcome.stop_reason is StopReason.BUDGET_EXHAUSTED, outcome.message
        assert 0 < judged < TASKS
        billed = sum((server.stats.billed_prompt_tokens[m] + server.stats.billed_completion_tokens[m]) * 1000.0 / 1e6
                     for m in server.stats.billed_prompt_tokens if m == "always-a")
        assert billed == pytest.approx(summary["costUSD"]) and billed <= BUDGET
        # The figures are over the judged tasks and the result is written: a clean stop.
        _check_report(tmp_path, judged)
        asked = dict(server.stats.received)
        again = evaluate(config, keys={}, options=QUIET)
        assert again.stop_reason is StopReason.BUDGET_EXHAUSTED
        assert dict(server.stats.received) == asked


def _command(tmp_path: Path, config: EvaluateConfig) -> list[str]:
    path = tmp_path / "config.json"
    path.write_text(config.model_dump_json(by_alias=True))
    return [sys.executable, "-m", "alpaca_operator.cli", "evaluate", "--config", str(path), "--no-progress"]


def test_killed_it_resumes_without_asking_or_judging_anything_twice(tmp_path: Path) -> None:
    """Each process gets its own API key, so the server can tell who asked what."""
    concurrency, tasks = 4, 24
    out = tmp_path / "out"
    with ChatServer(SCRIPTS, delay_s=0.1) as server:
        config = _config(server, out, judge="longer", sample=tasks, concurrency=concurrency)
        for side in (config.candidate, config.baseline):
            assert side.endpoint is not None
            side.endpoint.api_key_env = "EVAL_KEY"
        config.judge.api_key_env = "EVAL_KEY"
        command = _command(tmp_path, config)
        journal = out / JOURNAL_FILE
        process = subprocess.Popen(command, cwd=tmp_path, env={**ENV, "EVAL_KEY": "killed"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (journal.exists() and journal.read_bytes().count(b'"kind":"verdict"') >= 4):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        at_kill = Journal(journal).load()
        ended_at_kill = {e.request for e in at_kill if e.kind != "sent"}
        in_flight_at_kill = {e.request for e in at_kill if e.kind == "sent"} - ended_at_kill
        assert 0 < len(ended_at_kill) < 4 * tasks and not (out / "summary.json").exists()
        resumed = subprocess.run(command, cwd=tmp_path, env={**ENV, "EVAL_KEY": "resumed"},
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        killed, second = server.stats.asked_with_key["killed"], server.stats.asked_with_key["resumed"]

    score, _ = _check_report(out, tasks)
    assert score.wins == tasks
    ended = [e for e in Journal(journal).load() if e.kind != "sent"]
    # Every request ended once in the journal (4 a task: two answers, two verdicts).
    assert len(ended) == len({e.request for e in ended}) == 4 * tasks
    # The resumed process asked exactly what had not ended before the kill, each once.
    assert set(second.values()) == {1} and sum(second.values()) == 4 * tasks - len(ended_at_kill)
    assert set(killed.values()) == {1}
    # Asked twice: only what the killed process had in flight and the server answered anyway.
    twice = set(killed) & set(second)
    assert len(twice) == sum(killed.values()) - len(ended_at_kill) <= len(in_flight_at_kill) <= concurrency
    assert _summary(out)["unrecordedRequests"] == len(in_flight_at_kill)


class _RecordingStatusApi:
    """Stands in for the Kubernetes API's status subresource: records each patch it is sent."""

    def __init__(self) -> None:
        self.patches: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str, name: str,
                                              body: dict[str, Any]) -> None:
        self.patches.append(((group, version, namespace, plural, name), body))


def test_progress_then_score_and_result_are_patched_onto_the_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from alpaca_jobs.report import StatusReporter

    api = _RecordingStatusApi()
    monkeypatch.setattr(StatusReporter, "_client", lambda self: api)
    with ChatServer(SCRIPTS) as server:
        # tmp_path stands in for the pod's mount of the claim its output names.
        config = _config(server, tmp_path, judge="longer").model_copy(update={
            "status_target": StatusTarget(plural="evaluations", namespace="team-a", name="demo"),
            "output_uri": "pvc://alpaca/quickstart/evaluation",
        })
        evaluate(config, keys={}, options=RunOptions(retry=QUIET.retry, progress_bar=False, status_interval_s=3600))
    progress = [body["status"]["progress"] for _, body in api.patches if "progress" in body["status"]]
    assert len(progress) == 2  # throttled: the first update, then the final one
    final = EvaluationProgress.model_validate(progress[-1])
    assert (final.tasks, final.answered, final.judged) == (TASKS, TASKS, TASKS)
    target, last = api.patches[-1]
    assert target == ("alpaca.dev", "v1alpha1", "team-a", "evaluations", "demo")
    assert Score.model_validate(last["status"]["score"]) == Score.model_validate(_summary(tmp_path)["score"])
    result = WorkloadResult.model_validate(last["status"]["result"])
    assert result.artifact.sha256 == sha256_file(tmp_path / "summary.json")
    assert result.records == TASKS and result.counts["wins"] == TASKS
    assert result.artifact.uri == "pvc://alpaca/quickstart/evaluation/summary.json", "by the claim's public name"
    assert json.loads((tmp_path / "manifest.json").read_text())["result"] == last["status"]["result"]


def test_the_cli_speaks_json_logs_and_names_a_refusing_endpoint(tmp_path: Path) -> None:
    with ChatServer(SCRIPTS) as server:
        done = subprocess.run(_command(tmp_path, _config(server, tmp_path / "ok", judge="always-a", sample=4)) + ["--log-format", "json"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        refused = subprocess.run(_command(tmp_path, _config(server, tmp_path / "no", judge="no-such-judge", sample=4)),
                                 cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert "completed: judged 4 tasks" in records[-1]["message"] and "win rate 0.500" in records[-1]["message"]
    assert refused.returncode == 1
    assert "the judge endpoint refused the request with HTTP 404" in refused.stderr


def test_kills_never_hide_spend_and_never_let_it_pass_the_budget(tmp_path: Path) -> None:
    """Priced endpoints that bill every answer they send, the job killed while billed answers are on
    their way back, then resumed until the budget stops it: what the endpoints billed is at most
    what the summary counts (recorded, plus the worst case of what was lost in flight), and that
    never passes the budget. (All 40 tasks would cost about $22 at these prices.)"""
    budget, concurrency = 16.0, 4
    price = {"inputUSDPerMillionTokens": 1000.0, "outputUSDPerMillionTokens": 1000.0}
    out = tmp_path / "out"
    with ChatServer(SCRIPTS, delay_s=0.2) as server:
        config = _config(server, out, judge="longer", sample=None, judge_pricing=price, judge_max_tokens=32,
                         budget=budget, concurrency=concurrency, generation={"maxTokens": 40})
        assert config.candidate.endpoint is not None
        config.candidate.endpoint.pricing = config.judge.pricing
        command = _command(tmp_path, config)
        journal = out / JOURNAL_FILE

        for kill in range(2):
            before = journal.read_bytes().count(b"\n") if journal.exists() else 0
            process = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 60
            while not (journal.exists() and journal.read_bytes().count(b"\n") >= before + 6 + kill):
                assert process.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "the run never got going"
                time.sleep(0.01)
            # From here the server bills and holds every answer: the kill lands while some are paid for.
            server.release.clear()
            while server.stats.held == 0:
                assert process.poll() is None, "the run ended before it could be killed"
                assert time.monotonic() < deadline, "no request was in flight to kill"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
            server.release.set()
        final = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        billed = sum(server.stats.billed_prompt_tokens[m] + server.stats.billed_completion_tokens[m]
                     for m in ("candidate", "longer")) * 1000.0 / 1e6

    summary = _summary(out)
    assert summary["stopReason"] == StopReason.BUDGET_EXHAUSTED.value
    assert 0 < summary["judged"] < 40
    assert summary["unrecordedRequests"] > 0
    assert billed > summary["costUSD"], "some answers were billed but lost with the killed processes"
    assert billed <= summary["costUSD"] + summary["unrecordedCostUSD"] + 1e-9
    assert summary["costUSD"] + summary["unrecordedCostUSD"] <= budget + 1e-9
