"""Each cheap filter drops what it should, under its own reason, and nothing else."""

from __future__ import annotations

import pytest

from alpaca_jobs.generate.filters import (
    BLACKLISTED,
    STARTS_NON_ASCII,
    STARTS_WITH_PUNCTUATION,
    TOO_LONG,
    TOO_SHORT,
    WRITE_A_PROGRAM,
    InstructionFilters,
)
from alpaca_operator.api.instructdataset import Filters

FILTERS = InstructionFilters(Filters())


@pytest.mark.parametrize(
    ("instruction", "reason"),
    [
        ("Summarize this text.", TOO_SHORT),  # 3 words: Alpaca keeps more than 3
        ("Summarize this short text.", None),
        (" ".join(["word"] * 150), None),
        (" ".join(["word"] * 151), TOO_LONG),
        ("Describe the image below in one sentence.", BLACKLISTED),
        ("Draw a cat using only ASCII characters please.", BLACKLISTED),
        ("Tell me how to GO TO the station from the airport.", BLACKLISTED),
        ("Explain what a mapping between two sets is.", None),  # 'map' only as a whole word
        ("Give three tips for writing clean Python files quickly.", BLACKLISTED),
        ("Write a program that sorts a list of names.", WRITE_A_PROGRAM),
        ("write a program to add two numbers together.", WRITE_A_PROGRAM),
        ("Write a Python function that adds two numbers.", None),
        ("- Name three rivers in Africa, please.", STARTS_WITH_PUNCTUATION),
        ("\"Explain\" the meaning of this quotation.", STARTS_WITH_PUNCTUATION),
        ("¿Cómo se dice hello en francés, por favor?", STARTS_NON_ASCII),
        ("Étudiez la phrase suivante et corrigez-la.", STARTS_NON_ASCII),
        ("Name a café in Paris that artists loved.", None),  # non-ASCII later is fine
    ],
)
def test_filter_reasons(instruction: str, reason: str | None) -> None:
    assert FILTERS.reason_to_drop(instruction) == reason


def test_limits_and_blacklist_come_from_the_spec() -> None:
    filters = InstructionFilters(Filters(min_instruction_words=2, max_instruction_words=5, blacklist=["tea time"]))
    assert filters.reason_to_drop("Boil water.") is None
    assert filters.reason_to_drop("Describe the image.") is None  # default words no longer apply
    assert filters.reason_to_drop("Plan a tea time.") == BLACKLISTED
    assert filters.reason_to_drop("one two three four five six") == TOO_LONG
    assert InstructionFilters(Filters(blacklist=[])).reason_to_drop("Describe the image here.") is None
