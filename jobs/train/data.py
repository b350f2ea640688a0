"""Reading Alpaca-format data and turning each row into token ids with response-only labels.

Two layouts are read: JSON Lines (one object a line, what `alpaca generate` writes) and one JSON
array of objects (how the released Alpaca data, alpaca_data.json, is published).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .prompts import DEFAULT, PromptTemplates

IGNORE_INDEX = -100  # labels with this value add nothing to the loss (torch's cross_entropy default)


class DatasetError(ValueError):
    """The training data cannot be used; the message names the file and, where it applies, the line."""


class Tokenizer(Protocol):
    eos_token_id: int | None

    def __call__(self, text: list[str], add_special_tokens: bool = ...) -> Any: ...


@dataclass(frozen=True)
class Record:
    instruction: str
    input: str
    output: str
    line: int  # where the row is: its line in a JSONL file, its index in a JSON array


@dataclass(frozen=True)
class Example:
    """One training example. `labels` is aligned with `input_ids` (the shift happens in the loss)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    line: int

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def read_records(path: Path) -> list[Record]:
    """Every row of an Alpaca JSONL file or JSON array, checked; blank JSONL lines are skipped."""
    if not path.is_file():
        raise DatasetError(f"{path}: dataset file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    records = _read_array(path, text) if text.lstrip().startswith("[") else _read_lines(path, text)
    if not records:
        raise DatasetError(f"{path}: dataset is empty (no JSON rows)")
    return records


def _read_lines(path: Path, text: str) -> list[Record]:
    records = []
    # Only "\n" ends a row: str.splitlines() would also split inside strings at U+2028 and friends.
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        records.append(_check_row(where, number, row))
    return records


def _read_array(path: Path, text: str) -> list[Record]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rows, list):
        raise DatasetError(f"{path}: expected a JSON array of objects or JSON Lines, got {type(rows).__name__}")
    return [_check_row(f"{path}[{index}]", index, row) for index, row in enumerate(rows)]


def _check_row(where: str, number: int, row: Any) -> Record:
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object with instruction/input/output, got {type(row).__name__}")
    for field in ("instruction", "output"):
        value = row.get(field)
        if not isinstance(value, str) or not value.strip():
            raise DatasetError(f"{where}: field {field!r} must be a non-empty string")
    input_text = row.get("input", "")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        raise DatasetError(f"{where}: field 'input' must be a string when present")
    return Record(row["instruction"], input_text, row["output"], number)


def tokenize(
    records: Sequence[Record], tokenizer: Tokenizer, max_seq_length: int, templates: PromptTemplates = DEFAULT
) -> tuple[list[Example], list[int]]:
    """Examples for the records, and the lines skipped because the prompt alone fills `max_seq_length`.

    The prompt and the response are tokenised apart and joined, so training sees exactly the token
    boundary that generation after the prompt will see. Responses end with EOS so the model learns
    to stop. Long examples lose the end of their response, never their prompt.
    """
    if tokenizer.eos_token_id is None:
        raise DatasetError("the tokenizer has no EOS token; cannot mark where responses end")
    if not records:  # fast tokenizers refuse an empty batch; nothing held out is a valid split
        return [], []
    prompts = tokenizer([templates.render(r.instruction, r.input) for r in records], add_special_tokens=True)["input_ids"]
    responses = tokenizer([r.output for r in records], add_special_tokens=False)["input_ids"]
    examples: list[Example] = []
    skipped: list[int] = []
    for record, prompt_ids, response_ids in zip(records, prompts, responses, strict=True):
        target = [*response_ids, tokenizer.eos_token_id]
        room = max_seq_length - len(prompt_ids)
        if room <= 0:
            skipped.append(record.line)
            continue
        target = target[:room]
        examples.append(
            Example(
                input_ids=(*prompt_ids, *target),
                labels=(*([IGNORE_INDEX] * len(prompt_ids)), *target),
                line=record.line,
            )
        )
    return examples, skipped
