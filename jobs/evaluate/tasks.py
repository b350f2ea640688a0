"""The instructions both models answer: the project's held-out set or a user's JSONL, sampled reproducibly.

A line is either the seed-task shape (`instruction` + `instances[0].input`, as seeds/eval_tasks.jsonl)
or a plain task (`instruction`, optional `input`). A task is known by its instruction and input
together: that is how answers written beforehand are matched to it, and how the journal names it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

from alpaca_jobs import storage

BUILTIN = "eval_tasks.jsonl"


class TasksError(ValueError):
    """A task file that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class EvalTask:
    instruction: str
    input: str = ""

    @property
    def key(self) -> str:
        """A short stable name for the journal, the same in every process."""
        return hashlib.sha256(f"{self.instruction}\x00{self.input}".encode()).hexdigest()[:16]


def _task(data: Any, where: str) -> EvalTask:
    if not isinstance(data, dict):
        raise TasksError(f"{where}: a task must be a JSON object")
    instruction = data.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise TasksError(f"{where}: field 'instruction' must be a non-empty string")
    if "instances" in data:
        instances = data["instances"]
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise TasksError(f"{where}: field 'instances' must be a non-empty list of objects")
        text = instances[0].get("input", "")
        field = "instances.0.input"
    else:
        text = data.get("input", "")
        field = "input"
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TasksError(f"{where}: field {field!r} must be a string")
    return EvalTask(instruction.strip(), text.strip())


def parse_tasks(text: str, source: str) -> list[EvalTask]:
    """Tasks in file order; a repeated (instruction, input) is kept once (it would be judged twice)."""
    tasks: list[EvalTask] = []
    seen: set[EvalTask] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TasksError(f"{source}:{number}: not JSON: {exc.msg} (column {exc.colno})") from None
        task = _task(data, f"{source}:{number}")
        if task not in seen:
            seen.add(task)
            tasks.append(task)
    if not tasks:
        raise TasksError(f"{source}: no tasks")
    return tasks


def load_tasks(location: str | None = None) -> list[EvalTask]:
    """Tasks from a JSONL file (path or URI), or the built-in evaluation set when `location` is None."""
    if location is None:
        text = resources.files("alpaca_jobs.seeds").joinpath(BUILTIN).read_text(encoding="utf-8")
        return parse_tasks(text, f"builtin {BUILTIN}")
    try:
        text = storage.local_path(location).read_text(encoding="utf-8")
    except OSError as exc:
        raise TasksError(f"{location}: cannot read tasks: {exc.strerror or exc}") from None
    return parse_tasks(text, location)


def sample(tasks: list[EvalTask], size: int | None, seed: int) -> list[EvalTask]:
    """`size` tasks drawn with `seed` (all when unset or larger), kept in file order."""
    if size is None or size >= len(tasks):
        return list(tasks)
    chosen = sorted(random.Random(seed).sample(range(len(tasks)), size))
    return [tasks[i] for i in chosen]
