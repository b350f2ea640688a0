"""Choosing the next token for each row of a batch, each row with its own sampling parameters.

Rows are independent: a row whose logits are unusable (NaN, +inf) fails alone, and the others of
the batch get their tokens. Temperature scaling subtracts the row's maximum first, so every
temperature the API admits keeps the distribution finite.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .grammar import CompiledFormat, RowGrammar


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
    # None: no log-probabilities; 0: the chosen token's only; k: also the k most likely tokens.
    logprobs: int | None = None
    # A response_format: every token is chosen among those its grammar allows.
    grammar: CompiledFormat | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RowSampler:
    """One sequence's sampling state: its parameters, its random stream and what it generated."""

    params: SamplingParams
    generator: torch.Generator | None = None
    # This sequence's own grammar state, advanced by its tokens alone.
    grammar: RowGrammar | None = None

    @classmethod
    def create(cls, params: SamplingParams) -> RowSampler:
        grammar = params.grammar.matcher() if params.grammar is not None else None
        generator = None
        if params.seed is not None and not params.greedy:
            # A private generator per sequence: a seeded request gives the same text whatever
            # else shares its batch.
            generator = torch.Generator(device="cpu")
            generator.manual_seed(params.seed)
        return cls(params, generator, grammar)


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


class NonFiniteLogitsError(ValueError):
    """The model produced logits no token can be chosen from."""


@dataclass(frozen=True)
class Sampled:
    """The chosen token and, when asked for, its log-probability and the most likely alternatives."""

    token: int
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


def sample_row(logits: torch.Tensor, row: RowSampler, generated: Sequence[int]) -> Sampled:
    """The next token of one row from its (vocab,) float logits. Raises NonFiniteLogitsError."""
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise NonFiniteLogitsError("the model produced non-finite logits for this sequence")
    params = row.params
    adjusted = adjust_logits(logits, params, generated)
    # The grammar masks after bias and penalties, so that no bias can bring back a forbidden token.
    allowed = row.grammar.mask(adjusted) if row.grammar is not None else adjusted
    if params.greedy:
        token = int(torch.argmax(allowed))
    else:
        # Shifted so that the largest scaled logit is 0: tiny temperatures cannot overflow.
        probs = torch.softmax((allowed - allowed.max()) / params.temperature, dim=-1)
        probs = top_p_filter(probs, params.top_p)
        token = int(torch.multinomial(probs, 1, generator=row.generator))
    if row.grammar is not None:
        row.grammar.accept(token)
    if params.logprobs is None:
        return Sampled(token)
    # Log-probabilities of the model's distribution after bias and penalties, before temperature
    # and top_p (which shape the choice, not what the model believes).
    logprobs = torch.log_softmax(adjusted, dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if params.logprobs > 0:
        values, ids = torch.topk(logprobs, params.logprobs)
        top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Sampled(token, float(logprobs[token]), top)


def sample_rows(
    logits: torch.Tensor, rows: Sequence[RowSampler], generated: Sequence[Sequence[int]]
) -> list[Sampled | Exception]:
    """The next token of every row, or the error that row alone failed with. `logits` is (rows, vocab)."""
    logits = logits.float().cpu()
    # The common case, plain greedy rows, is one batched argmax rather than a pass per row.
    bad = (torch.isnan(logits) | torch.isposinf(logits)).any(dim=-1).tolist()
    plain = [i for i, row in enumerate(rows) if _plain_greedy(row.params) and not bad[i]]
    argmax = dict(zip(plain, logits[plain].argmax(dim=-1).tolist(), strict=True)) if plain else {}
    results: list[Sampled | Exception] = []
    for i, row in enumerate(rows):
        if i in argmax:
            results.append(Sampled(argmax[i]))
            continue
        try:
            results.append(sample_row(logits[i], row, generated[i]))
        except Exception as error:  # one row's failure must not cost the others their tokens
            results.append(error)
    return results


def _plain_greedy(params: SamplingParams) -> bool:
    return (params.greedy and params.logprobs is None and params.grammar is None and not params.logit_bias
            and not params.presence_penalty and not params.frequency_penalty)
