"""Choosing the next token for each row of a batch, each row with its own sampling parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """What one sequence asks for. `temperature == 0` means greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RowSampler:
    """One sequence's sampling state: its parameters, its random stream and what it generated."""

    params: SamplingParams
    generator: torch.Generator | None = None

    @classmethod
    def create(cls, params: SamplingParams) -> RowSampler:
        generator = None
        if params.seed is not None and not params.greedy:
            # A private generator per sequence: a seeded request gives the same text whatever
            # else shares its batch.
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed)
        return cls(params, generator)


def adjust_logits(logits: torch.Tensor, params: SamplingParams, generated: Sequence[int]) -> torch.Tensor:
    """Apply logit bias and presence/frequency penalties (OpenAI's definitions) to one row."""
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long)
        logits = logits.clone()
        logits[ids] += torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.shape[-1]).to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`; renormalised."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = torch.where(mass_before < top_p, sorted_probs, torch.zeros_like(sorted_probs))
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def sample_rows(logits: torch.Tensor, rows: Sequence[RowSampler], generated: Sequence[Sequence[int]]) -> list[int]:
    """The next token of every row. `logits` is (rows, vocab) for the last position."""
    logits = logits.float().cpu()
    tokens: list[int] = []
    for i, row in enumerate(rows):
        row_logits = adjust_logits(logits[i], row.params, generated[i])
        if row.params.greedy:
            tokens.append(int(torch.argmax(row_logits)))
            continue
        probs = torch.softmax(row_logits / row.params.temperature, dim=-1)
        probs = top_p_filter(probs, row.params.top_p)
        tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
    return tokens
