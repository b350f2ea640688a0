import torch

from alpaca_jobs.serve.sampling import RowSampler, SamplingParams, adjust_logits, sample_rows, top_p_filter


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = top_p_filter(probs, 0.8)
    assert torch.allclose(kept, torch.tensor([0.625, 0.375, 0.0, 0.0]))
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_greedy_rows_take_the_argmax_whatever_their_seed() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    rows = [RowSampler.create(SamplingParams(max_tokens=1, temperature=0, seed=s)) for s in (1, 2)]
    assert sample_rows(logits, rows, [[], []]) == [1, 0]


def test_seeded_rows_repeat_and_differ_by_seed() -> None:
    logits = torch.zeros((1, 1000))

    def draw(seed: int) -> list[int]:
        row = RowSampler.create(SamplingParams(max_tokens=1, temperature=1.0, seed=seed))
        return [sample_rows(logits, [row], [[]])[0] for _ in range(5)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_logit_bias_and_penalties_follow_openai_definitions() -> None:
    logits = torch.zeros(4)
    biased = adjust_logits(logits, SamplingParams(max_tokens=1, logit_bias={2: 100.0}), [])
    assert int(torch.argmax(biased)) == 2
    penalised = adjust_logits(logits, SamplingParams(max_tokens=1, presence_penalty=1.0, frequency_penalty=0.5), [1, 1, 3])
    assert penalised.tolist() == [0.0, -2.0, 0.0, -1.5]
