"""A batch of sequences sharing one key/value cache, left-padded to a common length.

Each row's valid cache positions are marked in a (rows, length) attention mask; positions of
new tokens come from that mask, so rows of different lengths (and padding in between) decode
together. Rows join (merge) and leave (select) between forward passes, and columns that no row
uses any more are dropped so the cache stays as short as its longest row. A prefill may start
from rows' reused prompt prefixes (prefix_cache.py) and is packed afterwards to the same layout.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from .prefix_cache import Layers


def cache_keyword(model: Any) -> str:
    """The keyword a model's forward takes its key/value cache by: newer transformers renamed
    `past_key_values` to `cache` and warn on the old name, older ones know only the old name."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A layer's keys and values kept in buffers with spare columns.

    DynamicLayer appends a decoding step's column with torch.cat, copying the whole cache of every
    layer at every step; here the column is written in place and the buffers grow by half when
    full, so a step costs the same at the 500th token as at the 5th. `keys`/`values` are views of
    the written part; assigning them (as merge/select do) adopts the tensor as the new buffer.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        super().__init__(**kwargs)

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor | None:
        return None if self._key_buffer is None else self._key_buffer[:, :, : self._length]

    @keys.setter
    def keys(self, tensor: torch.Tensor | None) -> None:
        self._key_buffer = tensor if tensor is None or tensor.dim() == 4 else None
        self._length = 0 if self._key_buffer is None else tensor.shape[2]  # type: ignore[union-attr]

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor | None:
        return None if self._value_buffer is None else self._value_buffer[:, :, : self._length]

    @values.setter
    def values(self, tensor: torch.Tensor | None) -> None:
        self._value_buffer = tensor if tensor is None or tensor.dim() == 4 else None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
        new = key_states.shape[2]
        end = self._length + new
        if self._key_buffer is None or self._value_buffer is None:
            self._key_buffer = self._grow(key_states[:, :, :0], end)
            self._value_buffer = self._grow(value_states[:, :, :0], end)
        elif end > self._key_buffer.shape[2]:
            self._key_buffer = self._grow(self._key_buffer[:, :, : self._length], end)
            self._value_buffer = self._grow(self._value_buffer[:, :, : self._length], end)
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        return self.keys, self.values  # type: ignore[return-value]

    @staticmethod
    def _grow(current: torch.Tensor, needed: int) -> torch.Tensor:
        b, h, length, d = current.shape
        buffer = current.new_empty((b, h, needed + max(32, needed // 2), d))
        buffer[:, :, :length] = current
        return buffer

    def get_seq_length(self) -> int:
        return self._length if self._key_buffer is not None else 0


class GrowingCache(DynamicCache):
    """A DynamicCache whose layers are GrowingLayers."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)


def new_cache() -> DynamicCache:
    return GrowingCache()


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


def from_prefixes(prefixes: Sequence[Layers | None]) -> tuple[DynamicCache, torch.Tensor]:
    """A cache holding each row's reused prefix (None: nothing), left-padded to the longest, and its
    mask. Padding columns hold zeros: masked out, and never NaN (0 x NaN would poison attention)."""
    lengths = [0 if p is None else p[0][0].shape[1] for p in prefixes]
    width = max(lengths, default=0)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    cache = new_cache()
    if width == 0:
        return cache, mask
    template = next(p for p, n in zip(prefixes, lengths, strict=True) if n)
    for index, (keys0, _) in enumerate(template):
        heads, _, dim = keys0.shape
        keys = keys0.new_zeros((len(prefixes), heads, width, dim))
        values = keys.clone()
        for row, (prefix, length) in enumerate(zip(prefixes, lengths, strict=True)):
            if length:
                keys[row, :, width - length :] = prefix[index][0]  # type: ignore[index]
                values[row, :, width - length :] = prefix[index][1]  # type: ignore[index]
        cache.update(keys, values, index)
    for row, length in enumerate(lengths):
        if length:
            mask[row, width - length :] = 1
    return cache, mask


def pack_right(cache: DynamicCache, mask: torch.Tensor) -> torch.Tensor:
    """Move every row's valid columns, in order, to the right end and drop the columns left
    unused; returns the new mask. A prefill over reused prefixes leaves padding between a row's
    prefix and its suffix, and decoding costs grow with the columns a batch carries."""
    width = int(mask.sum(dim=1).max())
    # A stable sort of the mask puts each row's padding first and its valid columns after, in order.
    order = torch.sort(mask, dim=1, stable=True).indices[:, -width:]
    for layer in _layers(cache):
        b, h, _, d = layer.keys.shape
        index = order.to(layer.keys.device)[:, None, :, None].expand(b, h, width, d)
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)
    return mask.gather(1, order)


def row_tail(cache: DynamicCache, row: int, length: int) -> Layers:
    """Row `row`'s last `length` columns in every layer (views): a prompt's cache after a prefill."""
    return tuple((layer.keys[row, :, -length:], layer.values[row, :, -length:]) for layer in _layers(cache))
