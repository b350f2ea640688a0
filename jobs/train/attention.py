"""Attention that keeps each packed example to itself without computing across examples.

transformers' flash-attention path reads packed boundaries (`cu_seq_lens_q`) and runs a varlen
kernel; it needs the flash-attn package and a GPU. Everywhere else this module's implementation
runs causal SDPA once per example of a packed row: the same result, and unlike a block-diagonal
mask it spends no compute on the masked-out blocks. Unpacked (padded) batches go to plain SDPA.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
import torch.nn.functional as F

NAME = "alpaca_varlen"
_registered = False


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    if query.shape[0] != 1:
        raise ValueError("packed attention expects one row per micro-batch")
    edges = bounds.tolist()
    gqa = query.shape[1] != key.shape[1]
    parts = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in zip(edges[:-1], edges[1:], strict=True)
        if end > start
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `alpaca_varlen` an attention implementation transformers models can be loaded with."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    # Padded batches and generation still need SDPA's masks.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def choose(device: torch.device) -> str:
    """flash-attention's varlen kernel when it is installed and the device is a GPU; ours otherwise."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    register()
    return NAME
