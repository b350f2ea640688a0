"""Automatic prefix caching: recent prompts' keys and values, reused by prompts that start the same way.

Attention is causal, so the key and value at position i depend only on tokens 0..i: a stored
prompt's cache cut to the longest prefix it shares with a new prompt is exactly the new prompt's
cache for those positions, and only the rest needs a forward pass. The quickstart's generation
requests share Alpaca's built-in guidelines (304 of ~566 tokens); a chat client's requests share
their system prompt and the conversation so far.

The store belongs to the engine thread (no locks). It is bounded by the tokens it holds, each
costing layers x 2 x kv_heads x head_dim x dtype bytes (46 KB for SmolLM2-135M in float32,
128 KB for a Llama-7B-sized model in bfloat16), and evicts the least recently used prompt first.
Entries are keyed by adapter as well as tokens: a LoRA adapter changes the keys and values.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Per layer (keys, values), each (kv_heads, length, head_dim): one row of a batch's cache.
Layers = tuple[tuple[torch.Tensor, torch.Tensor], ...]

# Shorter shared beginnings (BOS and a chat template's header) save less than their bookkeeping.
MIN_TOKENS = 32


@dataclass(frozen=True)
class Prefix:
    """The first `length` positions of a stored prompt's cache (views into the stored tensors)."""

    length: int
    layers: Layers


@dataclass
class _Entry:
    prompt: tuple[int, ...]
    layers: Layers


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """Recent prompts' caches, per adapter (None: the base model), at most `max_tokens` in all."""

    def __init__(self, max_tokens: int, min_tokens: int = MIN_TOKENS) -> None:
        self.max_tokens = max_tokens
        self.min_tokens = max(1, min_tokens)
        self._entries: collections.OrderedDict[tuple[str | None, tuple[int, ...]], _Entry] = collections.OrderedDict()
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str | None, prompt: Sequence[int]) -> Prefix | None:
        """The longest stored prefix of `prompt` worth reusing, or None. At least one token of
        `prompt` is always left out: its forward pass must produce the last token's logits."""
        best: tuple[str | None, tuple[int, ...]] | None = None
        best_length = 0
        for key, entry in self._entries.items():
            if key[0] == adapter:
                length = common_prefix(entry.prompt, prompt)
                if length > best_length:
                    best, best_length = key, length
        usable = min(best_length, len(prompt) - 1)
        if best is None or usable < self.min_tokens:
            return None
        self._entries.move_to_end(best)
        layers = self._entries[best].layers
        return Prefix(usable, tuple((k[:, :usable], v[:, :usable]) for k, v in layers))

    def add(self, adapter: str | None, prompt: Sequence[int], layers: Layers) -> None:
        """Keep `prompt`'s cache (copied: the caller's tensors may be batch buffers that change),
        then evict the least recently used prompts until the store fits its bound."""
        tokens = tuple(prompt)
        if len(tokens) < self.min_tokens or len(tokens) > self.max_tokens:
            return
        key = (adapter, tokens)
        for other_key, entry in list(self._entries.items()):
            if other_key[0] != adapter:
                continue
            shared = common_prefix(entry.prompt, tokens)
            if shared == len(tokens):  # an entry already holds this prompt (and maybe more)
                self._entries.move_to_end(other_key)
                return
            if shared == len(entry.prompt):  # this prompt holds all of that entry
                self._remove(other_key)
        self._entries[key] = _Entry(tokens, tuple((k.clone(), v.clone()) for k, v in layers))
        self.tokens += len(tokens)
        while self.tokens > self.max_tokens:
            self._remove(next(iter(self._entries)))

    def drop_adapter(self, adapter: str | None) -> None:
        """Forget an adapter's prompts: it was unloaded, or replaced by other weights of the same name."""
        for key in [key for key in self._entries if key[0] == adapter]:
            self._remove(key)

    def _remove(self, key: tuple[str | None, tuple[int, ...]]) -> None:
        self.tokens -= len(self._entries.pop(key).prompt)
