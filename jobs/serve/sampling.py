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


# The nucleus is looked for among the most likely tokens first: a partial top-k over a 49k
# vocabulary costs a fraction of sorting all of it (about a tenth on one CPU core), and once those
# tokens reach top_p the rest cannot belong to it. Only a flat distribution falls back to the sort.
NUCLEUS_PROBES = (64, 1024)


def nucleus(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids) of the smallest set of most likely tokens whose mass reaches
    `top_p`, most likely first and not renormalised. At least the most likely token."""
    vocab = probs.shape[-1]
    for k in (*(k for k in NUCLEUS_PROBES if k < vocab), vocab):
        if k < vocab:
            values, ids = torch.topk(probs, k)
        else:
            values, ids = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(values, dim=-1) - values
        keep = mass_before < top_p
        # The kept tokens are a prefix of the probe; a probe whose last token is still kept may be
        # cut short of the set, so a larger one is taken.
        if k == vocab or not bool(keep[-1]):
            n = max(1, int(keep.sum()))
            return values[:n], ids[:n]
    raise AssertionError("unreachable: the last probe is the whole vocabulary")


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`; renormalised."""
    if top_p >= 1.0:
        return probs
    values, ids = nucleus(probs, top_p)
    filtered = torch.zeros_like(probs).scatter(-1, ids, values)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """An index drawn in proportion to `weights` (not necessarily normalised): one uniform number
    against their running sum. torch.multinomial spends milliseconds preparing a 49k-token row for
    a single draw; this is one cumulative sum."""
    cdf = torch.cumsum(weights, dim=-1)
    u = torch.rand((), generator=generator, dtype=cdf.dtype) * cdf[-1]
    # right=True: the first index whose running sum exceeds u, so tokens of zero weight are never drawn.
    return min(int(torch.searchsorted(cdf, u, right=True)), weights.shape[-1] - 1)


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
        if params.top_p < 1.0:
            values, ids = nucleus(probs, params.top_p)
            token = int(ids[draw(values, row.generator)])
        else:
            token = draw(probs, row.generator)
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
