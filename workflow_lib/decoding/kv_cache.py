"""The decoders' attention cache: transformers' `DynamicCache` whose full-attention layers append in place.

Hand-written because transformers has no such layer: its `DynamicLayer` appends a token by `torch.cat` of the whole
cache, so every decode step copies every block's K/V. On SmolLM2-135M at batch 16 and 300-token prompts that copy
was half of a decode step's CPU time (torch profiler). Its `StaticCache` writes in place but needs a maximum length
and absolute cache positions, which the per-row exits (rows gathered, reordered and put back) do not keep.

`GrowingLayer` keeps K and V in buffers (B, kv_heads, capacity, head_dim) that double when full; `keys` / `values`
are views of the first `length` positions, so everything that reads, slices or writes them in place (the policies,
the batched decoder's per-row writes) works as on `DynamicLayer`. Assigning a tensor (a reorder, a gather, a restored
snapshot) adopts it as the buffer; a prefix view of a buffer (a snapshot of this cache put back) brings back that
buffer with its length set to the view's: snapshots are restored last-in first-out (core.snapshot_cache), so nothing
reads the positions past it again. Sliding-window and SSM layers stay transformers' own.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A full-attention `DynamicLayer` that appends into a buffer grown by doubling (amortised O(1) per token)."""

    def __init__(self):
        self._buffers: dict[str, torch.Tensor | None] = {"keys": None, "values": None}
        self._lengths = {"keys": 0, "values": 0}  # each its own: `crop` slices keys, then reads values
        super().__init__()  # sets keys = values = None through the properties

    def _view(name: str):
        def get(self):
            buffer = self._buffers[name]
            return None if buffer is None else buffer[..., :self._lengths[name], :]  # (B, kv_heads, length, head_dim)

        def set_(self, tensor):
            if tensor is None or tensor.dim() != 4:  # reset(), or lazy initialisation's empty tensor
                self._buffers[name], self._lengths[name] = tensor, 0
                return
            # a prefix view of a buffer (a snapshot put back, run_rows restoring its rows) brings back that buffer
            # and its room to grow; any other tensor (a gather, a reorder, a stack) becomes the buffer itself
            base = tensor if tensor._base is None else tensor._base
            prefix = (base.dim() == 4 and tensor.data_ptr() == base.data_ptr() and tensor.stride() == base.stride()
                      and tensor.shape[:2] == base.shape[:2] and tensor.shape[-1] == base.shape[-1])
            self._buffers[name] = base if prefix else tensor
            self._lengths[name] = tensor.shape[-2]
        return property(get, set_)

    keys = _view("keys")
    values = _view("values")
    del _view

    def reserve(self, room: int) -> None:
        """Room for `room` more positions, allocated once (a decode's tokens): no doubling past what it needs."""
        for name in ("keys", "values"):
            buffer, n = self._buffers[name], self._lengths[name]
            if buffer is not None and buffer.dim() == 4 and buffer.shape[-2] < n + room:
                grown = buffer.new_empty(*buffer.shape[:2], n + room, buffer.shape[-1])  # (B, kv_heads, n+room, hd)
                grown[..., :n, :] = buffer[..., :n, :]
                self._buffers[name] = grown

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device = key_states.device
            self.is_initialized = True
        m = key_states.shape[-2]
        for name, new in (("keys", key_states), ("values", value_states)):  # new: (B, kv_heads, m, head_dim)
            buffer, n = self._buffers[name], self._lengths[name]
            if buffer is None or buffer.dim() != 4 or buffer.shape[-2] < n + m:
                grown = new.new_empty(*new.shape[:2], 2 * (n + m), new.shape[-1])  # (B, kv_heads, 2(n+m), head_dim)
                if n:
                    grown[..., :n, :] = buffer[..., :n, :]
                self._buffers[name] = buffer = grown
            buffer[..., n:n + m, :] = new
            self._lengths[name] = n + m
        return self.keys, self.values


def new_cache(config) -> DynamicCache:
    """transformers' DynamicCache for `config`, its full-attention layers replaced by GrowingLayer."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def reserve(cache: DynamicCache, room: int) -> None:
    """Every growing layer of `cache` with room for `room` more positions (decoder.py: a decode's new tokens)."""
    for layer in cache.layers:
        if isinstance(layer, GrowingLayer):
            layer.reserve(room)
