"""The decoder's configuration and its checks, and the pieces its per-token step (step.py) and its loop (decoder.py)
read: the emission rule, the policy's fill, the causal mask, the greedy choice, the stop test, the
per-row result. The reference decoder in tests/ (the batch-1 loop the equivalence tests compare against) reads the
same interface.

Imports run one way: decoder.py -> step.py -> core.py (and decoder.py -> core.py).

The emission rule (models/translators.py, docs/policies.md) says how an exit at block e turns h_e into the token:
  last_block  blocks e+1 .. n-2 skipped (the policy fills them), the last block runs on h_e, final norm, LM head
  lens        blocks e+1 .. n-1 skipped, the last one included (the policy fills them all); final norm, LM head on h_e
  translator  as lens, on translate(h_e, e) (the tuned lens); the translation runs only for a token that exits
A full-depth token is the same under every rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn
from transformers import DynamicCache
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..models.backbone import parts
from ..models.heads import ExitHead, stateful
from ..models.translators import Translators, check_emission
from .accounting import CostModel, TokenCost
from .policies import make_fill, resolve_policy
from .pruning import kept_blocks


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated tokens only (the stopping EOS / stop-string token included)
    exit_layers: list[int]  # per generated token: the block it stopped at (n_layers-1 = full depth)
    stop_reason: str  # 'eos' | 'stop_string' | 'max_new_tokens'
    costs: list[TokenCost] = field(default_factory=list)  # one per decode step (token_ids[1:]; the first comes from prefill)
    crf_exact: float = 1.0
    crf_paper: float = 1.0
    decode_seconds: float = 0.0  # this row's latency: decode start to its last token
    prefill_seconds: float = 0.0
    batch_size: int = 1  # rows decoded together
    batch_decode_seconds: float | None = None  # the whole batch's decode time, which throughput divides by
    speculation: dict | None = None  # speculative decoding's totals (decoding/speculative.py); None otherwise

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: tokens produced by decode steps per second of decoding (0 when none ran)."""
        steps = len(self.token_ids) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def check_decoder_emission(emission: str, translators: Translators | None, exit_layers: list[int],
                           hidden_size: int) -> None:
    """models.translators.check_emission, and for the decoder also: translators only with the rule that reads them,
    and of the backbone's width."""
    check_emission(emission, translators, exit_layers)
    if emission != "translator" and translators is not None:
        raise ValueError(f"translators were given but the emission rule is {emission!r}: they are used by the "
                         "'translator' rule only")
    if translators is not None and translators.hidden_size != hidden_size:
        raise ValueError(f"translators map hidden size {translators.hidden_size}, the backbone has {hidden_size}")


# How high a drafting token climbs (speculative.py): to the deepest exit layer, looking for an exit there; or, after
# the cycle's first token, no higher than the shallowest block any token of the cycle stopped at, above which the
# verification recomputes every position anyway (nor does a draft fill its skipped blocks: nothing reads them).
DRAFT_CLIMBS = ("deepest", "shallowest")


class DecoderCore:
    """The decoder's configuration (checked at construction) and the pieces its step and loop run.

    Build it once the model sits on its device in its dtype: the Mistral `recompute` policy stacks the skippable
    blocks' K/V weights at construction (policies.StackedKV).
    """

    def __init__(self, model: nn.Module, heads: nn.ModuleDict | None = None, threshold: float = 2.0,
                 policy: str | None = None, prune: int = 0, repetition_penalty: float = 1.0,
                 prune_start: int | None = None, oracle_exits: list[int] | None = None,
                 emission: str = "last_block", translators: Translators | None = None, max_draft: int | None = None,
                 draft_vocab: Sequence[int] | None = None, draft_climb: str = "deepest"):
        self.model = model
        self.parts = parts(model)
        n = self.parts.n_layers
        self.policy = resolve_policy(self.parts.arch, policy)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
        self.threshold = float(threshold)  # the point `generate_batch` decodes at
        self.kept = kept_blocks(n, prune, prune_start)
        self.prune, self.prune_start = prune, n - 1 - prune if prune_start is None else prune_start
        # Costs depend on block counts only: an exit at the k-th kept block costs what an exit at block k does
        # when the pruned blocks are the ones before the last, which is the form accounting takes.
        self.cost_layer = {b: k for k, b in enumerate(self.kept[:-1])} | {n - 1: n - 1}
        heads = heads if heads is not None else nn.ModuleDict()
        if oracle_exits is not None and (len(heads) or not oracle_exits):
            raise ValueError("the oracle decides the exits itself: give oracle_exits (a non-empty list) or heads, not both")
        for key in oracle_exits or []:
            if not 0 <= key <= n - 2 or key not in self.kept:
                raise ValueError(f"oracle exit layer {key} out of range: exits sit at kept blocks 0..{n - 2}")
        for key, head in heads.items():
            layer = int(key)
            if not 0 <= layer <= n - 2:
                raise ValueError(f"exit layer {layer} out of range: exits sit at blocks 0..{n - 2} of this {n}-block backbone")
            if layer not in self.kept:
                raise ValueError(f"exit layer {layer} is among the {prune} pruned blocks")
            if head.hidden_size != model.config.hidden_size:
                raise ValueError(f"head at layer {layer} reads hidden size {head.hidden_size}, the backbone has "
                                 f"{model.config.hidden_size}")
        check_decoder_emission(emission, translators, sorted(oracle_exits or [int(k) for k in heads]),
                               model.config.hidden_size)
        self.emission, self.translators = emission, translators
        # Under lens / translator an exit skips the last block too: the policy fills it like any skipped block.
        self.tail = [] if emission == "last_block" else [self.kept[-1]]
        # Oracle: at each step the token exits at the earliest of these layers whose emitted token equals the full
        # model's (known by looking ahead, at no counted cost): the bound of any head at these exits.
        self.oracle_exits = sorted(oracle_exits) if oracle_exits else []
        self.exits_enabled = bool(self.oracle_exits) or (len(heads) > 0 and self.threshold <= 1.0)
        self.heads = {int(k): h for k, h in heads.items()} if self.exits_enabled else {}
        for head in self.heads.values():
            head.attach(self.parts)  # what a head reads of the backbone (the softmax rule: its LM head)
        self.head_macs = {layer: head.macs_per_token() for layer, head in self.heads.items()}
        body = self.kept[:-1]  # an exit at a body block skips the body blocks after it (and the tail)
        first = min(self.heads or self.oracle_exits or [n])
        skippable = body[body.index(first) + 1:] + self.tail if first < n else []
        # fill(layers, cache, h_exit, exit_layer, skipped, position_embeddings, rows=None, write=None): policies.py
        self.fill = make_fill(self.parts.arch, self.policy, self.parts.layers, skippable)
        self.cost_model = CostModel(model.config)
        self.dtype = self.parts.final_norm.weight.dtype  # heads read z in the model's dtype (Mamba keeps h in fp32)
        self.penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
        config = model.config
        self.mask_fn = (create_causal_mask if getattr(config, "sliding_window", None) is None
                        else create_sliding_window_causal_mask)  # transformers' own, as the model's forward picks it
        # Speculative (decoding/speculative.py): exits draft up to max_draft tokens, the full model verifies them
        self.max_draft = max_draft
        self.draft_vocab, self.draft_head = None, None
        if draft_climb not in DRAFT_CLIMBS:
            raise ValueError(f"draft_climb must be one of {', '.join(DRAFT_CLIMBS)}, got {draft_climb!r}")
        self.draft_climb = draft_climb
        if max_draft is not None:
            self._check_speculative(max_draft, heads, repetition_penalty)
            if draft_vocab is not None:
                self.draft_vocab = torch.as_tensor(list(draft_vocab), dtype=torch.long,
                                                   device=self.parts.lm_head.weight.device)  # (V',)
                if self.draft_vocab.numel() == 0 or self.draft_vocab.unique().numel() != self.draft_vocab.numel() \
                        or not 0 <= int(self.draft_vocab.min()) <= int(self.draft_vocab.max()) < config.vocab_size:
                    raise ValueError(f"draft_vocab must hold distinct token ids in 0..{config.vocab_size - 1}")
                # the LM head's rows of the draft vocabulary, copied once: the draft's emission costs V'/V of the head
                self.draft_head = self.parts.lm_head.weight[self.draft_vocab].detach().clone()  # (V', D)
        elif draft_vocab is not None:
            raise ValueError("draft_vocab is for speculative decoding (max_draft)")

    def _check_speculative(self, max_draft: int, heads: nn.ModuleDict, repetition_penalty: float) -> None:
        if isinstance(max_draft, bool) or not isinstance(max_draft, int) or max_draft < 1:
            raise ValueError(f"max_draft must be an integer >= 1, got {max_draft!r}")
        if self.prune:
            raise ValueError("speculative decoding verifies with the full model: no pruning")
        if repetition_penalty != 1.0:
            raise ValueError("speculative decoding is greedy decoding of the full model: no repetition penalty")
        if any(stateful(h) for h in heads.values()):
            raise ValueError("speculative decoding takes heads without a recurrent state (not the mamba head: its "
                             "state would have to roll back with the rejected drafts)")

    stateful = staticmethod(stateful)

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """h (R, 1, D) after block `layer` -> what the final norm reads under this rule (translated or as is)."""
        return self.translators(h, layer) if self.emission == "translator" else h  # (R, 1, D)

    def reads_emission(self, head: ExitHead) -> bool:
        """Whether this head reads z through the translator: a rule on the emitted distribution (the softmax rule)
        under the translator rule. Under lens its z is already the emitted one; under last_block the emission is the
        last block itself, which the rule cannot read from h alone (it keeps the logit lens)."""
        return self.emission == "translator" and getattr(head, "reads_emitted_distribution", False)

    def draft_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """The tokens drafts emit from h (E, 1, D): the LM head's top-1, over the draft vocabulary when there is one."""
        if self.draft_head is None:
            return self.logits(h).argmax(-1)  # (E,)
        z = self.parts.final_norm(h)[:, -1].to(self.draft_head.dtype)  # (E, D)
        return self.draft_vocab[(z @ self.draft_head.T).argmax(-1)]  # (E,)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: h (R, 1, D) -> fp32 logits (R, V)."""
        return self.logits_all(h)[:, -1, :]  # (R, V)

    def logits_all(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head at every position: h (R, K, D) -> fp32 logits (R, K, V)."""
        p = self.parts
        return p.lm_head(p.final_norm(h).to(p.lm_head.weight.dtype)).float()  # (R, K, V)

    def token_cost(self, exit_layer: int, context_len: int, head_macs: list[int], translations: int) -> TokenCost:
        return self.cost_model.token_cost(self.cost_layer[exit_layer], context_len, self.policy, head_macs,
                                          self.prune, self.emission, translations)

    def eos_ids(self, eos_token_id) -> set[int]:
        if eos_token_id is None:
            eos_token_id = self.model.generation_config.eos_token_id
        if eos_token_id is None:
            return set()
        return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id}

    def sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def next_token(self, logits: torch.Tensor, seq: torch.Tensor | None) -> torch.Tensor:
        """Greedy choice from fp32 logits (B, V), after the optional repetition penalty; stays on device."""
        if self.penalty is not None:
            logits = self.penalty(seq, logits)  # (B, V)
        return logits.argmax(-1)  # (B,)

    @staticmethod
    def stop_reason(token_ids: list[int], eos: set[int], stop_strings: list[str] | None, tokenizer) -> str | None:
        if token_ids[-1] in eos:
            return "eos"
        # Like transformers' StopStringCriteria, match on decoded text (a stop string may span tokens); only the
        # generated text counts, and the caller cuts it at the stop string.
        if stop_strings:
            text = tokenizer.decode(token_ids)  # once per step, not per stop string
            if any(s in text for s in stop_strings):
                return "stop_string"
        return None


def snapshot_cache(cache: DynamicCache, layers: list[int] | None = None) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """What a look-ahead changes in the cache (of `layers`, default all): K/V only grow (views of their first
    positions suffice: kv_cache.GrowingLayer writes past them), SSM states are updated in place (cloned). Restore
    snapshots last-in first-out: a restored K/V view lets later appends overwrite what came after it."""
    return [(j, layer.keys, layer.values) if hasattr(layer, "keys")
            else (j, layer.conv_states[0].clone(), layer.recurrent_states[0].clone())
            for j, layer in enumerate(cache.layers) if layers is None or j in layers]


def restore_cache(cache: DynamicCache, saved: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    for j, a, b in saved:
        layer = cache.layers[j]
        if hasattr(layer, "keys"):
            layer.keys, layer.values = a, b
        else:
            layer.conv_states[0], layer.recurrent_states[0] = a.clone(), b.clone()  # the snapshot may be restored again
