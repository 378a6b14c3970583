"""Layer pruning baseline (docs/evaluation.md): drop the n blocks just before the last one, prefill and decode alike.

Gromov et al. style, no healing. By default the dropped range ends just before the last block (the paper's
baseline); `angular_distance_start` picks it instead by Gromov et al.'s criterion (the n consecutive blocks
whose input and output hidden states are closest in angle), passed on as `start`. The blocks stay in the checkpoint; `prune_blocks` only hides them from the
model's own forward for the duration of a `with`, so transformers' `forward`, `generate` and caches keep
working unchanged (each kept block still writes its cache entry under its own layer index).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..models.backbone import block_owner


def kept_blocks(n_layers: int, n: int, start: int | None = None) -> list[int]:
    """Indices of the blocks that run when blocks start .. start+n-1 are dropped (default: the n before the last).

    The first block and the last always stay (the caches count positions on block 0).
    """
    if not isinstance(n, int) or not 0 <= n <= n_layers - 2:
        raise ValueError(f"prune must be an integer in 0..{n_layers - 2} for a {n_layers}-block backbone, got {n!r}")
    start = n_layers - 1 - n if start is None else start
    if not isinstance(start, int) or not 1 <= start <= n_layers - 1 - n:
        raise ValueError(f"prune start must be an integer in 1..{n_layers - 1 - n} to drop {n} of {n_layers} blocks "
                         f"and keep the first and last, got {start!r}")
    return [i for i in range(n_layers) if not start <= i < start + n]


@torch.no_grad()
def angular_distance_start(model: nn.Module, input_ids: list[torch.Tensor], n: int) -> int:
    """Gromov et al.'s choice of the n blocks to drop: the start l minimising the angular distance
    arccos(cos(x_l, x_{l+n})) / pi between the inputs of blocks l and l+n at each sequence's last token,
    averaged over the calibration sequences `input_ids` (each (1, T)). Block 0 and the last block stay."""
    layers = block_owner(model).layers
    n_layers = len(layers)
    kept_blocks(n_layers, n)  # validates n
    inputs: list[torch.Tensor] = []  # per sequence: (n_layers, D), the last token's input to every block
    hooks = [layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0][0, -1].float())) for layer in layers]
    try:
        distances = torch.zeros(n_layers - 1 - n)  # candidate starts 1 .. n_layers-1-n, index start-1
        for ids in input_ids:
            inputs.clear()
            model(input_ids=ids, use_cache=False)
            x = torch.stack(inputs)  # (n_layers, D): x[l] is block l's input
            cos = torch.nn.functional.cosine_similarity(x[1:n_layers - n], x[1 + n:], dim=-1)  # (n_layers-1-n,)
            distances += (torch.arccos(cos.clamp(-1, 1)) / torch.pi).cpu()
    finally:
        for hook in hooks:
            hook.remove()
    return int(distances.argmin()) + 1


@contextmanager
def prune_blocks(model: nn.Module, n: int, start: int | None = None) -> Iterator[nn.Module]:
    """Within the `with`, `model` runs without blocks start .. start+n-1 (default: the n just before the last)."""
    owner = block_owner(model)
    full = owner.layers
    keep = kept_blocks(len(full), n, start)
    owner.layers = nn.ModuleList([full[i] for i in keep])
    try:
        yield model
    finally:
        owner.layers = full


@torch.no_grad()
def pruned_logits(model: nn.Module, input_ids: torch.Tensor, n: int, attention_mask: torch.Tensor | None = None,
                  start: int | None = None) -> torch.Tensor:
    """Full-sequence logits (B, T, V) in fp32 of the model with n blocks pruned (for loglikelihood scoring)."""
    with prune_blocks(model, n, start):
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.logits.float()  # (B, T, V)
