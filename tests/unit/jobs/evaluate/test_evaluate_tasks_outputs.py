"""Tasks from the held-out set or a user's file, sampled reproducibly; answers written beforehand matched to them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_jobs.evaluate.outputs import OutputsError, answers_for, parse_outputs
from alpaca_jobs.evaluate.rubric import answer_messages
from alpaca_jobs.evaluate.tasks import EvalTask, TasksError, load_tasks, parse_tasks, sample


def test_the_built_in_tasks_load_in_the_seed_shape() -> None:
    tasks = load_tasks()
    assert len(tasks) == 40 == len({t.key for t in tasks})
    assert any(t.input for t in tasks) and any(not t.input for t in tasks)
    assert tasks[0] == EvalTask("Rewrite this announcement so it sounds more enthusiastic.", "The new feature is available now.")


def test_a_sample_is_reproducible_and_keeps_the_file_order() -> None:
    tasks = load_tasks()
    first = sample(tasks, 10, seed=1)
    assert first == sample(tasks, 10, seed=1)
    assert first != sample(tasks, 10, seed=2)
    assert first == sorted(first, key=tasks.index)
    assert sample(tasks, None, 0) == tasks == sample(tasks, 400, 0)


def test_a_users_file_of_plain_tasks_and_its_mistakes(tmp_path: Path) -> None:
    text = '{"instruction": " Say hi. "}\n\n{"instruction": "Add.", "input": "2 3"}\n{"instruction": "Say hi.", "input": ""}\n'
    assert parse_tasks(text, "t.jsonl") == [EvalTask("Say hi."), EvalTask("Add.", "2 3")]  # the repeat is kept once
    for line, error in [
        ('{"input": "x"}', "t.jsonl:1: field 'instruction' must be a non-empty string"),
        ('{"instruction": "x", "input": 3}', "t.jsonl:1: field 'input' must be a string"),
        ('{"instruction": "x", "instances": []}', "t.jsonl:1: field 'instances' must be a non-empty list"),
        ("[1]", "t.jsonl:1: a task must be a JSON object"),
        ("{oops", "t.jsonl:1: not JSON"),
    ]:
        with pytest.raises(TasksError, match=error.replace("(", r"\(")):
            parse_tasks(line, "t.jsonl")
    with pytest.raises(TasksError, match="no tasks"):
        parse_tasks("\n", "t.jsonl")
    with pytest.raises(TasksError, match="cannot read tasks"):
        load_tasks(str(tmp_path / "missing.jsonl"))
    path = tmp_path / "mine.jsonl"
    path.write_text(text)
    assert load_tasks(f"file://{path}") == load_tasks(str(path))


def test_written_answers_are_matched_by_instruction_and_input() -> None:
    rows = [{"instruction": "Add.", "input": "2 3", "output": "5"}, {"instruction": "Say hi. ", "output": "hi"},
            {"instruction": "Unused.", "input": "", "output": "x"}]
    answers = parse_outputs("".join(json.dumps(r) + "\n" for r in rows), "o.jsonl")
    tasks = [EvalTask("Add.", "2 3"), EvalTask("Say hi.")]
    assert answers_for(tasks, answers, "o.jsonl", "baseline") == {tasks[0].key: "5", tasks[1].key: "hi"}
    with pytest.raises(OutputsError, match=r"baseline outputs o.jsonl have no answer for the task 'Add.' with input '2 4'"):
        answers_for([EvalTask("Add.", "2 4")], answers, "o.jsonl", "baseline")
    with pytest.raises(OutputsError, match="o.jsonl:1: field 'output' must be a string"):
        parse_outputs('{"instruction": "x", "input": ""}', "o.jsonl")


def test_a_contestant_gets_the_input_as_a_message_named_input() -> None:
    assert answer_messages("Add.", "") == [{"role": "user", "content": "Add."}]
    assert answer_messages("Add.", "2 3")[1] == {"role": "user", "name": "input", "content": "2 3"}
