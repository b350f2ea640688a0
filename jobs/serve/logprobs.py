"""Log-probabilities in OpenAI's two shapes: chat's `content` list and completions' parallel lists.

A token's text is its own bytes, which for byte-level tokenizers may be part of a character;
`bytes` carries them exactly (OpenAI's field for this), `token` shows them decoded leniently.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from .sampling import Sampled

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's map of bytes to printable characters, inverted (what byte-level vocabularies hold)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class TokenTexts:
    """Each token id's bytes and text, computed once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = "ByteLevel" in repr(decoder)
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def _bytes(self, token: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token)
        if self._byte_level:
            alphabet = _byte_level_alphabet()
            if piece is not None and all(c in alphabet for c in piece):
                return bytes(alphabet[c] for c in piece)
        if piece is not None and (match := _BYTE_PIECE.fullmatch(piece)):
            return bytes([int(match.group(1), 16)])
        if piece is not None and "\u2581" in piece:  # SentencePiece marks a word's leading space
            return piece.replace("\u2581", " ").encode()
        return self._tokenizer.decode([token]).encode()

    def get(self, token: int) -> tuple[str, list[int]]:
        if token not in self._cache:
            raw = self._bytes(token)
            self._cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self._cache[token]


def chat_content(texts: TokenTexts, sampled: Iterable[Sampled]) -> list[dict[str, Any]]:
    """Entries of chat's `logprobs.content`."""
    entries = []
    for s in sampled:
        token, raw = texts.get(s.token)
        top = []
        for other, logprob in s.top:
            other_text, other_raw = texts.get(other)
            top.append({"token": other_text, "logprob": logprob, "bytes": other_raw})
        entries.append({"token": token, "logprob": s.logprob, "bytes": raw, "top_logprobs": top})
    return entries


def completion_logprobs(texts: TokenTexts, sampled: Iterable[Sampled], offset: int, with_top: bool) -> dict[str, Any]:
    """Completions' `logprobs` for a run of tokens whose text starts at character `offset`."""
    tokens, token_logprobs, offsets = [], [], []
    top: list[dict[str, float]] = []
    for s in sampled:
        text, _ = texts.get(s.token)
        tokens.append(text)
        token_logprobs.append(s.logprob)
        offsets.append(offset)
        offset += len(text)
        if with_top:
            top.append({texts.get(other)[0]: logprob for other, logprob in s.top})
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top if with_top else None,
            "text_offset": offsets}
