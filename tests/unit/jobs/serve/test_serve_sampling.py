import collections
import math

import pytest
import torch

from alpaca_jobs.serve.protocol import MIN_TEMPERATURE
from alpaca_jobs.serve.sampling import (
    NonFiniteLogitsError,
    RowSampler,
    Sampled,
    SamplingParams,
    adjust_logits,
    draw,
    nucleus,
    sample_rows,
    top_p_filter,
)


def tokens(results) -> list[int]:
    return [r.token for r in results]


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = top_p_filter(probs, 0.8)
    assert torch.allclose(kept, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def _nucleus_by_full_sort(probs: torch.Tensor, top_p: float) -> set[int]:
    ordered, ids = torch.sort(probs, descending=True)
    mass_before = torch.cumsum(ordered, dim=-1) - ordered
    return set(ids[mass_before < top_p].tolist())


@pytest.mark.parametrize("spread, expected_size", [(8.0, "inside the first probe"), (3.0, "inside the second"),
                                                   (0.05, "the whole vocabulary sorted")])
def test_the_nucleus_is_the_full_sorts_whatever_probe_finds_it(spread: float, expected_size: str) -> None:
    # Logits ever flatter: the set ends within the top 64, within the top 1024, and beyond both.
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(20_000, generator=generator) * spread, dim=-1)
    values, ids = nucleus(probs, 0.9)
    assert set(ids.tolist()) == _nucleus_by_full_sort(probs, 0.9)
    assert torch.equal(values, probs[ids]) and bool((values[:-1] >= values[1:]).all())
    size = len(ids)
    assert expected_size == ("inside the first probe" if size < 64 else "inside the second" if size < 1024
                             else "the whole vocabulary sorted")


def test_draws_follow_the_weights_and_never_take_a_zero_weight() -> None:
    # top_p 0.8 of (0.5, 0.3, 0.15, 0.05) keeps the first two, renormalised to (0.625, 0.375).
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    values, ids = nucleus(probs, 0.8)
    generator = torch.Generator().manual_seed(1)
    n = 4000
    counts = collections.Counter(int(ids[draw(values, generator)]) for _ in range(n))
    assert set(counts) == {0, 1}
    # Six standard deviations of a binomial proportion: a correct sampler fails this about once in 10^9.
    assert abs(counts[0] / n - 0.625) < 6 * math.sqrt(0.625 * 0.375 / n)
    masked = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])  # a grammar's forbidden tokens weigh nothing
    assert {draw(masked, generator) for _ in range(500)} == {1, 3}


def test_greedy_rows_take_the_argmax_whatever_their_seed() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    rows = [RowSampler.create(SamplingParams(max_tokens=1, temperature=0, seed=s)) for s in (1, 2)]
    assert tokens(sample_rows(logits, rows, [[], []])) == [1, 0]


def test_seeded_rows_repeat_and_differ_by_seed() -> None:
    logits = torch.zeros((1, 1000))

    def draw(seed: int) -> list[int]:
        row = RowSampler.create(SamplingParams(max_tokens=1, temperature=1.0, seed=seed))
        return [sample_rows(logits, [row], [[]])[0].token for _ in range(5)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_logit_bias_and_penalties_follow_openai_definitions() -> None:
    logits = torch.zeros(4)
    biased = adjust_logits(logits, SamplingParams(max_tokens=1, logit_bias={2: 100.0}), [])
    assert int(torch.argmax(biased)) == 2
    penalised = adjust_logits(logits, SamplingParams(max_tokens=1, presence_penalty=1.0, frequency_penalty=0.5), [1, 1, 3])
    assert penalised.tolist() == [0.0, -2.0, 0.0, -1.5]


def test_a_row_with_unusable_logits_fails_alone() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [float("nan"), 0.0, 0.0], [1.0, float("inf"), 0.0], [3.0, 0.0, 0.0]])
    rows = [RowSampler.create(SamplingParams(max_tokens=1, temperature=t, seed=1)) for t in (0, 1.0, 0, 1.0)]
    results = sample_rows(logits, rows, [[], [], [], []])
    assert results[0] == Sampled(1)
    assert isinstance(results[1], NonFiniteLogitsError) and isinstance(results[2], NonFiniteLogitsError)
    assert isinstance(results[3], Sampled) and results[3].token in (0, 1, 2)


@pytest.mark.parametrize("temperature", [MIN_TEMPERATURE, 1e-3, 0.05])
def test_the_smallest_admitted_temperatures_sample_the_argmax_without_overflow(temperature: float) -> None:
    # Large, close logits: scaled by a tiny temperature the gap is huge, yet no value overflows.
    logits = torch.tensor([[900.0, 899.0, -900.0, 0.0]])
    row = RowSampler.create(SamplingParams(max_tokens=1, temperature=temperature, seed=7))
    assert [sample_rows(logits, [row], [[]])[0] for _ in range(20)] == [Sampled(0)] * 20


def test_logprobs_are_the_models_distribution_with_the_top_alternatives() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    row = RowSampler.create(SamplingParams(max_tokens=1, temperature=0, logprobs=2))
    [result] = sample_rows(logits, [row], [[]])
    expected = torch.log_softmax(logits[0], dim=-1)
    assert result.token == 0 and math.isclose(result.logprob, float(expected[0]), rel_tol=1e-6)
    assert [t for t, _ in result.top] == [0, 1]
    assert math.isclose(result.top[1][1], float(expected[1]), rel_tol=1e-6)
    only_chosen = RowSampler.create(SamplingParams(max_tokens=1, temperature=0, logprobs=0))
    assert sample_rows(logits, [only_chosen], [[]])[0].top == ()
