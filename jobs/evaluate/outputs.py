"""Answers written beforehand (Alpaca's teacher outputs, say): JSONL of instruction, input, output.

They are matched to the tasks by instruction and input (both stripped, as tasks are), so a file may
hold more answers than the evaluation asks for, but never fewer.
"""

from __future__ import annotations

import json

from alpaca_jobs import storage

from .tasks import EvalTask, TasksError


class OutputsError(TasksError):
    """An outputs file that cannot be used, or that lacks an answer to a task."""


def parse_outputs(text: str, source: str) -> dict[EvalTask, str]:
    answers: dict[EvalTask, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputsError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from None
        if not isinstance(data, dict):
            raise OutputsError(f"{where}: an answer must be a JSON object with instruction, input and output")
        for field, required in (("instruction", True), ("input", False), ("output", True)):
            value = data.get(field, None if required else "")
            if not isinstance(value, str) or (field == "instruction" and not value.strip()):
                raise OutputsError(f"{where}: field {field!r} must be a {'non-empty ' if field == 'instruction' else ''}string")
        answers.setdefault(EvalTask(data["instruction"].strip(), (data.get("input") or "").strip()), data["output"])
    return answers


def load_outputs(location: str) -> dict[EvalTask, str]:
    try:
        text = storage.local_path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise OutputsError(f"{location}: cannot read outputs: {exc.strerror or exc}") from None
    return parse_outputs(text, location)


def answers_for(tasks: list[EvalTask], answers: dict[EvalTask, str], source: str, side: str) -> dict[str, str]:
    """Each task's answer by task key; the first task without one is named in the error."""
    found: dict[str, str] = {}
    for task in tasks:
        if task not in answers:
            shown = task.instruction if len(task.instruction) <= 80 else task.instruction[:77] + "..."
            raise OutputsError(
                f"{side} outputs {source} have no answer for the task {shown!r}"
                f"{f' with input {task.input[:60]!r}' if task.input else ' (no input)'}: "
                "every task needs a line with the same instruction and input"
            )
        found[task.key] = answers[task]
    return found
