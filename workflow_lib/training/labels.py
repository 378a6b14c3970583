"""Exit labels for head distillation: the top-k relaxation of "the exit's prediction matches the full model".

For a position t and an exit after block l, the intermediate prediction is the token the exit would emit at t
(label source `emitted`, under the backbone's emission rule) or lm_head(final_norm(h_l[t])) (label source `lens`),
and the full model's logits at t are what it is compared with (the rules' names call them the oracle, as the paper
does; everywhere else "oracle" is the oracle decoder). Label 1 means "safe to exit here". Two directions of the
relaxation:

  intermediate_in_oracle_topk   (paper wording, default) the intermediate top-1 token is among the full model's
                                top-k tokens; k = 1 is CALM's consistency oracle (argmaxes agree).
  oracle_in_intermediate_topk   (the authors' code, their k = 15) the full model's top-1 token is among the
                                intermediate top-k tokens.

"Among the top-k" is decided by rank: a token is in the top-k when fewer than k tokens have a strictly higher
logit. Ties therefore count in the token's favour and the rule does not depend on how torch.topk orders ties.

`exit_predictions` is the labelling pass itself (one full-depth pass gives every exit's prediction and the full
model's), run under `autocast` by a head job and by the label cache alike, so both get the same labels.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ..choices import DEFAULT_LABEL_RULE, EMISSION_RULES, LABEL_RULES, LABEL_SOURCES
from ..models.backbone import parts
from ..models.emission import emitted_logits, exit_states


def check_label_rule(rule: str, k: int) -> None:
    """Raise a clear ValueError for an unknown rule or k < 1 (called before any expensive work)."""
    if rule not in LABEL_RULES:
        raise ValueError(f"unknown label rule {rule!r}; known: {', '.join(LABEL_RULES)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top-k relaxation needs an integer k >= 1, got k={k!r}")


def check_labelling(emission: str, label_source: str, translators: str | None) -> None:
    """How a run labels (head training, the label cache): a known emission rule and label source, and the translators
    the translator rule's labels need."""
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {label_source!r}; known: {', '.join(LABEL_SOURCES)}")
    if emission not in EMISSION_RULES:
        raise ValueError(f"unknown emission rule {emission!r}; known: {', '.join(EMISSION_RULES)}")
    if emission == "translator" and label_source == "emitted" and translators is None:
        raise ValueError("labels from the translator emission need the trained translators: pass --translators DIR")
    if translators is not None and not os.path.isdir(translators):
        raise FileNotFoundError(f"translators folder {translators!r} does not exist")


def _rank(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """How many tokens of `logits` (..., V) have a strictly higher logit than `token` (...)."""
    at_token = logits.gather(-1, token[..., None])  # (..., 1)
    return (logits > at_token).sum(-1)  # (...)


def _check_vocab(intermediate_logits: torch.Tensor, full_logits: torch.Tensor) -> None:
    if intermediate_logits.shape[-1] != full_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: intermediate {intermediate_logits.shape[-1]}, "
                         f"full model {full_logits.shape[-1]}")


def exit_labels(intermediate_logits: torch.Tensor, full_logits: torch.Tensor,
                rule: str = DEFAULT_LABEL_RULE, k: int = 1) -> torch.Tensor:
    """Exit labels (0/1, int64) for any leading shape, e.g. (E, B, T, V) x (B, T, V) -> (E, B, T).

    `full_logits` broadcasts against `intermediate_logits`, so all exits are labelled in one call.
    """
    check_label_rule(rule, k)
    _check_vocab(intermediate_logits, full_logits)
    intermediate_logits, full_logits = torch.broadcast_tensors(intermediate_logits, full_logits)  # (..., V)
    if rule == "intermediate_in_oracle_topk":
        rank = _rank(full_logits, intermediate_logits.argmax(-1))  # (...)
    else:
        rank = _rank(intermediate_logits, full_logits.argmax(-1))  # (...)
    return (rank < k).long()  # (...)


# Every rule's label at every k, stored once per backbone and emission rule (training/label_cache.py): the two
# ranks, each capped at RANK_CAP to fit int16 (a rank at the cap is "k or more" for any k <= RANK_CAP).
RANK_CAP = torch.iinfo(torch.int16).max


def label_ranks(intermediate_logits: torch.Tensor, full_logits: torch.Tensor) -> torch.Tensor:
    """(..., 2) int16: the rank of the intermediate top-1 among the full model's logits (the paper's rule) and of the
    full model's top-1 among the intermediate logits (the authors' rule), each capped at RANK_CAP."""
    _check_vocab(intermediate_logits, full_logits)
    intermediate_logits, full_logits = torch.broadcast_tensors(intermediate_logits, full_logits)  # (..., V)
    ranks = torch.stack([_rank(full_logits, intermediate_logits.argmax(-1)),
                         _rank(intermediate_logits, full_logits.argmax(-1))], -1)  # (..., 2)
    return ranks.clamp(max=RANK_CAP).to(torch.int16)


def labels_from_ranks(ranks: torch.Tensor, rule: str = DEFAULT_LABEL_RULE, k: int = 1) -> torch.Tensor:
    """`label_ranks` (..., 2) -> exit labels (...), int64: exactly `exit_labels` of the logits they came from."""
    check_label_rule(rule, k)
    if k > RANK_CAP:
        raise ValueError(f"k={k} exceeds the stored ranks' cap {RANK_CAP}")
    return (ranks[..., LABEL_RULES.index(rule)].long() < k).long()  # (...)


def autocast(device: torch.device):
    """bf16 on GPU (heads keep fp32 master weights); plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def exit_predictions(model: nn.Module, input_ids: torch.Tensor, exit_layers: list[int], emission: str,
                     label_source: str, translators: nn.Module | None = None, positions: torch.Tensor | None = None):
    """One full-depth pass over input_ids (B, T) -> z (E, B, T, D) = final_norm(h_l) per exit, the intermediate
    logits the labels compare (E, B, T, V): what the exit emits under `emission` (label_source emitted, models/
    emission.py) or the logit lens (label_source lens, the authors' label), and the full model's logits (B, T, V).
    With `positions` (bool (B, T); an answer's decode steps) the logits are (E, P, V) and (P, V) there only."""
    p = parts(model)
    states = exit_states(model, input_ids, exit_layers, positions)  # one full-depth pass
    z = torch.stack([p.final_norm(states.hidden[layer]) for layer in exit_layers])  # (E, B, T, D)
    if label_source == "lens":
        intermediate = p.lm_head(z if positions is None else z[:, positions])  # (E, B, T, V) or (E, P, V)
    else:
        emitted = emitted_logits(model, states, emission, translators, positions)
        intermediate = torch.stack([emitted[layer] for layer in exit_layers])  # (E, B, T, V) or (E, P, V)
    return z, intermediate, states.logits
