"""The loss of one micro-batch: summed over response tokens, logits computed only where needed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .collate import MicroBatch
from .data import IGNORE_INDEX


def loss_sum(model: nn.Module, batch: MicroBatch) -> tuple[torch.Tensor, int]:
    """Sum of the next-token cross-entropy over the targets of `batch`, and the number of targets.

    The sum, not the mean, so that the caller can divide by the targets of the whole global batch:
    every response token then weighs the same however the examples fell into micro-batches and
    ranks. For a packed row the head runs only at positions that predict a target (the prompt makes
    up about a third of Alpaca's tokens, and the head is the largest matrix of a small model).
    """
    targets = batch.labels[:, 1:]
    if batch.cu_seq_lens is not None:
        keep = (targets[0] != IGNORE_INDEX).nonzero().squeeze(1)
        out = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            logits_to_keep=keep,
            use_cache=False,
            **batch.attention_kwargs(),
        )
        logits = out.logits[0]
        chosen = targets[0, keep]
    else:
        out = model(
            input_ids=batch.input_ids,
            position_ids=batch.position_ids,
            use_cache=False,
            **batch.attention_kwargs(),
        )
        logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
        chosen = targets.reshape(-1)
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()  # a softmax over ~50K classes in bf16 loses most of the loss's digits
    total = F.cross_entropy(logits, chosen, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((chosen != IGNORE_INDEX).sum())
