"""Held-out metrics of exit heads: how well p_exit separates the exits that are safe from those that are not."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def auroc(score: torch.Tensor, gold: torch.Tensor) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties given average ranks; None when
    only one class is present. Hand-written: a dozen lines do not justify a scikit-learn dependency."""
    n_pos, n = int(gold.sum()), gold.numel()
    if n_pos in (0, n):
        return None
    values, inverse, counts = score.double().unique(sorted=True, return_inverse=True, return_counts=True)  # (U,)
    first_rank = counts.cumsum(0) - counts + 1  # (U,): 1-based rank of each distinct score's first occurrence
    avg_rank = first_rank + (counts - 1) / 2  # (U,)
    rank_sum = avg_rank[inverse][gold.bool()].sum().item()  # sum over positives
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def exit_metrics(logits: torch.Tensor, gold: torch.Tensor) -> dict:
    """logits (N, 2), gold (N,) -> loss (unweighted CE), accuracy, precision, recall, F1 (positive class = exit,
    decided at p_exit >= 0.5), AUROC of p_exit (threshold-free: the decoder sweeps the threshold), the
    positive-label ratio and the predicted exit ratio."""
    n = gold.numel()
    pred, g = logits.argmax(-1).bool(), gold.bool()  # (N,), (N,)
    tp, fp, fn = (pred & g).sum().item(), (pred & ~g).sum().item(), (~pred & g).sum().item()
    precision = tp / (tp + fp) if tp + fp else 0.0  # no predicted exits: precision 0 (sklearn's zero_division=0)
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": F.cross_entropy(logits, gold).item(), "accuracy": (pred == g).float().mean().item(),
            "precision": precision, "recall": recall, "f1": f1, "auroc": auroc(logits.softmax(-1)[:, 1], gold),
            "positive_ratio": (tp + fn) / n, "predicted_exit_ratio": (tp + fp) / n, "tokens": n}
