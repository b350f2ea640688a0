"""Reading the teacher's completion back into tasks.

The teacher continues a numbered list; each item is `N. Instruction: ...`, `N. Input:` and
`N. Output:`, items separated by `###`. Anything else in an item makes it malformed, and an item
numbered past the list's last slot (a teacher that ignored the stop sequence) is not one that was
asked for; both are counted, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .prompt import NO_INPUT, SEPARATOR, Task

_FIELD_RE = re.compile(r"^[ \t]*\d+[ \t]*\.[ \t]*(Instruction|Input|Output)[ \t]*:", re.MULTILINE)
_NUMBER_RE = re.compile(r"^\s*(\d+)[ \t]*\.")
_STARTS_WITH_ITEM_RE = re.compile(r"^\s*\d+[ \t]*\.[ \t]*Instruction[ \t]*:")
_EXPECTED = ["Instruction", "Input", "Output"]
_NO_INPUT_MARKERS = {NO_INPUT.lower(), "<no input>", "no input", ""}

MALFORMED = "malformed"
TRUNCATED = "truncated"
PAST_LAST_SLOT = "past_last_slot"


def stop_sequence(total_slots: int) -> str:
    """Where the list is full: the header of the item after the last slot (as Alpaca stopped at 20).

    The whole header, not just the number, so that a numbered list inside an output does not end
    the completion early.
    """
    return f"\n{total_slots + 1}. Instruction"


@dataclass(frozen=True)
class Parsed:
    """One item of a completion: a task, or the reason it could not be read."""

    task: Task | None
    problem: str | None = None


def _number(block: str) -> int:
    match = _NUMBER_RE.match(block)
    return int(match.group(1)) if match else 0


def _parse_item(block: str) -> Parsed:
    pieces = _FIELD_RE.split(block)
    # split() with one group gives [before, name, text, name, text, name, text].
    if len(pieces) != 7 or pieces[0].strip() or pieces[1::2] != _EXPECTED:
        return Parsed(None, MALFORMED)
    instruction = " ".join(pieces[2].split())
    text_input = pieces[4].strip()
    output = pieces[6].strip()
    if text_input.lower() in _NO_INPUT_MARKERS:
        text_input = ""
    if not instruction or not output:
        return Parsed(None, MALFORMED)
    return Parsed(Task(instruction=instruction, input=text_input, output=output))


def parse_completion(text: str, first_slot: int, *, truncated: bool, last_slot: int | None = None) -> list[Parsed]:
    """The items of a completion that continues the list at `first_slot`, up to `last_slot`.

    The prompt ends inside item `first_slot` (after `Instruction:`), so a completion that does not
    repeat that header is prefixed with it. When the completion was cut by the token limit, its last
    item is incomplete and reported as truncated.
    """
    if not _STARTS_WITH_ITEM_RE.match(text):
        text = f"{first_slot}. Instruction:{text}"
    blocks = [block for block in text.split(SEPARATOR) if block.strip()]
    items = [
        Parsed(None, PAST_LAST_SLOT) if last_slot is not None and _number(block) > last_slot else _parse_item(block)
        for block in blocks
    ]
    if truncated and items:
        items[-1] = Parsed(None, TRUNCATED)
    return items


_TASKS_ARRAY_RE = re.compile(r'\{\s*"tasks"\s*:\s*\[')


def _structured_item(value: Any) -> Parsed:
    if not isinstance(value, dict) or set(value) != {"instruction", "input", "output"}:
        return Parsed(None, MALFORMED)
    if not all(isinstance(value[key], str) for key in value):
        return Parsed(None, MALFORMED)
    instruction = " ".join(value["instruction"].split())
    text_input = value["input"].strip()
    output = value["output"].strip()
    if text_input.lower() in _NO_INPUT_MARKERS:
        text_input = ""
    if not instruction or not output:
        return Parsed(None, MALFORMED)
    return Parsed(Task(instruction=instruction, input=text_input, output=output))


def _complete_items(text: str) -> tuple[list[Any], bool]:
    """The whole items of a `{"tasks": [...` answer read one by one; and whether the array closed.

    An answer cut by the token limit still holds the items written before the cut.
    """
    match = _TASKS_ARRAY_RE.search(text)
    if match is None:
        return [], False
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = match.end()
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            return values, False
        if text[position] == "]":
            return values, True
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            return values, False
        values.append(value)


def parse_structured(text: str, open_slots: int, *, truncated: bool) -> list[Parsed]:
    """The tasks of a structured answer, `{"tasks": [{instruction, input, output}, ...]}`.

    Items past `open_slots` were not asked for. An answer cut short keeps its whole items and counts
    the cut one as truncated; an answer that is not the asked-for JSON at all is one malformed item.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        values, closed = _complete_items(text)
        items = [_structured_item(value) for value in values]
        if not closed:
            items.append(Parsed(None, TRUNCATED if truncated else MALFORMED))
    else:
        tasks = document.get("tasks") if isinstance(document, dict) else None
        if not isinstance(tasks, list):
            return [Parsed(None, MALFORMED)]
        items = [_structured_item(value) for value in tasks]
    return [Parsed(None, PAST_LAST_SLOT) if index >= open_slots else item for index, item in enumerate(items)]
