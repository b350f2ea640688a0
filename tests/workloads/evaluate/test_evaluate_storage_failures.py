"""Evaluation reports in a bucket on a real S3-compatible server, and endpoints that fail: retried
when it passes, stopped (report kept, exit non-zero) when it does not, resumed by a rerun."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.chat_server import ChatServer
from support.object_store import ObjectStore, object_store
from test_evaluate_workload import QUIET, SCRIPTS, TASKS, _config

from alpaca_jobs.evaluate.journal import JOURNAL_FILE
from alpaca_jobs.evaluate.runner import StopReason, evaluate
from alpaca_operator.api.results import WorkloadResult


@pytest.fixture(scope="module")
def s3() -> Iterator[ObjectStore]:
    with object_store() as store:
        yield store


def test_the_report_lands_in_the_bucket_and_a_new_pod_resumes_from_its_journal(
    s3: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.reach_from_here(monkeypatch)
    output = s3.uri("evaluations", "demo")
    fs = s3.filesystem()
    with ChatServer(SCRIPTS) as server:
        monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "pod-1"))
        config = _config(server, tmp_path, judge="longer").model_copy(update={"output": output})
        first = evaluate(config, keys={}, options=QUIET)
        folder = f"{s3.bucket}/evaluations/demo"
        assert {Path(p).name for p in fs.ls(folder)} == {"judgements.jsonl", "summary.json", "win_rate.png", "manifest.json", JOURNAL_FILE}
        summary = fs.cat_file(f"{folder}/summary.json")
        result = WorkloadResult.model_validate(json.loads(fs.cat_file(f"{folder}/manifest.json"))["result"])
        assert result.artifact.uri == f"{output}/summary.json"
        assert result.artifact.sha256 == hashlib.sha256(summary).hexdigest()
        assert json.loads(summary)["score"]["wins"] == TASKS
        asked = dict(server.stats.received)

        monkeypatch.setenv("ALPACA_CACHE_DIR", str(tmp_path / "pod-2"))  # a new pod: an empty disk
        second = evaluate(config, keys={}, options=QUIET)
        assert dict(server.stats.received) == asked, "the journal came back from the bucket: nothing is asked again"
        assert second.summary["score"] == first.summary["score"]


def _failing(times: int | None, script: Any) -> Any:
    """The script after `times` HTTP 500s (None: 500 for ever)."""
    calls = itertools.count()

    def reply(body: dict[str, Any]) -> Any:
        return (500, "the server had an error") if times is None or next(calls) < times else script(body)

    return reply


def test_a_judge_that_fails_now_and_then_is_retried_and_every_task_is_judged(tmp_path: Path) -> None:
    with ChatServer({**SCRIPTS, "flaky": _failing(2, SCRIPTS["longer"])}) as server:
        outcome = evaluate(_config(server, tmp_path, judge="flaky", concurrency=1), keys={}, options=QUIET)
        assert server.stats.received["flaky"] == 2 * TASKS + 2  # QUIET allows two retries
    assert outcome.stop_reason is StopReason.COMPLETED
    assert outcome.summary["retries"] == {"server_error": 2} and outcome.summary["score"]["wins"] == TASKS


def test_a_judge_that_keeps_failing_stops_the_run_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    with ChatServer({**SCRIPTS, "judge": _failing(None, SCRIPTS["longer"])}) as server:
        config = _config(server, tmp_path, judge="judge", concurrency=2)
        stopped = evaluate(config, keys={}, options=QUIET)
        assert stopped.stop_reason is StopReason.ENDPOINT_UNAVAILABLE
        assert "rerun to resume" in stopped.message and stopped.summary["judged"] == 0
        assert not json.loads((tmp_path / "manifest.json").read_text()).get("result")  # no result for a failed run
        answers = server.stats.answered["candidate"]
        server.scripts["judge"] = SCRIPTS["longer"]  # the judge is back
        resumed = evaluate(config, keys={}, options=QUIET)
        assert server.stats.answered["candidate"] == answers, "answers already in the journal are not asked again"
    assert resumed.stop_reason is StopReason.COMPLETED and resumed.summary["score"]["wins"] == TASKS
