"""Seed tasks: the human-written examples every prompt starts from.

The built-in set ships inside the package (alpaca_jobs.seeds); a user's set is a JSONL file of the
same schema. A bad line is reported with its file, line number and field.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alpaca_jobs import storage

from .prompt import Task


class SeedInstance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = ""
    output: str = Field(min_length=1)


class SeedTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    instances: list[SeedInstance] = Field(min_length=1)
    is_classification: bool = False

    def as_task(self) -> Task:
        """The first instance is what a prompt shows, as the seed set's format intends."""
        first = self.instances[0]
        return Task(instruction=self.instruction.strip(), input=first.input.strip(), output=first.output.strip())


class SeedTasksError(ValueError):
    """A seed file that cannot be used; the message names the file, line and field."""


def parse_seed_tasks(text: str, source: str) -> list[SeedTask]:
    tasks: list[SeedTask] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            tasks.append(SeedTask.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise SeedTasksError(f"{source}:{number}: not JSON: {exc.msg} (column {exc.colno})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(line)"
            raise SeedTasksError(f"{source}:{number}: field {field!r}: {first['msg']}") from None
    if not tasks:
        raise SeedTasksError(f"{source}: no seed tasks")
    return tasks


def load_seed_tasks(path: str | Path | None = None) -> list[SeedTask]:
    """Seed tasks from a JSONL file, or the project's built-in set when `path` is None."""
    if path is None:
        text = resources.files("alpaca_jobs.seeds").joinpath("seed_tasks.jsonl").read_text(encoding="utf-8")
        return parse_seed_tasks(text, "builtin seed_tasks.jsonl")
    try:
        # A URI (s3://...) is fetched into the local cache first; a path is read where it is.
        text = storage.local_path(str(path)).read_text(encoding="utf-8")
    except OSError as exc:
        raise SeedTasksError(f"{path}: cannot read seed tasks: {exc.strerror or exc}") from None
    return parse_seed_tasks(text, str(path))
