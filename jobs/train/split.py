"""Holding out rows for the validation loss: a pure function of the rows and the seed.

Rows are grouped by their task (instruction and input, blanks trimmed), so a task that appears
twice, with the same or another answer, is never on both sides: the validation loss then measures
tasks the model has not trained on. Groups are ordered by a hash of (seed, task), which every rank
and every restart computes alike, and taken in that order until the held-out count is reached.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .data import Record

# Fewer held-out rows than this make a loss too noisy to read, when the dataset can spare them.
MIN_VALIDATION_ROWS = 8


@dataclass(frozen=True)
class Split:
    train: list[Record]
    validation: list[Record]


def validation_size(rows: int, fraction: float) -> int:
    """How many rows to hold out: the fraction (rounded up), at least MIN_VALIDATION_ROWS, never more
    than half of the rows, so training always keeps the larger part. A dataset that cannot spare
    MIN_VALIDATION_ROWS and keep as many to train on holds nothing out: a loss over a row or two is
    noise, and training needs them more."""
    if fraction <= 0 or rows < 2 * MIN_VALIDATION_ROWS:
        return 0
    return min(max(math.ceil(fraction * rows), MIN_VALIDATION_ROWS), rows // 2)


def task_key(record: Record) -> tuple[str, str]:
    return record.instruction.strip(), record.input.strip()


def _rank(seed: int, key: tuple[str, str]) -> str:
    return hashlib.sha256(f"{seed}\x00{key[0]}\x00{key[1]}".encode()).hexdigest()


def split(records: Sequence[Record], fraction: float, seed: int) -> Split:
    """Training and validation rows, each in file order. Whole task groups are held out, so the
    validation side may end a few rows above its size when the last group taken has repeats; it
    never takes more than half of the rows (and may be empty when one task fills most of them)."""
    want = validation_size(len(records), fraction)
    if want == 0:
        return Split(list(records), [])
    groups: dict[tuple[str, str], list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(task_key(record), []).append(index)
    held: set[int] = set()
    for key in sorted(groups, key=lambda k: _rank(seed, k)):
        if len(held) >= want:
            break
        if len(held) + len(groups[key]) > len(records) // 2:
            continue  # a task repeated that often would leave training the smaller part: try the next
        held.update(groups[key])
    return Split(
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )
