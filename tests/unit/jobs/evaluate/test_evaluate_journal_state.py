"""The journal survives a kill; the state replayed from it knows what was asked, judged and owed."""

from __future__ import annotations

from pathlib import Path

import pytest

from alpaca_jobs.evaluate.journal import Entry, Journal, JournalError
from alpaca_jobs.evaluate.state import EvaluationState
from alpaca_jobs.evaluate.tasks import EvalTask
from alpaca_operator.api.instructdataset import TokenPricing

TASKS = [EvalTask("Add.", "2 3"), EvalTask("Say hi.")]
JUDGE = TokenPricing(input_usd_per_million_tokens=1.0, output_usd_per_million_tokens=4.0)


def _entries(key: str) -> list[Entry]:
    return [
        Entry("sent", key, "candidate", prompt_tokens=100, completion_tokens=50),
        Entry("answer", key, "candidate", content="five", prompt_tokens=5, completion_tokens=1),
        Entry("sent", key, "judge", "candidate_first", prompt_tokens=900, completion_tokens=64),
        Entry("verdict", key, "judge", "candidate_first", content='{"winner": "A"}', winner="A", prompt_tokens=300, completion_tokens=10),
        Entry("sent", key, "judge", "baseline_first", prompt_tokens=900, completion_tokens=64),
        Entry("verdict", key, "judge", "baseline_first", content="blah", winner=None, prompt_tokens=300, completion_tokens=2),
    ]


def test_a_torn_last_line_is_cut_and_a_damaged_middle_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    for entry in _entries(TASKS[0].key)[:3]:
        journal.append(entry)
    journal.close()
    with (tmp_path / "j.jsonl").open("ab") as handle:
        handle.write(b'{"v":1,"kind":"verd')
    assert Journal(tmp_path / "j.jsonl").load() == _entries(TASKS[0].key)[:3]
    assert (tmp_path / "j.jsonl").read_bytes().endswith(b"}\n")
    lines = (tmp_path / "j.jsonl").read_text().splitlines()
    (tmp_path / "j.jsonl").write_text("\n".join([lines[0], "junk", lines[2]]) + "\n")
    with pytest.raises(JournalError, match=r"j.jsonl:2: damaged journal entry"):
        Journal(tmp_path / "j.jsonl").load()


def test_replay_rebuilds_answers_verdicts_tokens_and_cost() -> None:
    key = TASKS[0].key
    state = EvaluationState(TASKS, {"judge": JUDGE}, {"baseline": {key: "5", TASKS[1].key: "hello"}})
    for entry in _entries(key):
        state.apply(entry)
    assert state.answered(key) and state.judged(key) and not state.done
    assert state.outcome(key) == 1.0  # A when the candidate was A, no verdict (a tie) the other way
    assert state.unparsed_verdicts == 1
    progress = state.progress()
    assert (progress.tasks, progress.answered, progress.judged, progress.unparsed_verdicts) == (2, 1, 1, 1)
    assert (progress.prompt_tokens, progress.completion_tokens) == (605, 13)
    # Only the judge is priced here; the candidate's endpoint bills nothing.
    assert state.cost_usd == pytest.approx((600 * 1.0 + 12 * 4.0) / 1e6)
    assert not state.in_flight


def test_what_a_dead_process_left_in_flight_is_charged_at_its_worst_case() -> None:
    key = TASKS[1].key
    state = EvaluationState(TASKS, {"judge": JUDGE, "candidate": JUDGE})
    state.apply(Entry("sent", key, "candidate", prompt_tokens=100, completion_tokens=50))
    state.apply(Entry("sent", key, "judge", "candidate_first", prompt_tokens=900, completion_tokens=64))
    assert state.reserved_usd == pytest.approx((1000 * 1.0 + 114 * 4.0) / 1e6)
    assert state.settle_in_flight() == 2
    assert state.unrecorded_requests == 2 and not state.in_flight
    assert state.spent_usd == pytest.approx((1000 * 1.0 + 114 * 4.0) / 1e6)
    state.apply(Entry("failed", key, "candidate", problem="timeout"))
    assert state.failed == {"timeout": 1} and state.consecutive_failures == 1


def test_the_running_counts_match_a_count_from_scratch_whatever_the_journal_holds() -> None:
    other = EvalTask("Not in this sample.")
    state = EvaluationState(TASKS, {}, {"baseline": {t.key: "x" for t in (*TASKS, other)}})
    for entry in [*_entries(TASKS[0].key), *_entries(other.key), *_entries(TASKS[1].key)[:4]]:
        state.apply(entry)
    # The same verdict journaled again (replayed twice) changes nothing.
    state.apply(_entries(TASKS[0].key)[5])
    scan = (sum(state.answered(t.key) for t in TASKS), sum(state.judged(t.key) for t in TASKS),
            sum(1 for (k, _), v in state.verdicts.items() if k in state.by_key and v.winner is None))
    assert (state.answered_count, state.judged_count, state.unparsed_count) == scan == (2, 1, 1)
    assert not state.done


def test_a_request_resent_by_a_later_process_charges_the_lost_first_send_on_replay() -> None:
    """Two processes killed in turn, each with the same request in flight: a third replaying the
    journal must charge both lost sends, not only the last."""
    key = TASKS[0].key
    sent = Entry("sent", key, "judge", "candidate_first", prompt_tokens=900, completion_tokens=64)
    state = EvaluationState(TASKS, {"judge": JUDGE})
    for entry in (sent, sent, sent, Entry("verdict", key, "judge", "candidate_first", content="A", winner="A",
                                             prompt_tokens=300, completion_tokens=1)):
        state.apply(entry)
    assert state.unrecorded_requests == 2 and not state.in_flight
    assert state.unrecorded_cost_usd == pytest.approx(2 * (900 * 1.0 + 64 * 4.0) / 1e6)
