"""A batch of sequences sharing one key/value cache, left-padded to a common length.

Each row's valid cache positions are marked in a (rows, length) attention mask; positions of
new tokens come from that mask, so rows of different lengths (and padding in between) decode
together. Rows join (merge) and leave (select) between forward passes, and columns that no row
uses any more are dropped so the cache stays as short as its longest row.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache


def cache_keyword(model: Any) -> str:
    """The keyword a model's forward takes its key/value cache by: newer transformers renamed
    `past_key_values` to `cache` and warn on the old name, older ones know only the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _layers(cache: DynamicCache) -> list:
    return [layer for layer in cache.layers if getattr(layer, "is_initialized", False)]


def left_pad_columns(cache: DynamicCache, mask: torch.Tensor, columns: int) -> torch.Tensor:
    """Add `columns` masked positions at the start of every row; returns the new mask."""
    if columns <= 0:
        return mask
    for layer in _layers(cache):
        b, h, _, d = layer.keys.shape
        pad = layer.keys.new_zeros((b, h, columns, d))
        layer.keys = torch.cat([pad, layer.keys], dim=2)
        layer.values = torch.cat([pad, layer.values], dim=2)
    return torch.cat([mask.new_zeros((mask.shape[0], columns)), mask], dim=1)


def merge(
    cache: DynamicCache, mask: torch.Tensor, other: DynamicCache, other_mask: torch.Tensor
) -> tuple[DynamicCache, torch.Tensor]:
    """Append the rows of `other` to `cache` (both are modified); returns the merged cache and mask."""
    length = max(mask.shape[1], other_mask.shape[1])
    mask = left_pad_columns(cache, mask, length - mask.shape[1])
    other_mask = left_pad_columns(other, other_mask, length - other_mask.shape[1])
    for mine, theirs in zip(_layers(cache), _layers(other), strict=True):
        mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
        mine.values = torch.cat([mine.values, theirs.values], dim=0)
    return cache, torch.cat([mask, other_mask], dim=0)


def select_rows(cache: DynamicCache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep only `rows` (in that order) and drop columns no remaining row uses; returns the mask."""
    index = torch.tensor(rows, dtype=torch.long, device=mask.device)
    mask = mask.index_select(0, index)
    used = mask.any(dim=0)
    keep = None if bool(used.all()) else used.nonzero().squeeze(-1)
    for layer in _layers(cache):
        keys, values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
        if keep is not None:
            keys, values = keys.index_select(2, keep), values.index_select(2, keep)
        layer.keys, layer.values = keys, values
    return mask if keep is None else mask.index_select(1, keep)


def positions(mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Position ids of the last `new_tokens` columns: the count of valid tokens before each one."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -new_tokens:]
