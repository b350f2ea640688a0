"""Turning generated token ids into text deltas, honouring stop strings, in constant work per token.

Streaming must never send text it may have to take back: bytes of a character not yet complete,
or the start of what might become a stop string. Those are held until a later token decides.
Neither step looks at the whole answer: the detokenizer decodes a window of the last few tokens,
the stop scanner looks only at the text it holds plus the new piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

INCOMPLETE = "\ufffd"
# A character is at most 4 bytes in UTF-8, so a byte-level token run that still ends in an
# incomplete character after this many tokens is invalid UTF-8 and will never complete.
MAX_HELD_TOKENS = 4


class Detokenizer:
    """Decodes one sequence's tokens incrementally.

    Each push decodes two short windows that start at the same token (`prefix`): up to the tokens
    already turned into text, and up to the new token. Their difference is the new text. Starting
    both at one token keeps the tokenizer's word-boundary handling (SentencePiece's leading space)
    the same as decoding the whole answer at once.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._window: list[int] = []  # tokens from `prefix` on
        self._read = 0  # window tokens already turned into text

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """The text that `token` completes (often all of its own text, sometimes nothing yet)."""
        self._window.append(token)
        before = self._decode(self._window[: self._read])
        after = self._decode(self._window)
        held = len(self._window) - self._read
        if after.endswith(INCOMPLETE) and held < MAX_HELD_TOKENS:
            return ""
        # The tokens read so far become the next window's prefix; older ones are dropped.
        self._window = self._window[self._read :]
        self._read = len(self._window)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held, at the end of the sequence."""
        before = self._decode(self._window[: self._read])
        after = self._decode(self._window)
        self._window, self._read = [], 0
        return after[len(before) :]


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


class StopScanner:
    """Finds stop strings in a stream of text pieces. A stop string ends the text before it (and
    is never sent); the end of text that could still grow into one is held back."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, piece: str, final: bool = False) -> Delta:
        """What may be sent after `piece`; `final` flushes what was held, as nothing can follow."""
        # Only the held text and the new piece can contain a stop: had a stop ended within text
        # already sent, the sequence would have stopped then. The held part is shorter than the
        # longest stop, so the scan costs the same at the 10th token as at the 10,000th.
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return Delta(text[: min(hits)], stopped=True)
        if final:
            self._held = ""
            return Delta(text, stopped=False)
        keep = _held_suffix(text, self._stops)
        self._held = text[len(text) - keep :] if keep else ""
        return Delta(text[: len(text) - keep], stopped=False)
