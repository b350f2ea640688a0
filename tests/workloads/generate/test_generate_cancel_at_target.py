"""Requests still in flight when the target is reached: cancelled at an in-cluster teacher, awaited at an API.

The teacher is real HTTP (uvicorn) and the client the real openai one. The teacher's first two
answers come back garbled, its 3rd and 4th requests hang, and the answers after them fill the
target: the hanging two (and any other still out) are in flight when the run has what it asked for.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.teacher import GARBLED, TeacherServer

from alpaca_jobs.generate.checkpoint import Journal
from alpaca_jobs.generate.manifest import CHECKPOINT_FILE, Manifest, StopReason
from alpaca_jobs.generate.retry import RetryPolicy
from alpaca_jobs.generate.runner import RunOptions, generate
from alpaca_operator.api.workloads import GenerateConfig

QUIET = RunOptions(retry=RetryPolicy(max_retries=0), progress_bar=False)
TARGET = 4  # two answers' worth: 5 tasks a request, 3 of them seeds shown, 2 open slots
HANGING = {3, 4}  # the teacher's 3rd and 4th requests, sent while nothing was kept yet
INPUT_USD, OUTPUT_USD = 1.0, 4.0


def _config(server: TeacherServer, output: Path, *, own: bool, target: int = TARGET) -> GenerateConfig:
    teacher: dict[str, Any] = {"modelServerRef": {"name": "teacher"}} if own else {"baseURL": server.base_url, "model": "teacher"}
    return GenerateConfig.model_validate({
        "name": "cancel",
        "spec": {
            "teacher": {**teacher, "maxConcurrency": 4},
            "generation": {"numExamples": target, "instructionsPerRequest": 5},
            "output": {"uri": "file:///unused"},
        },
        "output": str(output),
        "teacherURL": server.base_url,
        "teacherModel": "teacher",
        # Priced on purpose, so that the accounting of what is cancelled can be checked in dollars.
        "pricing": {"inputUSDPerMillionTokens": INPUT_USD, "outputUSDPerMillionTokens": OUTPUT_USD},
    })


def _manifest(folder: Path) -> Manifest:
    return Manifest.model_validate_json((folder / "manifest.json").read_text())


def _rows(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / "dataset.jsonl").read_text().splitlines()]


def _usd(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * INPUT_USD + completion_tokens * OUTPUT_USD) / 1e6


def _teacher(hang_s: float) -> TeacherServer:
    server = TeacherServer(delay_for=lambda number: hang_s if number in HANGING else 0.0)
    server.inject(GARBLED, GARBLED)
    return server


def test_an_in_cluster_teacher_s_requests_in_flight_at_the_target_are_cancelled_and_journaled_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # Far longer than the run: only a closed connection ends these requests early.
    with _teacher(hang_s=120) as server:
        manifest = generate(_config(server, out, own=True), options=QUIET)
        deadline = time.monotonic() + 30
        while server.stats.disconnected < len(HANGING) and time.monotonic() < deadline:
            time.sleep(0.02)
        # The hanging answers were not awaited: their connections were closed by the client.
        assert server.stats.disconnected == len(HANGING)
        received = server.stats.received

        assert manifest.stop_reason is StopReason.COMPLETED
        rows = _rows(out)
        assert manifest.kept == len(rows) == TARGET
        records = Journal(out / CHECKPOINT_FILE).load()
        sent = [r for r in records if r.outcome == "sent"]
        ends = [r for r in records if r.outcome != "sent"]
        # Every request sent has exactly one end, and nothing is journaled twice.
        assert sorted(r.request for r in sent) == sorted(r.request for r in ends) == list(range(len(sent)))
        assert received <= len(sent)
        # A free teacher is kept busy: the run fills its concurrency before any answer, guessing no yield.
        assert [r.outcome for r in records[:5]] == ["sent"] * 4 + ["answered"]
        cancelled = [r for r in ends if r.outcome == "cancelled"]
        answered = [r for r in ends if r.outcome == "answered"]
        assert {r.outcome for r in ends} == {"answered", "cancelled"}
        assert len(HANGING) <= len(cancelled) == manifest.cancelled_requests
        assert manifest.requests == len(answered) == len(sent) - len(cancelled)
        # A cancellation carries its request's worst case, as sent.
        worst = {r.request: (r.prompt_tokens, r.completion_tokens) for r in sent}
        assert all((r.prompt_tokens, r.completion_tokens) == worst[r.request] for r in cancelled)
        # Cost: exactly the answers recorded; the cancelled ones at most their worst case, kept apart.
        assert (manifest.prompt_tokens, manifest.completion_tokens) == (
            sum(r.prompt_tokens for r in answered), sum(r.completion_tokens for r in answered))
        assert manifest.cost_usd == pytest.approx(_usd(manifest.prompt_tokens, manifest.completion_tokens))
        assert manifest.cancelled_cost_usd == pytest.approx(
            _usd(sum(r.prompt_tokens for r in cancelled), sum(r.completion_tokens for r in cancelled)))
        assert manifest.unrecorded_requests == 0 and manifest.unrecorded_cost_usd == 0
        # The teacher computed (and would bill) every request it received: none of it is lost.
        billed = _usd(server.stats.billed_prompt_tokens, server.stats.billed_completion_tokens)
        assert manifest.cost_usd < billed <= manifest.cost_usd + manifest.cancelled_cost_usd + 1e-12

        # A rerun replays the journal and asks nothing; a larger target goes on after the cancelled requests.
        again = generate(_config(server, out, own=True), options=QUIET)
        assert server.stats.received == received
        assert again.model_dump() | {"finished_at": ""} == manifest.model_dump() | {"finished_at": ""}
        more = generate(_config(server, out, own=True, target=TARGET + 2), options=QUIET)
    assert more.kept == TARGET + 2 and _rows(out)[:TARGET] == rows
    records = Journal(out / CHECKPOINT_FILE).load()
    ends = [r.request for r in records if r.outcome != "sent"]
    assert len(ends) == len(set(ends)) and more.cancelled_requests >= len(HANGING)


def test_an_api_teacher_s_requests_in_flight_at_the_target_are_awaited_and_recorded(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with _teacher(hang_s=1.0) as server:
        manifest = generate(_config(server, out, own=False), options=QUIET)
        assert server.stats.disconnected == 0
        received = server.stats.received
        billed = _usd(server.stats.billed_prompt_tokens, server.stats.billed_completion_tokens)
    assert manifest.stop_reason is StopReason.COMPLETED and manifest.kept == TARGET
    assert manifest.cancelled_requests == 0 and manifest.cancelled_cost_usd == 0
    # Every request the teacher billed was read and recorded: the cost is the bill.
    assert manifest.requests == received
    assert manifest.cost_usd == pytest.approx(billed)
    records = Journal(out / CHECKPOINT_FILE).load()
    assert {r.outcome for r in records} == {"sent", "answered"}
    # A paid teacher gets only the requests the yield guess needs (two answers of two open slots each).
    assert [r.outcome for r in records[:3]] == ["sent", "sent", "answered"]
