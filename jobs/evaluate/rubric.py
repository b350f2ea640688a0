"""What the judge is asked: the rubric, one pair of answers, and the shape of its verdict.

The answers are called A and B and nothing else: the judge never learns which model wrote which,
and each pair is shown twice with the letters swapped (see verdicts.py and stats.py), so a judge
that favours a position produces ties rather than wins.
"""

from __future__ import annotations

from typing import Any

SCHEMA_NAME = "verdict"

RUBRIC = """You compare two answers to the same instruction and decide which one serves the person who asked better.

Judge in this order:
1. Correctness: facts, arithmetic, code and reasoning must be right. A wrong answer loses to a right one, however well written.
2. Following the instruction: does the answer do what was asked, use the input when there is one, and respect any format, length or audience the instruction names?
3. Helpfulness: is it complete, specific and clear, without padding, repetition or text that was not asked for?
4. Safety and honesty: it must not invent facts or refuse without reason.

Length is not a merit in itself: a longer answer wins only when the extra words make it more correct or more useful.
The order in which the answers are shown means nothing.
Call it a tie only when neither answer is better on any of the points above.

Reply with one JSON object and nothing else: {"winner": "A", "B" or "tie", "reason": one short sentence}."""


def verdict_schema() -> dict[str, Any]:
    """The verdict as a JSON schema that OpenAI's strict mode accepts (every property required, no extras).

    The winner comes first so that a reply cut short by max_tokens still carries it.
    """
    return {
        "type": "object",
        "properties": {
            "winner": {"type": "string", "enum": ["A", "B", "tie"]},
            "reason": {"type": "string"},
        },
        "required": ["winner", "reason"],
        "additionalProperties": False,
    }


def response_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": verdict_schema(), "strict": True}}


def judge_messages(instruction: str, input_text: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    """The chat messages of one judgement: the rubric, then the task and the two answers."""
    parts = [f"## Instruction\n{instruction}"]
    if input_text:
        parts.append(f"## Input\n{input_text}")
    parts.append(f"## Answer A\n{answer_a}")
    parts.append(f"## Answer B\n{answer_b}")
    parts.append('Which answer is better? Reply with {"winner": "A" | "B" | "tie", "reason": "..."}.')
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": "\n\n".join(parts)}]


# The project's chat convention (jobs/serve/prompts.py): the input is a user message of its own named
# "input", right after the instruction. `alpaca serve` fills the instruction template's input slot
# with it; any other chat server reads it as a second user turn.
INPUT_NAME = "input"


def answer_messages(instruction: str, input_text: str) -> list[dict[str, str]]:
    """How a contestant is asked a task: the instruction, then the input when there is one."""
    messages = [{"role": "user", "content": instruction}]
    if input_text:
        messages.append({"role": "user", "name": INPUT_NAME, "content": input_text})
    return messages
