"""Retry delays, Retry-After parsing and the journal's durability rules."""

from __future__ import annotations

import email.utils
import random
from pathlib import Path

import pytest

from alpaca_jobs.generate.checkpoint import CheckpointError, Journal, Record
from alpaca_jobs.generate.retry import RetryPolicy, parse_retry_after


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=10.0)
    rng = random.Random(0)
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


def test_retry_after_is_honoured_never_shortened_and_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=30.0)
    rng = random.Random(0)
    assert all(7.0 <= policy.delay(0, 7.0, rng) <= 7.7 for _ in range(100))
    assert 30.0 <= policy.delay(0, 3600.0, rng) <= 33.0
    assert policy.delay(5, 0.0, rng) == 0.0


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=1_000_000) == pytest.approx(60.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def _record(n: int) -> Record:
    return Record(n, 4, "answered", content=f"text {n} ✓", finish_reason="stop", prompt_tokens=10, completion_tokens=n)


def test_journal_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "checkpoint" / "responses.jsonl")
    assert journal.load() == []
    records = [_record(n) for n in range(3)] + [Record(3, 4, "failed", problem="rate_limited", retries={"rate_limited": 8})]
    for record in records:
        journal.append(record)
    assert Journal(journal.path).load() == records


def test_a_torn_last_line_is_cut_and_appends_continue_cleanly(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "responses.jsonl")
    journal.append(_record(0))
    journal.append(_record(1))
    with journal.path.open("ab") as handle:
        handle.write(_record(2).to_json().encode()[:17])  # killed mid-write
    assert journal.load() == [_record(0), _record(1)]
    journal.append(_record(2))
    assert journal.load() == [_record(0), _record(1), _record(2)]


def test_a_damaged_record_before_the_end_is_an_error_naming_the_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "responses.jsonl")
    journal.path.write_text(_record(0).to_json() + "\n{broken\n" + _record(2).to_json() + "\n")
    with pytest.raises(CheckpointError, match=r"responses.jsonl:2: damaged"):
        journal.load()
