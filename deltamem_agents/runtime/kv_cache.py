"""A transformers `DynamicCache` whose layers grow in steps instead of concatenating on every token.

`DynamicLayer.update` runs `torch.cat` on the whole key/value history at every step, so decoding copies the
entire KV cache once per token (at 1k cached tokens of the default model, 52 MB per token: a tenth of the
weights' bytes). `GrowingLayer` keeps a buffer with spare room along the sequence dimension, writes new
positions into it and exposes `keys`/`values` as views of the filled part; it reallocates only when full,
growing by a quarter (at least 256 positions), so the spare room stays under 25 % of a long cache and each
position is copied a few times in all instead of once per token. Everything else is `DynamicLayer`'s: `crop` shrinks the views; operations that replace `keys`
(batch selection, repeat, reset) are noticed at the next update, which adopts the new tensors as its buffer.
The values returned are the same numbers `DynamicLayer` returns, so outputs are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_MIN_CAPACITY = 256


class GrowingLayer(DynamicLayer):
    _kbuf: torch.Tensor | None = None
    _vbuf: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        if not self._owns(key_states, n):
            self._kbuf, self._vbuf = (self.keys, self.values) if n else (None, None)
        t = key_states.shape[-2]
        if self._kbuf is None or n + t > self._kbuf.shape[-2]:
            self._grow(key_states, value_states, n, n + t)
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[..., n : n + t, :].copy_(key_states)
        self._vbuf[..., n : n + t, :].copy_(value_states)
        self.keys, self.values = self._kbuf[..., : n + t, :], self._vbuf[..., : n + t, :]
        return self.keys, self.values

    def _owns(self, key_states: torch.Tensor, n: int) -> bool:
        """`keys` is still the filled part of our buffer (not replaced by batch selection, reset, ...)."""
        kb, vb = self._kbuf, self._vbuf
        if n == 0 or kb is None or vb is None:
            return n == 0 and kb is not None
        return (self.keys.data_ptr() == kb.data_ptr() and self.values.data_ptr() == vb.data_ptr()
                and self.keys.shape[:2] == kb.shape[:2] and self.keys.stride() == kb.stride()
                and kb.shape[:2] == key_states.shape[:2] and kb.dtype == key_states.dtype)

    def _grow(self, key_states: torch.Tensor, value_states: torch.Tensor, n: int, need: int) -> None:
        old = self._kbuf.shape[-2] if self._kbuf is not None else 0
        cap = max(need, old + max(old // 4, _MIN_CAPACITY))
        kb = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
        vb = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
        if n:
            kb[..., :n, :].copy_(self.keys)
            vb[..., :n, :].copy_(self.values)
        self._kbuf, self._vbuf = kb, vb


def growing_cache(config: Any) -> DynamicCache:
    """A `DynamicCache` for `config` with growing layers (plain dynamic layers kept where a model has sliding
    or other special layers)."""
    cache = DynamicCache(config=config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache
