"""Accounting of journal records, and loading seed tasks with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_jobs.generate.checkpoint import Journal, Record
from alpaca_jobs.generate.filters import BLACKLISTED, TOO_SIMILAR
from alpaca_jobs.generate.parse import MALFORMED, TRUNCATED
from alpaca_jobs.generate.prompt import Task
from alpaca_jobs.generate.seeds import SeedTasksError, load_seed_tasks
from alpaca_jobs.generate.state import GenerationState
from alpaca_operator.api.instructdataset import InstructDatasetSpec, TokenPricing

SEEDS = [Task("Name the largest planet in our solar system.", "", "Jupiter.")]


def _spec(target: int) -> InstructDatasetSpec:
    return InstructDatasetSpec.model_validate(
        {"teacher": {"baseURL": "http://t/v1", "model": "m"}, "generation": {"numExamples": target}, "output": {"uri": "file:///x"}}
    )


def _answer(request: int, *instructions: str, finish: str = "stop") -> Record:
    items = [f"{4 + i}. Instruction: {text}\n{4 + i}. Input:\n<noinput>\n{4 + i}. Output:\nok\n" for i, text in enumerate(instructions)]
    return Record(request, 4, "answered", content="###\n".join(items), finish_reason=finish, prompt_tokens=100, completion_tokens=50)


PRICED = TokenPricing(input_usd_per_million_tokens=2, output_usd_per_million_tokens=10)


def _replayed(journal: list[Record], target: int) -> GenerationState:
    """The state a new process rebuilds from `journal`."""
    state = GenerationState(SEEDS, _spec(target), PRICED)
    for record in journal:
        state.apply(record)
    return state


def test_counts_add_up_by_reason() -> None:
    state = GenerationState(SEEDS, _spec(100), TokenPricing(input_usd_per_million_tokens=2, output_usd_per_million_tokens=10))
    state.apply(
        _answer(
            0,
            "Name the largest planet in the solar system.",  # near-copy of the seed
            "Describe this picture of a beach at noon.",
            "Suggest a name for a friendly neighbourhood bakery.",
            "Suggest a name for a friendly neighbourhood bakery shop.",  # near-copy of the one kept
            "Translate good morning into Spanish, please.",
            finish="length",
        )
    )
    state.apply(Record(1, 4, "answered", content="no numbered items at all", finish_reason="stop", prompt_tokens=100, completion_tokens=5))
    state.apply(Record(2, 4, "answered", problem="malformed_response"))
    state.apply(Record(3, 4, "failed", problem="rate_limited", retries={"rate_limited": 8}))
    assert [t.instruction for t in state.kept] == ["Suggest a name for a friendly neighbourhood bakery."]
    assert dict(state.filtered) == {TOO_SIMILAR: 2, BLACKLISTED: 1, TRUNCATED: 1, MALFORMED: 1}
    assert state.generated == len(state.kept) + sum(state.filtered.values()) == 6
    assert state.requests == 3 and dict(state.failed_requests) == {"malformed_response": 1, "rate_limited": 1}
    assert dict(state.retries) == {"rate_limited": 8}
    assert state.prompt_tokens == 200 and state.completion_tokens == 55
    assert state.cost_usd == pytest.approx((200 * 2 + 55 * 10) / 1e6)
    assert state.consecutive_failures == 1 and state.answers_without_keep == 2


def test_tasks_past_the_target_are_not_looked_at() -> None:
    state = GenerationState(SEEDS, _spec(2), TokenPricing())
    state.apply(_answer(0, "Give one tip for sleeping better.", "Explain how vaccines train immunity.", "Describe a map of Rome."))
    assert len(state.kept) == 2 and state.done
    assert state.generated == 2 and not state.filtered


def test_replaying_the_same_records_gives_the_same_state() -> None:
    records = [_answer(i, f"Invent a riddle about the number {i} and a cat.", f"List {i} facts about owls and their habits.") for i in range(5)]
    a, b = GenerationState(SEEDS, _spec(50), TokenPricing()), GenerationState(SEEDS, _spec(50), TokenPricing())
    for record in records:
        a.apply(record)
    for record in records:
        b.apply(Record.from_json(record.to_json()))
    assert a.kept == b.kept and a.filtered == b.filtered and a.progress() == b.progress()


def test_builtin_seed_tasks_load() -> None:
    seeds = load_seed_tasks()
    assert len(seeds) == 175
    assert all(s.as_task().instruction for s in seeds)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"seeds.jsonl:2: not JSON"),
        (json.dumps({"id": "x", "name": "y", "instances": [{"input": "", "output": "z"}]}), r"seeds.jsonl:2: field 'instruction'"),
        (json.dumps({"id": "x", "name": "y", "instruction": "i", "instances": []}), r"seeds.jsonl:2: field 'instances'"),
        (json.dumps({"id": "x", "name": "y", "instruction": "i", "instances": [{"input": ""}]}), r"seeds.jsonl:2: field 'instances.0.output'"),
    ],
)
def test_bad_seed_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    good = json.dumps({"id": "a", "name": "b", "instruction": "Say hello.", "instances": [{"input": "", "output": "Hello."}]})
    path = tmp_path / "seeds.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(SeedTasksError, match=message):
        load_seed_tasks(path)


def test_missing_or_empty_seed_files(tmp_path: Path) -> None:
    with pytest.raises(SeedTasksError, match="cannot read"):
        load_seed_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(SeedTasksError, match="no seed tasks"):
        load_seed_tasks(tmp_path / "empty.jsonl")


def test_requests_left_in_flight_by_a_dead_process_are_charged_once_at_their_worst_case() -> None:
    journal = [
        Record(0, 4, "sent", prompt_tokens=400, completion_tokens=300),
        Record(1, 4, "sent", prompt_tokens=400, completion_tokens=300),
        _answer(0, "Describe the water cycle in three short sentences."),
        # The process died here: request 1 was out and never came back.
        Record(2, 4, "sent", prompt_tokens=500, completion_tokens=300),
        _answer(2, "List three ways to save energy at home."),
    ]
    state = _replayed(journal, 100)
    assert state.settle_in_flight() == 1 and state.settle_in_flight() == 0
    assert (state.unrecorded_requests, state.unrecorded_prompt_tokens, state.unrecorded_completion_tokens) == (1, 400, 300)
    assert state.cost_usd == pytest.approx((200 * 2 + 100 * 10) / 1e6)
    assert state.spent_usd == pytest.approx(state.cost_usd + (400 * 2 + 300 * 10) / 1e6)
    assert state.requests == 2 and len(state.kept) == 2
    # Replaying the same journal again gives the same charge: nothing is counted twice.
    again = _replayed(journal, 100)
    again.settle_in_flight()
    assert again.progress() == state.progress()


def test_journals_written_before_sent_records_existed_still_resume(tmp_path: Path) -> None:
    old = json.dumps({"v": 1, "request": 0, "first_slot": 4, "outcome": "answered", "content": "x",
                      "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 2, "problem": None, "retries": {}})
    (tmp_path / "responses.jsonl").write_text(old + "\n")
    (record,) = Journal(tmp_path / "responses.jsonl").load()
    assert record.outcome == "answered" and record.completion_tokens == 2


def test_a_cancelled_request_ends_once_and_counts_at_its_worst_case_apart_from_kills() -> None:
    journal = [
        Record(0, 4, "sent", prompt_tokens=400, completion_tokens=300),
        Record(1, 4, "sent", prompt_tokens=450, completion_tokens=300),
        _answer(0, "Describe the water cycle in three short sentences."),
        Record(1, 4, "cancelled", prompt_tokens=450, completion_tokens=300),
    ]
    state = _replayed(journal, 1)
    # Nothing is left in flight, so a restart charges nothing more for it.
    assert state.settle_in_flight() == 0 and state.unrecorded_requests == 0
    assert (state.cancelled_requests, state.cancelled_prompt_tokens, state.cancelled_completion_tokens) == (1, 450, 300)
    assert state.requests == 1 and sum(state.failed_requests.values()) == 0
    assert state.cancelled_cost_usd == pytest.approx((450 * 2 + 300 * 10) / 1e6)
    assert state.spent_usd == pytest.approx(state.cost_usd + state.cancelled_cost_usd)


def test_only_cancelled_records_need_the_newer_journal_version(tmp_path: Path) -> None:
    """A reader of version 2 reads every record but a cancellation, which it refuses by its version."""
    journal = Journal(tmp_path / "responses.jsonl")
    journal.append(Record(0, 4, "sent", prompt_tokens=10, completion_tokens=20))
    journal.append(Record(0, 4, "cancelled", prompt_tokens=10, completion_tokens=20))
    journal.close()
    versions = [json.loads(line)["v"] for line in (tmp_path / "responses.jsonl").read_text().splitlines()]
    assert versions == [2, 3]
    assert [r.outcome for r in Journal(tmp_path / "responses.jsonl").load()] == ["sent", "cancelled"]
