"""Reading the teacher's completion back into tasks.

The teacher continues a numbered list; each item is `N. Instruction: ...`, `N. Input:` and
`N. Output:`, items separated by `###`. An item starts at its `N. Instruction:` header whatever
separates it from the one before (small teachers write `-----`, blank lines or nothing instead of
`###`), an item with no `N. Input:` has an empty input, and separator lines are not part of a field.
Anything else in an item (fields out of order, repeated, or numbered apart from their item) makes it
malformed, and an item numbered past the list's last slot (a teacher that ignored the stop
sequence) is not one that was asked for; both are counted, never raised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .prompt import NO_INPUT, Task

_FIELD_RE = re.compile(r"^[ \t]*(\d+)[ \t]*\.[ \t]*(Instruction|Input|Output)[ \t]*:", re.MULTILINE)
_ITEM_RE = re.compile(r"^[ \t]*(\d+)[ \t]*\.[ \t]*Instruction[ \t]*:", re.MULTILINE)
_STARTS_WITH_ITEM_RE = re.compile(r"^\s*\d+[ \t]*\.[ \t]*Instruction[ \t]*:")
# Lines that only separate items: ###, -----, ***, ===.
_RULE_RE = re.compile(r"^[ \t]*(#{2,}|-{3,}|\*{3,}|={3,})[ \t]*$", re.MULTILINE)
_LAYOUTS = (["Instruction", "Input", "Output"], ["Instruction", "Output"])
# The built-in prompt's list header ("Tasks 1 to 8:"), which a teacher sometimes starts again after
# its last item: not part of that item's output.
_LIST_HEADER_RE = re.compile(r"\n[ \t]*Tasks \d+ to \d+:[ \t]*$")
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


def _parse_item(block: str, number: int) -> Parsed:
    pieces = _FIELD_RE.split(_RULE_RE.sub("", block))
    # split() with two groups gives [before, number, name, text, number, name, text, ...].
    fields = [(int(pieces[i]), pieces[i + 1], pieces[i + 2]) for i in range(1, len(pieces), 3)]
    if pieces[0].strip() or [name for _, name, _ in fields] not in _LAYOUTS:
        return Parsed(None, MALFORMED)
    if any(field_number != number for field_number, _, _ in fields):
        return Parsed(None, MALFORMED)
    text = {name: value for _, name, value in fields}
    instruction = " ".join(text["Instruction"].split())
    text_input = text.get("Input", "").strip()
    output = _LIST_HEADER_RE.sub("", text["Output"].rstrip()).strip()
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
    starts = list(_ITEM_RE.finditer(text))
    items = []
    for index, start in enumerate(starts):
        number = int(start.group(1))
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        if last_slot is not None and number > last_slot:
            items.append(Parsed(None, PAST_LAST_SLOT))
        else:
            items.append(_parse_item(text[start.start():end], number))
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
