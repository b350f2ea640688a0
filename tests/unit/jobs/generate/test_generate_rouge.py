"""The ROUGE-L filter must take the same keep/drop decision as rouge_score, pair for pair."""

from __future__ import annotations

import random

import pytest
from rouge_score import rouge_scorer, tokenize as reference_tokenize

from alpaca_jobs.generate.rouge import (
    RougeLFilter,
    lcs_length,
    lcs_reference,
    match_masks,
    rouge_l_fmeasure,
    tokenize,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
ALPHABET = "abcdefghij ABC 0123 .,;!?-'\"\t\n éÉßİK ☃ 𝔘"


def _random_text(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(length))


def test_tokenizer_is_the_reference_tokenizer() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = _random_text(rng, rng.randint(0, 40))
        assert tokenize(text) == reference_tokenize.tokenize(text, None), repr(text)


def test_bit_parallel_lcs_matches_dynamic_programming() -> None:
    rng = random.Random(3)
    for _ in range(400):
        a = [rng.randint(0, 5) for _ in range(rng.randint(0, 70))]
        b = [rng.randint(0, 5) for _ in range(rng.randint(0, 70))]
        assert lcs_length(match_masks(a), len(a), b) == lcs_reference(a, b)


def test_fmeasure_is_bit_identical_to_the_reference() -> None:
    rng = random.Random(5)
    words = "a b c d e f".split()
    for _ in range(2000):
        target = [rng.choice(words) for _ in range(rng.randint(0, 15))]
        prediction = [rng.choice(words) for _ in range(rng.randint(0, 15))]
        expected = rouge_scorer._score_lcs(target, prediction).fmeasure
        assert rouge_l_fmeasure(lcs_reference(target, prediction), len(target), len(prediction)) == expected


def _reference_decisions(instructions: list[str], seeds: list[str], threshold: float) -> list[bool]:
    """Alpaca's way: every candidate against every seed and kept instruction, drop above threshold."""
    pool = [SCORER._tokenizer.tokenize(s) for s in seeds]
    decisions = []
    for text in instructions:
        tokens = SCORER._tokenizer.tokenize(text)
        drop = any(rouge_scorer._score_lcs(tokens, other).fmeasure > threshold for other in pool)
        decisions.append(drop)
        if not drop:
            pool.append(tokens)
    return decisions


def _our_decisions(instructions: list[str], seeds: list[str], threshold: float) -> list[bool]:
    rouge = RougeLFilter(threshold)
    for seed in seeds:
        rouge.add(tokenize(seed))
    decisions = []
    for text in instructions:
        tokens = tokenize(text)
        drop = rouge.too_similar(tokens)
        decisions.append(drop)
        if not drop:
            rouge.add(tokens)
    return decisions


def _mutate(rng: random.Random, words: list[str], vocabulary: list[str]) -> list[str]:
    out = list(words)
    for _ in range(rng.randint(0, 4)):
        action = rng.random()
        position = rng.randrange(len(out) + 1)
        if action < 0.35 and out:
            del out[min(position, len(out) - 1)]
        elif action < 0.7:
            out.insert(position, rng.choice(vocabulary))
        elif out:
            out[min(position, len(out) - 1)] = rng.choice(vocabulary)
    return out


@pytest.mark.parametrize("threshold", [0.7, 0.4, 0.2, 0.9])
@pytest.mark.parametrize("trial", range(3))
def test_decisions_match_rouge_score_on_random_data(threshold: float, trial: int) -> None:
    rng = random.Random(1000 * trial + int(threshold * 100))
    # A small vocabulary makes high-overlap pairs (and rebuilds of the index) common.
    vocabulary = [f"w{i}" for i in range(12 + 10 * trial)] + ["the", "a", "of"]
    seeds = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 12))) for _ in range(20)]
    instructions: list[str] = []
    for _ in range(150):
        if instructions and rng.random() < 0.4:
            words = _mutate(rng, rng.choice(instructions + seeds).split(), vocabulary)
        else:
            words = rng.choices(vocabulary, k=rng.randint(0, 20))
        instructions.append(rng.choice(["", "Please: "]) + " ".join(words) + rng.choice(["", "?", "."]))
    expected = _reference_decisions(instructions, seeds, threshold)
    assert _our_decisions(instructions, seeds, threshold) == expected
    assert 0 < sum(expected) < len(expected)  # both decisions occur, so the test can fail


def test_scores_of_exactly_the_threshold_fall_where_the_reference_puts_them() -> None:
    # Pairs whose exact F is 0.7 (2L/(m+n) = 0.7): the float expression lands just above or below,
    # and only rouge_score's own arithmetic tells which.
    cases = []
    for m in range(1, 40):
        for n in range(1, 40):
            lcs2 = 0.7 * (m + n)
            if abs(lcs2 / 2 - round(lcs2 / 2)) < 1e-9 and round(lcs2 / 2) <= min(m, n):
                cases.append((m, n, round(lcs2 / 2)))
    assert cases
    sides = set()
    for m, n, lcs in cases:
        shared = [f"s{i}" for i in range(lcs)]
        target = shared + [f"t{i}" for i in range(m - lcs)]
        prediction = shared + [f"p{i}" for i in range(n - lcs)]
        reference = rouge_scorer._score_lcs(target, prediction).fmeasure
        sides.add(reference > 0.7)
        rouge = RougeLFilter(0.7)
        rouge.add(prediction)
        assert rouge.too_similar(target) == (reference > 0.7), (m, n, lcs, reference)
    assert sides == {True, False}  # ties really do go both ways


def test_nothing_scores_above_a_threshold_of_one() -> None:
    rouge = RougeLFilter(1.0)
    rouge.add(["same", "words"])
    assert not rouge.too_similar(["same", "words"])  # F is exactly 1.0, not above it


def test_empty_token_lists_never_match() -> None:
    rouge = RougeLFilter(0.7)
    rouge.add([])
    assert not rouge.too_similar([])
    rouge.add(["a"])
    assert not rouge.too_similar([])
    assert rouge.too_similar(["a"])


def test_threshold_must_be_in_range() -> None:
    with pytest.raises(ValueError, match="threshold"):
        RougeLFilter(0)
