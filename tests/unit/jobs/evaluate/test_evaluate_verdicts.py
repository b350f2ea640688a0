"""The judge's verdict read out of whatever it replied; no verdict rather than a guess."""

from __future__ import annotations

import pytest

from alpaca_jobs.evaluate.rubric import RUBRIC, judge_messages, response_format, verdict_schema
from alpaca_jobs.evaluate.verdicts import normalise, parse_verdict


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"winner": "A", "reason": "correct"}', "A"),
        ('{"winner":"B","reason":"x"}', "B"),
        ('{"winner": "tie", "reason": "both fine"}', "tie"),
        ('Sure! Here is my verdict:\n```json\n{"winner": "b", "reason": "shorter and right"}\n```', "B"),
        ('{"reason": "A is long", "verdict": "Output (a)"}', "A"),
        ('{"winner": "A", "reason": "the first answer is correct but it goes on and on ab', "A"),  # cut by max_tokens
        ("Output (a)", "A"),
        ("Output (b)", "B"),
        ("A", "A"),
        ("B.", "B"),
        ("b", "B"),
        ("Tie", "tie"),
        ("[[B]]", "B"),
        ("[[C]]", "tie"),
        ("A - it follows the instruction.", "A"),
        ("After careful thought, Output (a) is better.", "A"),
        ("I think Answer B is clearly better because it is right.", "B"),
        ("The winner is A.", "A"),
        ("Verdict: tie", "tie"),
        ("It is a tie: both answers are equally good.", "tie"),
        ("I prefer response B.", "B"),
    ],
)
def test_a_clear_verdict_is_read(reply: str, expected: str) -> None:
    assert parse_verdict(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "   ",
        "Lorem ipsum dolor sit amet.",
        '{"reason": "no winner key at all"}',
        '{"winner": "the second one, probably"}',
        "Answer A is better. No wait, Answer B is better.",  # names both: no single winner
        "A and B both have merits",
        "{not json at all",
    ],
)
def test_a_reply_without_a_single_verdict_is_none(reply: str | None) -> None:
    assert parse_verdict(reply) is None


def test_values_are_normalised_from_the_shapes_judges_use() -> None:
    assert [normalise(v) for v in ("a", " Output (B) ", "response a", "draw", 1, 2, 0, True, None, 3.5)] == [
        "A", "B", "A", "tie", "A", "B", "tie", None, None, None]


def test_the_schema_is_strict_and_names_the_winner_first() -> None:
    schema = verdict_schema()
    assert list(schema["properties"]) == ["winner", "reason"]
    assert schema["required"] == ["winner", "reason"] and schema["additionalProperties"] is False
    assert response_format()["json_schema"]["strict"] is True


def test_the_judge_sees_the_rubric_the_task_and_both_answers_by_letter_only() -> None:
    system, user = judge_messages("Add the numbers.", "2 and 3", "5", "six")
    assert system == {"role": "system", "content": RUBRIC}
    text = user["content"]
    assert text.index("Add the numbers.") < text.index("2 and 3") < text.index("## Answer A\n5") < text.index("## Answer B\nsix")
    assert "candidate" not in text.lower() and "baseline" not in text.lower()
    _, no_input = judge_messages("Say hi.", "", "hi", "hello")
    assert "## Input" not in no_input["content"]
