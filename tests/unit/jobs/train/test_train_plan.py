from __future__ import annotations

from collections import Counter

import pytest

from alpaca_jobs.train import plan


def test_each_epoch_sees_every_example_once_and_steps_hold_the_global_batch() -> None:
    n, batch = 10, 4
    stop = plan.total_examples(n, epochs=2, global_batch=batch, max_steps=None)
    steps = plan.total_steps(n, epochs=2, global_batch=batch, max_steps=None)
    chosen = [plan.step_indices(s, n, batch, seed=7, stop=stop) for s in range(steps)]
    assert (stop, steps) == (20, 5)
    assert [len(c) for c in chosen] == [4, 4, 4, 4, 4]
    flat = [i for c in chosen for i in c]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:], "each epoch is shuffled anew"


def test_only_the_last_step_is_short_and_order_depends_on_seed_only() -> None:
    stop = plan.total_examples(10, epochs=1, global_batch=4, max_steps=None)
    assert [len(plan.step_indices(s, 10, 4, 1, stop)) for s in range(3)] == [4, 4, 2]
    assert plan.step_indices(1, 10, 4, 1, stop) == plan.step_indices(1, 10, 4, 1, stop)
    assert plan.step_indices(0, 10, 4, 1, stop) != plan.step_indices(0, 10, 4, 2, stop)
    assert plan.total_steps(10, epochs=3, global_batch=4, max_steps=5) == 5


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_dealing_balances_counts_and_tokens(world: int) -> None:
    lengths = [int(30 + 400 * ((i * 37) % 101) / 101) for i in range(128)]
    shares = plan.deal_to_ranks(lengths, world)
    assert sorted(p for s in shares for p in s) == list(range(128))
    counts = [len(s) for s in shares]
    tokens = [sum(lengths[p] for p in s) for s in shares]
    assert max(counts) - min(counts) <= 1
    assert max(tokens) - min(tokens) <= max(lengths)


def test_packing_fills_bins_first_fit_decreasing() -> None:
    bins = plan.pack([5, 3, 7, 2, 4, 1], token_budget=8)
    sizes = [[[5, 3, 7, 2, 4, 1][p] for p in b] for b in bins]
    assert sizes == [[7, 1], [5, 3], [4, 2]]
    with pytest.raises(ValueError, match="cannot fit"):
        plan.pack([9], token_budget=8)


def test_length_grouping_puts_similar_lengths_together() -> None:
    groups = plan.group_by_length([10, 100, 12, 98, 50, 11], micro_batch_size=2)
    assert groups == [[1, 3], [4, 2], [5, 0]]


def test_every_rank_runs_the_same_number_of_micro_steps() -> None:
    lengths = [100, 90, 20, 20, 20, 20, 10]
    plans = [plan.rank_plan(lengths, rank=r, world_size=2, packing=True, micro_batch_size=1, max_seq_length=100) for r in range(2)]
    assert plans[0][1] == plans[1][1] == max(len(p[0]) for p in plans)
    used = Counter(p for mine, _ in plans for group in mine for p in group)
    assert sorted(used) == list(range(7)) and set(used.values()) == {1}
    for mine, _ in plans:
        assert all(sum(lengths[p] for p in group) <= 100 for group in mine)
