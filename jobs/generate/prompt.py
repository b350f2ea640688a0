"""The request shown to the teacher: guidelines, a few example tasks, and numbered slots to fill."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alpaca_operator.api.instructdataset import NUMBERED_PLACEHOLDERS, STRUCTURED_PLACEHOLDERS, TeacherFormat

NO_INPUT = "<noinput>"
SEPARATOR = "###"


@dataclass(frozen=True)
class Task:
    """One instruction-following example in Alpaca's format."""

    instruction: str
    input: str
    output: str

    def as_record(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


GUIDELINES = """\
You are writing tasks for a collection that will teach an AI assistant to follow instructions. \
Continue the numbered list below until it holds {total} tasks.

Guidelines for the new tasks:
1. Open the instructions with many different verbs; avoid using the same verb twice.
2. Vary the phrasing: some tasks are questions, some are commands, some are polite requests.
3. Mix the kinds of work: open-ended writing, brainstorming, classification, rewriting and editing, \
pulling facts out of a text, reasoning, arithmetic, programming, recommendations, explanations and more.
4. Each task must be doable by a language model that only reads and writes text. Leave out anything \
that needs seeing, hearing, drawing or acting in the world, such as describing a photo, listening to a \
recording or setting a reminder.
5. Write every task in English.
6. Keep each instruction to one or two sentences.
7. Give a task an input only when it needs one, and then make the input real and specific (the actual \
passage, list, sentence or numbers), never a placeholder. When the instruction stands on its own, write \
{no_input} as its input.
8. Make the output a correct, fitting answer to the instruction and input, in fewer than 100 words.

Keep exactly the format of the tasks below, with {separator} on its own line between tasks.

Tasks 1 to {total}:
"""


# A placeholder is a word in braces; other braces (a JSON example in the text) stay as written.
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TEMPLATE_FIELD = "spec.promptTemplate"


class PromptTemplateError(ValueError):
    """A prompt template that cannot be used; the message names the field and what is allowed."""


def allowed_placeholders(teacher_format: TeacherFormat) -> tuple[str, ...]:
    return STRUCTURED_PLACEHOLDERS if teacher_format is TeacherFormat.STRUCTURED else NUMBERED_PLACEHOLDERS


def check_template(text: str, teacher_format: TeacherFormat, source: str = TEMPLATE_FIELD) -> str:
    """The template, if every placeholder in it is one its format fills in."""
    if not text.strip():
        raise PromptTemplateError(f"{source}: the prompt template is empty")
    allowed = allowed_placeholders(teacher_format)
    unknown = sorted({match.group(1) for match in _PLACEHOLDER_RE.finditer(text)} - set(allowed))
    if unknown:
        named = ", ".join(f"{{{name}}}" for name in unknown)
        permitted = ", ".join(f"{{{name}}}" for name in allowed)
        raise PromptTemplateError(
            f"{source}: unknown placeholder{'s' if len(unknown) > 1 else ''} {named}; "
            f"a {teacher_format.value} prompt template may use {permitted}"
        )
    return text


def render(template: str, values: Mapping[str, object]) -> str:
    """The template with its placeholders filled in (check_template has vouched for their names)."""
    return _PLACEHOLDER_RE.sub(lambda match: str(values[match.group(1)]), template)


def format_task(number: int, task: Task) -> str:
    return (
        f"{SEPARATOR}\n"
        f"{number}. Instruction: {task.instruction}\n"
        f"{number}. Input:\n{task.input or NO_INPUT}\n"
        f"{number}. Output:\n{task.output}\n"
    )


def build_prompt(examples: Sequence[Task], total_slots: int, template: str | None = None) -> str:
    """Guidelines (the built-in ones or `template`), the examples as tasks 1..k, and the open slot
    k+1 for the teacher to continue. The list always comes last: the teacher continues it."""
    if len(examples) >= total_slots:
        raise ValueError(f"{len(examples)} example tasks leave no slot free out of {total_slots}")
    header = render(template if template is not None else GUIDELINES, {
        "total": total_slots, "shown": len(examples), "open": total_slots - len(examples),
        "no_input": NO_INPUT, "separator": SEPARATOR,
    })
    parts = [header if header.endswith("\n") else header + "\n"]
    parts.extend(format_task(number, task) for number, task in enumerate(examples, start=1))
    parts.append(f"{SEPARATOR}\n{len(examples) + 1}. Instruction:")
    return "".join(parts)


def choose_examples(
    seeds: Sequence[Task],
    generated: Sequence[Task],
    seeds_per_prompt: int,
    generated_per_prompt: int,
    rng: random.Random,
) -> list[Task]:
    """Seed tasks plus (once there are some) already generated ones, in random order."""
    chosen = rng.sample(list(seeds), min(seeds_per_prompt, len(seeds)))
    if generated_per_prompt and generated:
        chosen += rng.sample(list(generated), min(generated_per_prompt, len(generated)))
    rng.shuffle(chosen)
    return chosen


def request_rng(random_seed: int, request: int) -> random.Random:
    """Each request's choices depend only on the run's seed and its number, so a resumed run asks
    the same questions a fresh one would."""
    return random.Random(f"{random_seed}/{request}")


STRUCTURED_GUIDELINES = """\
You are writing tasks for a collection that will teach an AI assistant to follow instructions. \
Below are {shown} example tasks as JSON. Write {open} new tasks.

Guidelines for the new tasks:
1. Open the instructions with many different verbs; avoid using the same verb twice.
2. Vary the phrasing: some tasks are questions, some are commands, some are polite requests.
3. Mix the kinds of work: open-ended writing, brainstorming, classification, rewriting and editing, \
pulling facts out of a text, reasoning, arithmetic, programming, recommendations, explanations and more.
4. Each task must be doable by a language model that only reads and writes text. Leave out anything \
that needs seeing, hearing, drawing or acting in the world.
5. Write every task in English, each instruction in one or two sentences.
6. Give a task an input only when it needs one, and then make it real and specific (the actual passage, \
list, sentence or numbers); otherwise leave "input" empty.
7. Make the output a correct, fitting answer to the instruction and input, in fewer than 100 words.

Answer with a JSON object whose "tasks" array holds the new tasks, each with "instruction", "input" and "output".

Example tasks:
{examples}

New tasks:
"""

# The answer's schema name, as OpenAI's response_format asks for one.
STRUCTURED_SCHEMA_NAME = "instruction_tasks"


def task_schema(open_slots: int) -> dict[str, Any]:
    """The JSON schema of a structured answer: up to `open_slots` tasks under "tasks".

    An object at the top (OpenAI's strict mode takes no bare arrays) and only keywords OpenAI's
    strict mode supports, so the same request works against OpenAI, vLLM and alpaca serve.
    """
    # "pattern" (which strict mode supports, unlike minLength): an instruction or output must hold
    # more than whitespace, or the task is dropped after being paid for.
    written = {"type": "string", "pattern": "\\S"}
    task = {
        "type": "object",
        "properties": {"instruction": written, "input": {"type": "string"}, "output": written},
        "required": ["instruction", "input", "output"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"tasks": {"type": "array", "items": task, "minItems": 1, "maxItems": open_slots}},
        "required": ["tasks"],
        "additionalProperties": False,
    }


def open_slots(instructions_per_request: int, seed_tasks_per_prompt: int, generated_tasks_per_prompt: int) -> int:
    """Tasks asked of one structured request: the slots left once a full set of examples is shown.

    One number for the whole run, so that every request carries the same schema (a server compiles
    it once) and a resumed run reads old answers with the limit they were asked under.
    """
    return instructions_per_request - seed_tasks_per_prompt - generated_tasks_per_prompt


def build_structured_prompt(examples: Sequence[Task], wanted: int, template: str | None = None) -> str:
    """Guidelines (the built-in ones or `template`), the examples as JSON, and how many new tasks
    are wanted. A template that does not place {examples} gets them after its text."""
    if wanted < 1:
        raise ValueError(f"a structured request must ask for at least one task, not {wanted}")
    shown = json.dumps({"tasks": [task.as_record() for task in examples]}, ensure_ascii=False, indent=1)
    text = template if template is not None else STRUCTURED_GUIDELINES
    values = {"total": len(examples) + wanted, "shown": len(examples), "open": wanted, "examples": shown}
    prompt = render(text, values)
    if not any(match.group(1) == "examples" for match in _PLACEHOLDER_RE.finditer(text)):
        prompt = f"{prompt.rstrip()}\n\n{shown}\n"
    return prompt
