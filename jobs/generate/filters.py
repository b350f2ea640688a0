"""The cheap filters an instruction must pass before the ROUGE-L check, each with its reason."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from alpaca_operator.api.instructdataset import Filters

TOO_SHORT = "too_short"
TOO_LONG = "too_long"
BLACKLISTED = "blacklisted"
WRITE_A_PROGRAM = "write_a_program"
STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
STARTS_NON_ASCII = "starts_non_ascii"
TOO_SIMILAR = "rouge_l_similar"

_PROGRAM_RE = re.compile(r"^\s*write a program\b", re.IGNORECASE)


def blacklist_pattern(words: Sequence[str]) -> re.Pattern[str] | None:
    """Whole words or phrases, case-insensitive: 'map' drops 'Draw a map' but not 'mapping'."""
    if not words:
        return None
    alternatives = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


class InstructionFilters:
    """Checks in a fixed order; the first failing one names the reason."""

    def __init__(self, spec: Filters) -> None:
        self._min_words = spec.min_instruction_words
        self._max_words = spec.max_instruction_words
        self._blacklist = blacklist_pattern(spec.blacklist)

    def reason_to_drop(self, instruction: str) -> str | None:
        words = len(instruction.split())
        if words < self._min_words:
            return TOO_SHORT
        if words > self._max_words:
            return TOO_LONG
        if self._blacklist is not None and self._blacklist.search(instruction):
            return BLACKLISTED
        # Programs need running to be judged; the teacher's code answers are unreliable too.
        if _PROGRAM_RE.match(instruction):
            return WRITE_A_PROGRAM
        first = instruction.lstrip()[:1]
        if first in string.punctuation:
            return STARTS_WITH_PUNCTUATION
        if not first.isascii():
            return STARTS_NON_ASCII
        return None
