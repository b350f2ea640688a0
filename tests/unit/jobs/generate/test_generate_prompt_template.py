"""A user's own prompt template: which placeholders each format allows, and how a request is built from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca_jobs.generate.prompt import (
    NO_INPUT,
    SEPARATOR,
    PromptTemplateError,
    Task,
    build_prompt,
    build_structured_prompt,
    check_template,
)
from alpaca_jobs.generate.runner import ConfigError, load_prompt_template
from alpaca_operator.api.instructdataset import NUMBERED_PLACEHOLDERS, STRUCTURED_PLACEHOLDERS, TeacherFormat

EXAMPLES = [
    Task("Name three primary colours.", "", "Red, yellow and blue."),
    Task("Fix the spelling in this sentence.", "I recieved teh letter.", "I received the letter."),
]

# Shaped like Alpaca's prompt.txt: fixed numbers, no placeholders at all.
PLAIN = "Invent a set of 20 varied tasks for a language model.\nRules: be brief.\n\nList of 20 tasks:"


def test_a_template_without_placeholders_is_used_as_written_before_the_numbered_list() -> None:
    prompt = build_prompt(EXAMPLES, total_slots=20, template=check_template(PLAIN, TeacherFormat.NUMBERED))
    # The text, one newline, then the list the teacher continues, as Alpaca's generator builds it.
    assert prompt.startswith(PLAIN + "\n###\n1. Instruction: Name three primary colours.\n")
    assert "2. Input:\nI recieved teh letter.\n" in prompt
    assert prompt.endswith(f"{SEPARATOR}\n3. Instruction:")
    assert "Tasks 1 to" not in prompt  # nothing of the built-in guidelines


def test_numbered_placeholders_are_filled_in_for_each_request() -> None:
    template = "Write {open} more, {total} in all after the {shown} shown. Empty input: {no_input}. Between: {separator}\n"
    prompt = build_prompt(EXAMPLES, total_slots=8, template=check_template(template, TeacherFormat.NUMBERED))
    assert prompt.startswith(f"Write 6 more, 8 in all after the 2 shown. Empty input: {NO_INPUT}. Between: {SEPARATOR}\n###\n1.")
    assert prompt.endswith("###\n3. Instruction:")


def test_braces_that_are_not_a_placeholder_stay_as_written() -> None:
    template = 'Answer like {"instruction": "..."} would, {total} tasks.'
    prompt = build_prompt(EXAMPLES, total_slots=5, template=check_template(template, TeacherFormat.NUMBERED))
    assert prompt.startswith('Answer like {"instruction": "..."} would, 5 tasks.\n')


@pytest.mark.parametrize(
    ("text", "teacher_format", "unknown", "allowed"),
    [
        ("List {count} tasks.", TeacherFormat.NUMBERED, "{count}", NUMBERED_PLACEHOLDERS),
        ("Examples: {examples}", TeacherFormat.NUMBERED, "{examples}", NUMBERED_PLACEHOLDERS),
        ("Use {separator} between them. {foo}", TeacherFormat.STRUCTURED, "{foo}, {separator}", STRUCTURED_PLACEHOLDERS),
    ],
)
def test_an_unknown_placeholder_is_refused_naming_the_field_and_the_allowed_ones(
    text: str, teacher_format: TeacherFormat, unknown: str, allowed: tuple[str, ...]
) -> None:
    with pytest.raises(PromptTemplateError) as raised:
        check_template(text, teacher_format)
    message = str(raised.value)
    assert message.startswith("spec.promptTemplate: ")
    assert unknown in message
    assert f"a {teacher_format.value} prompt template may use" in message
    assert all(f"{{{name}}}" in message for name in allowed)


def test_an_empty_template_is_refused() -> None:
    with pytest.raises(PromptTemplateError, match="spec.promptTemplate: the prompt template is empty"):
        check_template(" \n", TeacherFormat.NUMBERED)


def test_structured_template_places_the_examples_where_it_says() -> None:
    template = "Here are {shown} tasks:\n{examples}\nNow {open} new ones ({total} in all), as JSON."
    prompt = build_structured_prompt(EXAMPLES, 4, check_template(template, TeacherFormat.STRUCTURED))
    head, rest = prompt.split("\n", 1)
    assert head == "Here are 2 tasks:"
    shown, tail = rest.rsplit("\n", 1)
    assert json.loads(shown) == {"tasks": [task.as_record() for task in EXAMPLES]}
    assert tail == "Now 4 new ones (6 in all), as JSON."


def test_structured_template_without_examples_gets_them_after_its_text() -> None:
    prompt = build_structured_prompt(EXAMPLES, 3, check_template(PLAIN, TeacherFormat.STRUCTURED))
    assert prompt.startswith(PLAIN + "\n\n")
    assert json.loads(prompt[len(PLAIN):]) == {"tasks": [task.as_record() for task in EXAMPLES]}


def test_the_job_reads_the_template_and_refuses_a_bad_one_before_asking_anything(tmp_path: Path) -> None:
    good = tmp_path / "prompt.txt"
    good.write_text("Write {open} tasks.\n", encoding="utf-8")
    assert load_prompt_template(str(good), TeacherFormat.NUMBERED) == "Write {open} tasks.\n"
    assert load_prompt_template(f"file://{good}", TeacherFormat.STRUCTURED) == "Write {open} tasks.\n"
    assert load_prompt_template(None, TeacherFormat.NUMBERED) is None

    bad = tmp_path / "bad.txt"
    bad.write_text("Write {n} tasks.", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"spec.promptTemplate \({bad}\): unknown placeholder \{{n\}}"):
        load_prompt_template(str(bad), TeacherFormat.NUMBERED)
    with pytest.raises(ConfigError, match="spec.promptTemplate .*cannot read the prompt template"):
        load_prompt_template(str(tmp_path / "missing.txt"), TeacherFormat.NUMBERED)
