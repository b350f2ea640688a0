"""Turning a micro-batch of examples into tensors: packed (one row, no padding) or padded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import IGNORE_INDEX, Example


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, length]
    labels: torch.Tensor  # [rows, length], aligned with input_ids
    position_ids: torch.Tensor  # [rows, length]; restarts at 0 where a packed example starts
    attention_mask: torch.Tensor | None = None  # [rows, length]; only for padded batches
    cu_seq_lens: torch.Tensor | None = None  # int32 example boundaries of a packed row
    max_length: int = 0  # longest example in a packed row
    real_tokens: int = 0

    @property
    def computed_tokens(self) -> int:
        return self.input_ids.numel()

    def to(self, device: torch.device) -> MicroBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(
            move(self.input_ids),
            move(self.labels),
            move(self.position_ids),
            move(self.attention_mask),
            move(self.cu_seq_lens),
            self.max_length,
            self.real_tokens,
        )

    def attention_kwargs(self) -> dict[str, object]:
        """What the model's attention needs to keep each packed example to itself.

        The names are transformers' own varlen keywords, so a flash-attention kernel and this
        project's CPU fallback read the same batch.
        """
        if self.cu_seq_lens is None:
            return {"attention_mask": self.attention_mask}
        return {
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }


def packed(examples: Sequence[Example]) -> MicroBatch:
    """All examples end to end in one row: no padding at all, position ids restart per example."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    bounds = [0]
    for example in examples:
        ids.extend(example.input_ids)
        # The first token of each example is never a target: this stops the last token of the
        # previous example from being trained to predict it across the boundary.
        labels.extend((IGNORE_INDEX, *example.labels[1:]))
        positions.extend(range(len(example)))
        bounds.append(len(ids))
    return MicroBatch(
        input_ids=torch.tensor([ids]),
        labels=torch.tensor([labels]),
        position_ids=torch.tensor([positions]),
        cu_seq_lens=torch.tensor(bounds, dtype=torch.int32),
        max_length=max(len(e) for e in examples),
        real_tokens=len(ids),
    )


def padded(examples: Sequence[Example], pad_token_id: int) -> MicroBatch:
    """One row per example, right-padded to the longest; padding is masked out and never a target."""
    width = max(len(e) for e in examples)
    rows = len(examples)
    input_ids = torch.full((rows, width), pad_token_id)
    labels = torch.full((rows, width), IGNORE_INDEX)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return MicroBatch(
        input_ids=input_ids,
        labels=labels,
        position_ids=torch.arange(width).expand(rows, width).contiguous(),
        attention_mask=mask,
        real_tokens=int(mask.sum()),
    )


def empty(pad_token_id: int) -> MicroBatch:
    """A one-token batch with no target, run by a rank that has run out of data for this step so that
    it still joins the collectives of the others."""
    return MicroBatch(
        input_ids=torch.tensor([[pad_token_id]]),
        labels=torch.tensor([[IGNORE_INDEX]]),
        position_ids=torch.zeros((1, 1), dtype=torch.long),
        attention_mask=torch.ones((1, 1), dtype=torch.long),
    )
