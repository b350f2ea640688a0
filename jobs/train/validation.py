"""The loss on the held-out rows: every rank evaluates its share of the same rows, then the sums meet.

The rows are dealt to ranks and micro-batched exactly as a training step's are (plan.rank_plan), so
every rank runs the same number of forward passes, as FSDP's collectives need; a rank with fewer
rows runs empty micro-batches. The loss is the mean over every response token of the held-out rows,
the same normalisation as the training loss, so the two curves read on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from . import collate, distributed, plan
from .data import Example
from .step import loss_sum


@dataclass(frozen=True)
class Batching:
    packing: bool
    micro_batch_size: int
    max_seq_length: int
    pad_token_id: int


def validation_loss(
    model: nn.Module,
    examples: Sequence[Example],
    topology: distributed.Topology,
    batching: Batching,
    device: torch.device,
    autocast: AbstractContextManager[object],
) -> float:
    """Mean next-token loss over the response tokens of `examples` (the same list on every rank)."""
    mine, micro_steps = plan.rank_plan(
        [len(e) for e in examples],
        rank=topology.rank,
        world_size=topology.world_size,
        packing=batching.packing,
        micro_batch_size=batching.micro_batch_size,
        max_seq_length=batching.max_seq_length,
    )
    targets = sum(e.num_targets for e in examples)
    summed = torch.zeros((), device=device, dtype=torch.float64)
    was_training = model.training
    model.eval()  # no dropout (LoRA's) while measuring
    try:
        with torch.no_grad():
            for micro in range(micro_steps):
                if micro < len(mine):
                    group = [examples[p] for p in mine[micro]]
                    batch = collate.packed(group) if batching.packing else collate.padded(group, batching.pad_token_id)
                else:
                    batch = collate.empty(batching.pad_token_id)
                with autocast:
                    loss, _ = loss_sum(model, batch.to(device))
                summed += loss.double()
    finally:
        model.train(was_training)
    return float(distributed.sum_across_ranks(summed)) / targets
