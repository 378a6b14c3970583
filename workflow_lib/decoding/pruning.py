"""Layer pruning baseline (DESIGN.md §6): drop the n blocks just before the last one, prefill and decode alike.

Gromov et al. style, no healing. The blocks stay in the checkpoint; `prune_blocks` only hides them from the
model's own forward for the duration of a `with`, so transformers' `forward`, `generate` and caches keep
working unchanged (each kept block still writes its cache entry under its own layer index).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..models.backbone import architecture


def kept_blocks(n_layers: int, n: int) -> list[int]:
    """Indices of the blocks that run when n blocks before the last are dropped (first and last always stay)."""
    if not isinstance(n, int) or not 0 <= n <= n_layers - 2:
        raise ValueError(f"prune must be an integer in 0..{n_layers - 2} for a {n_layers}-block backbone, got {n!r}")
    return list(range(n_layers - 1 - n)) + [n_layers - 1]


def _owner(model: nn.Module) -> nn.Module:
    """The module whose `.layers` the model's own forward iterates over."""
    return model.model if architecture(model.config) == "mistral" else model.backbone


@contextmanager
def prune_blocks(model: nn.Module, n: int) -> Iterator[nn.Module]:
    """Within the `with`, `model` runs without its n blocks just before the last (n = 0: unchanged)."""
    owner = _owner(model)
    full = owner.layers
    keep = kept_blocks(len(full), n)
    owner.layers = nn.ModuleList([full[i] for i in keep])
    try:
        yield model
    finally:
        owner.layers = full


@torch.no_grad()
def pruned_logits(model: nn.Module, input_ids: torch.Tensor, n: int,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Full-sequence logits (B, T, V) in fp32 of the model with n blocks pruned (for loglikelihood scoring)."""
    with prune_blocks(model, n):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits.float()  # (B, T, V)
