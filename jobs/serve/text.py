"""Turning generated token ids into text deltas, honouring stop strings.

Streaming must never send text it may have to take back: bytes of a character not yet complete,
or the start of what might become a stop string. Those are held until the next token decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

INCOMPLETE = "\ufffd"


@dataclass(frozen=True)
class Delta:
    text: str
    stopped: bool


def _held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def next_delta(text: str, sent: int, stops: Sequence[str], final: bool = False) -> Delta:
    """What to send now, given the full decoded text so far and how many characters were sent.

    A stop string ends the text before it (the stop string itself is never sent).
    `final` flushes everything held back, since no later token can complete a stop string.
    """
    if stops:
        # A stop string may straddle what was sent and what is new, but never lies wholly in
        # the sent part (it would have stopped then).
        window_start = max(0, sent - max(len(s) for s in stops) + 1)
        hits = [i for i in (text.find(s, window_start) for s in stops if s) if i >= 0]
        if hits:
            return Delta(text[sent : max(sent, min(hits))], stopped=True)
    if final:
        return Delta(text[sent:], stopped=False)
    end = len(text)
    while end > sent and text[end - 1] == INCOMPLETE:
        end -= 1
    end -= _held_suffix(text[sent:end], stops)
    return Delta(text[sent:end], stopped=False)
