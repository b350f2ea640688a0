"""Which examples each optimizer step sees, and how they are split across ranks and micro-batches.

Everything here is a pure function of (dataset size, seed, step, world size), so every rank computes
the same plan without talking to the others, and a restarted job knows its data position from the
step number alone.

The global batch is exact whatever the number of devices: step `s` takes stream positions
`[s * G, (s + 1) * G)` of an endless stream of per-epoch shuffles, so a step may straddle an epoch
boundary and only the very last step of the run may be smaller than `G`. The step's examples are
dealt out to ranks longest-first in a snake order (0, 1, .., w-1, w-1, .., 0), which balances both
the example count (ranks differ by at most one when `G` is not a multiple of the world size) and
the token count. Each rank then forms its micro-batches; ranks that end up with fewer than the most
loaded rank run empty micro-batches so that FSDP's collectives stay in lockstep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from functools import lru_cache


def total_examples(num_examples: int, epochs: float, global_batch: int, max_steps: int | None) -> int:
    """How many examples (with repeats across epochs) the run consumes."""
    if max_steps is not None:
        return max_steps * global_batch
    return max(1, round(epochs * num_examples))


def total_steps(num_examples: int, epochs: float, global_batch: int, max_steps: int | None) -> int:
    return math.ceil(total_examples(num_examples, epochs, global_batch, max_steps) / global_batch)


@lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(num_examples))
    random.Random(f"alpaca-train:{seed}:{epoch}").shuffle(order)
    return tuple(order)


def step_indices(step: int, num_examples: int, global_batch: int, seed: int, stop: int) -> list[int]:
    """Dataset indices of the examples optimizer step `step` trains on (`stop` = total examples)."""
    first = step * global_batch
    last = min(first + global_batch, stop)
    return [_epoch_order(num_examples, seed, pos // num_examples)[pos % num_examples] for pos in range(first, last)]


def deal_to_ranks(lengths: Sequence[int], world_size: int) -> list[list[int]]:
    """Positions into `lengths`, one list per rank, balanced by count and by tokens."""
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for turn, position in enumerate(by_length):
        lap, slot = divmod(turn, world_size)
        shares[slot if lap % 2 == 0 else world_size - 1 - slot].append(position)
    return shares


def pack(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """First-fit-decreasing bins of at most `token_budget` tokens (positions into `lengths`).

    Every length must fit the budget (examples are truncated before this point).
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[position]
        if size > token_budget:
            raise ValueError(f"an example of {size} tokens cannot fit a budget of {token_budget}")
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(position)
                room[b] -= size
                break
        else:
            bins.append([position])
            room.append(token_budget - size)
    return bins


def group_by_length(lengths: Sequence[int], micro_batch_size: int) -> list[list[int]]:
    """Micro-batches of similar lengths, so padding to the longest in each wastes little."""
    by_length = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [by_length[i : i + micro_batch_size] for i in range(0, len(by_length), micro_batch_size)]


def micro_batches(
    lengths: Sequence[int], *, packing: bool, micro_batch_size: int, max_seq_length: int
) -> list[list[int]]:
    """One rank's micro-batches. Packed, a micro-batch holds up to `micro_batch_size * max_seq_length`
    tokens of whole examples laid end to end; otherwise `micro_batch_size` examples of similar length."""
    if packing:
        return pack(lengths, micro_batch_size * max_seq_length)
    return group_by_length(lengths, micro_batch_size)


def rank_plan(
    lengths: Sequence[int],
    *,
    rank: int,
    world_size: int,
    packing: bool,
    micro_batch_size: int,
    max_seq_length: int,
) -> tuple[list[list[int]], int]:
    """This rank's micro-batches (positions into `lengths`) and how many micro-steps every rank runs."""
    counts: list[int] = []
    mine: list[list[int]] = []
    for r, share in enumerate(deal_to_ranks(lengths, world_size)):
        groups = micro_batches(
            [lengths[p] for p in share], packing=packing, micro_batch_size=micro_batch_size, max_seq_length=max_seq_length
        )
        counts.append(len(groups))
        if r == rank:
            mine = [[share[p] for p in group] for group in groups]
    return mine, max(counts)
