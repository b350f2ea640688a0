"""Structured output: a response_format compiled to a grammar, and one matcher per sequence.

llguidance was chosen over xgrammar and outlines-core by measurement on this engine (compile
time of a teacher-sized schema: milliseconds against outlines-core's ~0.7 s; per-token masks of
the same order as the others; no runtime dependencies, where xgrammar brings its own FFI and
triton). Every sequence owns a matcher: the grammar state advances with that sequence's tokens
only, and sequences without a format never touch this module.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import llguidance
import llguidance.hf
import torch

# Compact JSON: a small model offered free whitespace may spend its whole budget on newlines.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
_CACHE_SIZE = 64


class GrammarError(ValueError):
    """A response_format that cannot be compiled; `param` names the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, eq=False)
class CompiledFormat:
    """A compiled response_format, shared by every sequence of the requests that use it."""

    template: Any  # llguidance.LLMatcher in its start state, copied for each sequence
    vocab_size: int

    def matcher(self) -> RowGrammar:
        return RowGrammar(self.template.deep_copy(), self.vocab_size)


class RowGrammar:
    """One sequence's grammar state: which tokens may come next, and what it has accepted."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._bitmask = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
        self._bits = torch.arange(32, dtype=torch.int32)

    def allowed(self) -> torch.Tensor:
        """A (vocab,) bool mask of the tokens the grammar allows next."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.data_ptr(), self._bitmask.numel() * 4)
        self._check()
        bits = (self._bitmask.unsqueeze(-1) >> self._bits) & 1
        return bits.flatten()[: self._vocab_size].bool()

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (vocab,) with every token the grammar forbids at -inf (a new tensor)."""
        allowed = self.allowed()
        out = torch.full_like(logits, float("-inf"))
        width = min(self._vocab_size, logits.shape[-1])
        out[:width] = torch.where(allowed[:width], logits[:width], out[:width])
        return out

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise ValueError(f"token {token} is not allowed by the response_format grammar")

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())

    def _check(self) -> None:
        if self._matcher.is_error():
            raise ValueError(f"response_format grammar: {_first_line(self._matcher.get_error())}")


class GrammarCompiler:
    """Compiles response_formats for one tokenizer; recent compilations are reused."""

    def __init__(self, tokenizer: Any, eos_ids: Iterable[int]) -> None:
        self.vocab_size = len(tokenizer)
        # Converting the tokenizer takes about a second: once per server.
        self._tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size, eos_token=sorted(eos_ids))
        self._cache: OrderedDict[str, CompiledFormat] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, response_format: dict[str, Any]) -> CompiledFormat | None:
        """The compiled grammar for an OpenAI response_format (already shape-checked), or None for text.

        Raises GrammarError naming the field when the schema cannot be enforced.
        """
        kind = response_format.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            schema: Any = {"type": "object"}
            param = "response_format"
        else:
            schema = response_format["json_schema"].get("schema") or {}
            param = "response_format.json_schema.schema"
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
            failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._tokenizer)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise GrammarError(f"{param}: {exc}", param) from exc
        if failed:
            raise GrammarError(f"{param}: {_first_line(messages[0] if messages else '')}", param)
        # Silent: a rejected token is reported through the row's error, not printed to stderr.
        template = llguidance.LLMatcher(self._tokenizer, grammar, log_level=0)
        if template.is_error():
            raise GrammarError(f"{param}: {_first_line(template.get_error())}", param)
        compiled = CompiledFormat(template, self.vocab_size)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled


def _first_line(text: str) -> str:
    """The library's message on one line, short enough for an error body."""
    line = " ".join(text.split())
    return (line[:300] + "...") if len(line) > 300 else (line or "invalid JSON schema")
