"""Exit labels for head distillation: the top-k relaxation of "the exit's prediction matches the full model".

For a position t and an exit after block l, the intermediate prediction is the token the exit would emit at t
(label source `emitted`, under the backbone's emission rule) or lm_head(final_norm(h_l[t])) (label source `lens`),
and the oracle is the full model's logits at t. Label 1 means "safe to exit here". Two directions of the relaxation:

  intermediate_in_oracle_topk   (paper wording, default) the intermediate top-1 token is among the oracle's
                                top-k tokens; k = 1 is CALM's consistency oracle (argmaxes agree).
  oracle_in_intermediate_topk   (the authors' code, their k = 15) the oracle's top-1 token is among the
                                intermediate top-k tokens.

"Among the top-k" is decided by rank: a token is in the top-k when fewer than k tokens have a strictly higher
logit. Ties therefore count in the token's favour and the rule does not depend on how torch.topk orders ties.
"""
from __future__ import annotations

import torch

from ..choices import DEFAULT_LABEL_RULE, LABEL_RULES

# Which intermediate prediction is labelled: `emitted`, the token the exit really emits under the backbone's emission
# rule (models/emission.py), or `lens`, the logit lens LM head(final_norm(h_l)) whatever the rule (the authors' label,
# kept for the paper's ablation). Under the lens emission rule both are the same.


def check_label_rule(rule: str, k: int) -> None:
    """Raise a clear ValueError for an unknown rule or k < 1 (called before any expensive work)."""
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; known: {', '.join(LABEL_RULES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top-k relaxation needs an integer k >= 1, got k={k!r}")


def _rank(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """How many tokens of `logits` (..., V) have a strictly higher logit than `token` (...)."""
    at_token = logits.gather(-1, token[..., None])  # (..., 1)
    return (logits > at_token).sum(-1)  # (...)


def _check_vocab(intermediate_logits: torch.Tensor, oracle_logits: torch.Tensor) -> None:
    if intermediate_logits.shape[-1] != oracle_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: intermediate {intermediate_logits.shape[-1]}, "
                         f"oracle {oracle_logits.shape[-1]}")


def exit_labels(intermediate_logits: torch.Tensor, oracle_logits: torch.Tensor,
                rule: str = DEFAULT_LABEL_RULE, k: int = 1) -> torch.Tensor:
    """Exit labels (0/1, int64) for any leading shape, e.g. (E, B, T, V) x (B, T, V) -> (E, B, T).

    `oracle_logits` broadcasts against `intermediate_logits`, so all exits are labelled in one call.
    """
    check_label_rule(rule, k)
    _check_vocab(intermediate_logits, oracle_logits)
    intermediate_logits, oracle_logits = torch.broadcast_tensors(intermediate_logits, oracle_logits)  # (..., V)
    if rule == "intermediate_in_oracle_topk":
        rank = _rank(oracle_logits, intermediate_logits.argmax(-1))  # (...)
    else:
        rank = _rank(intermediate_logits, oracle_logits.argmax(-1))  # (...)
    return (rank < k).long()  # (...)


# Every rule's label at every k, stored once per backbone and emission rule (training/label_cache.py): the two
# ranks, each capped at RANK_CAP to fit int16 (a rank at the cap is "k or more" for any k <= RANK_CAP).
RANK_CAP = torch.iinfo(torch.int16).max


def label_ranks(intermediate_logits: torch.Tensor, oracle_logits: torch.Tensor) -> torch.Tensor:
    """(..., 2) int16: the rank of the intermediate top-1 among the oracle's logits (the paper's rule) and of the
    oracle's top-1 among the intermediate logits (the authors' rule), each capped at RANK_CAP."""
    _check_vocab(intermediate_logits, oracle_logits)
    intermediate_logits, oracle_logits = torch.broadcast_tensors(intermediate_logits, oracle_logits)  # (..., V)
    ranks = torch.stack([_rank(oracle_logits, intermediate_logits.argmax(-1)),
                         _rank(intermediate_logits, oracle_logits.argmax(-1))], -1)  # (..., 2)
    return ranks.clamp(max=RANK_CAP).to(torch.int16)


def labels_from_ranks(ranks: torch.Tensor, rule: str = DEFAULT_LABEL_RULE, k: int = 1) -> torch.Tensor:
    """`label_ranks` (..., 2) -> exit labels (...), int64: exactly `exit_labels` of the logits they came from."""
    check_label_rule(rule, k)
    if k > RANK_CAP:
        raise ValueError(f"k={k} exceeds the stored ranks' cap {RANK_CAP}")
    return (ranks[..., LABEL_RULES.index(rule)].long() < k).long()  # (...)
