"""Held-out rows: disjoint from training by task, the same on every call, sized as documented."""

from __future__ import annotations

import pytest

from alpaca_jobs.train.data import Record
from alpaca_jobs.train.split import MIN_VALIDATION_ROWS, split, task_key, validation_size


def rows(count: int, repeats: int = 1) -> list[Record]:
    """`count` rows over count // repeats distinct tasks, each task on `repeats` rows (other answers)."""
    return [Record(f"Task {i // repeats}.", "" if i % 3 else f"input {i // repeats}", f"answer {i}", i + 1) for i in range(count)]


@pytest.mark.parametrize("repeats", [1, 3])
def test_no_task_is_on_both_sides(repeats: int) -> None:
    data = rows(300, repeats)
    parts = split(data, 0.1, seed=7)
    assert len(parts.train) + len(parts.validation) == len(data)
    assert {task_key(r) for r in parts.train}.isdisjoint({task_key(r) for r in parts.validation})
    assert 30 <= len(parts.validation) < 30 + repeats  # whole groups: at most one group's worth above


def test_the_same_rows_are_held_out_on_every_call_and_the_seed_changes_them() -> None:
    data = rows(200)
    first, again = split(data, 0.05, seed=1), split(list(data), 0.05, seed=1)
    assert [r.line for r in first.validation] == [r.line for r in again.validation]
    assert [r.line for r in split(data, 0.05, seed=2).validation] != [r.line for r in first.validation]
    # Held-out rows are spread over the file, not its head or tail.
    lines = [r.line for r in first.validation]
    assert min(lines) < 100 < max(lines)


def test_a_small_fraction_still_holds_out_a_handful_and_never_more_than_half() -> None:
    assert validation_size(1000, 0.03) == 30
    assert validation_size(100, 0.03) == MIN_VALIDATION_ROWS
    assert validation_size(16, 0.03) == MIN_VALIDATION_ROWS
    assert validation_size(15, 0.5) == 0  # too few to spare a handful
    assert validation_size(1, 0.03) == 0
    assert validation_size(1000, 0.0) == 0
    assert len(split(rows(100), 0.03, seed=0).validation) == MIN_VALIDATION_ROWS


def test_zero_fraction_trains_on_every_row_in_file_order() -> None:
    data = rows(50)
    parts = split(data, 0.0, seed=0)
    assert parts.train == data and parts.validation == []


def test_one_task_on_most_rows_is_never_held_out() -> None:
    data = [Record("Same.", "", f"a{i}", i + 1) for i in range(30)] + rows(10)
    parts = split(data, 0.2, seed=0)
    assert all(r.instruction != "Same." for r in parts.validation)
    assert len(parts.validation) >= MIN_VALIDATION_ROWS
