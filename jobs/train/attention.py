"""Attention that keeps each packed example to itself without computing across examples.

Three kernels read the same packed batch (transformers' varlen keywords, `cu_seq_lens_q`):
- flash-attn's varlen kernel through transformers' `flash_attention_2`, when that package is
  installed and the device is a GPU;
- PyTorch's own varlen flash kernel (`torch.nn.attention.varlen`), on a GPU in bf16/fp16 when
  flash-attn is not installed: one launch per layer for the whole packed row;
- elsewhere (CPU, fp32), causal SDPA once per example of the row: the same result, and unlike a
  block-diagonal mask it spends no compute on the masked-out blocks.
Unpacked (padded) batches go to plain SDPA.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F

NAME = "alpaca_varlen"
_registered = False


@cache
def _find_torch_varlen() -> tuple[Callable[..., torch.Tensor], dict[str, Any], frozenset[str]] | None:
    """PyTorch's varlen attention, the keyword that makes it causal, and the keywords it takes.

    The API is young and its causal switch moved between releases (`is_causal=True`, then
    `window_size=(-1, 0)`), so it is read from the signature rather than assumed.
    """
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "is_causal" in params:
        causal: dict[str, Any] = {"is_causal": True}
    elif "window_size" in params:
        causal = {"window_size": (-1, 0)}
    else:
        return None
    return varlen_attn, causal, frozenset(params)


ALLOW_TORCH_VARLEN = True  # a switch for benchmarks and for checking one kernel against the other
# Resolved once, outside any forward, so that torch.compile traces a constant rather than inspect.
_TORCH_VARLEN = _find_torch_varlen()


def torch_varlen_usable(query: torch.Tensor) -> bool:
    return ALLOW_TORCH_VARLEN and query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and _TORCH_VARLEN is not None


def _varlen_gpu(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor,
                longest: int, scaling: float | None) -> torch.Tensor:
    assert _TORCH_VARLEN is not None
    varlen_attn, causal, takes = _TORCH_VARLEN
    # [1, heads, tokens, dim] -> [tokens, heads, dim]: the layout the varlen kernels take.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    extra: dict[str, Any] = dict(causal)
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in takes:
            extra["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bounds = bounds.to(device=q.device, dtype=torch.int32)
    if scaling is not None:
        if "scale" not in takes:
            q = q * (scaling * q.shape[-1] ** 0.5)  # the kernel's own scale is 1/sqrt(dim)
        else:
            extra["scale"] = scaling
    out = varlen_attn(q, k, v, bounds, bounds, longest, longest, **extra)
    return out.unsqueeze(0)  # [1, tokens, heads, dim], as transformers' attention functions return


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
    longest = kwargs.get("max_length_q")
    if query.is_cuda and query.dtype == torch.float32 and torch.is_autocast_enabled("cuda"):
        # Under autocast, RoPE's fp32 cos/sin leave q and k in fp32; SDPA would cast them to the
        # autocast dtype anyway, so the varlen kernel takes them cast the same way.
        low = torch.get_autocast_dtype("cuda")
        query, key, value = query.to(low), key.to(low), value.to(low)
    if dropout == 0.0 and isinstance(longest, int) and torch_varlen_usable(query):
        return _varlen_gpu(query, key, value, bounds, longest, scaling), None
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
    """flash-attention's varlen kernel when it is installed and the device is a GPU; ours otherwise
    (PyTorch's varlen kernel on a GPU, per-example SDPA on a CPU)."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    register()
    return NAME
