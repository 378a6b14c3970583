"""How head distillation weighs its losses: across exits by the training mode, and across classes for balance."""
from __future__ import annotations

import torch

from ..choices import TRAIN_MODES


def loss_weights(n_exits: int, mode: str) -> torch.Tensor:
    """Per-exit loss weights (E,), exits ordered from shallow to deep."""
    if mode == "joint_decay":
        w = torch.arange(n_exits, 0, -1, dtype=torch.float32)  # (E,): E, E-1, ..., 1
        return w / w.sum()
    if mode == "uniform":
        return torch.full((n_exits,), 1.0 / n_exits)
    if mode == "individual":
        return torch.ones(n_exits)  # each exit's loss drives only its own optimizer
    raise ValueError(f"unknown training mode {mode!r}; known: {', '.join(TRAIN_MODES)}")


def balanced_class_weights(pos_ratio: torch.Tensor) -> torch.Tensor:
    """(E,) positive ratios -> (E, 2) CE class weights, inverse to class frequency (each class weighs 1/2 overall)."""
    p = pos_ratio.clamp(1e-3, 1 - 1e-3)  # (E,): a class never seen still gets a finite weight
    return torch.stack([0.5 / (1 - p), 0.5 / p], dim=-1)  # (E, 2)
