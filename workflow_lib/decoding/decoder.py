"""The exit-aware greedy decoder (Algorithm 1 of the paper, docs/policies.md); `generate` is batch size 1.

The prompt runs at full (or pruned) depth through the model's own forward, filling transformers' own cache.
Each new token then runs block by block: at an exit layer the head reads z = final_norm(h) and the token
exits when p_exit >= threshold; the missing-state policy fills the skipped blocks e+1 .. n-2, the last block
n-1 runs on the exit hidden state, then the final norm and the LM head give the next token.

With exits disabled (no heads, or threshold > 1) this is plain greedy decoding and matches
`model.generate(do_sample=False)` token for token. The per-block loop does only what the model's own forward
does for one token (embedding, rotary, mask, blocks, norm, head), plus one host sync per exit decision.

`generate_batch` decodes many prompts together with a separate exit decision per row (decoding/batch.py); this
module's batch-1 `generate` is its reference.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import DynamicCache
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..models.backbone import parts
from ..models.heads import ExitHead
from .accounting import CostModel, TokenCost, crf_exact, crf_paper
from .batch import generate_batch_thresholds
from .policies import make_fill, resolve_policy
from .pruning import kept_blocks, prune_blocks


@dataclass
class DecodeResult:
    token_ids: list[int]  # generated tokens only (the stopping EOS / stop-string token included)
    exit_layers: list[int]  # per generated token: the block it stopped at (n_layers-1 = full depth)
    stop_reason: str  # 'eos' | 'stop_string' | 'max_new_tokens'
    costs: list[TokenCost] = field(default_factory=list)  # one per decode step (token_ids[1:]; the first comes from prefill)
    crf_exact: float = 1.0
    crf_paper: float = 1.0
    decode_seconds: float = 0.0
    prefill_seconds: float = 0.0
    last_logits: torch.Tensor | None = None  # (1, V) fp32 logits of the last step, before any penalty (batch 1)
    batch_size: int = 1  # rows decoded together (generate_batch); decode_seconds is then this row's latency
    batch_decode_seconds: float | None = None  # the whole batch's decode time (None at batch size 1: decode_seconds)

    @property
    def tokens_per_second(self) -> float:
        """Decode throughput: tokens produced by decode steps per second of decoding (0 when none ran)."""
        steps = len(self.token_ids) - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds > 0 else 0.0


def _stateful(head: ExitHead) -> bool:
    """Whether the head carries a recurrent state that must see the prompt (the `mamba` head)."""
    return type(head).prefill is not ExitHead.prefill


class ExitDecoder:
    """Greedy early-exit decoding on a Mistral or Mamba-2 backbone; see the module docstring.

    Build it once the model sits on its device in its dtype: the Mistral `recompute` policy stacks the skippable
    blocks' K/V weights at construction (policies.StackedKV).
    """

    def __init__(self, model: nn.Module, heads: nn.ModuleDict | None = None, threshold: float = 2.0,
                 policy: str | None = None, prune: int = 0, repetition_penalty: float = 1.0,
                 prune_start: int | None = None, oracle_exits: list[int] | None = None):
        self.model = model
        self.parts = parts(model)
        n = self.parts.n_layers
        self.policy = resolve_policy(self.parts.arch, policy)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty!r}")
        self.threshold = float(threshold)
        self.kept = kept_blocks(n, prune, prune_start)
        self.prune, self.prune_start = prune, n - 1 - prune if prune_start is None else prune_start
        # Costs depend on block counts only: an exit at the k-th kept block costs what an exit at block k does
        # when the pruned blocks are the ones before the last, which is the form accounting takes.
        self._cost_layer = {b: k for k, b in enumerate(self.kept[:-1])} | {n - 1: n - 1}
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
        # Oracle: at each step the token exits at the earliest of these layers whose intermediate top-1 equals the
        # full model's (known by looking ahead, at no counted cost): the bound of any head at these exits.
        self.oracle_exits = sorted(oracle_exits) if oracle_exits else []
        self.exits_enabled = bool(self.oracle_exits) or (len(heads) > 0 and self.threshold <= 1.0)
        self.heads = {int(k): h for k, h in heads.items()} if self.exits_enabled else {}
        for head in self.heads.values():
            head.attach(self.parts)  # what a head reads of the backbone (the softmax rule: its LM head)
        self.head_macs = {layer: head.macs_per_token() for layer, head in self.heads.items()}
        body = self.kept[:-1]  # an exit at a body block skips the body blocks after it
        first = min(self.heads or self.oracle_exits or [n])
        skippable = body[body.index(first) + 1:] if first < n else []
        self._fill = make_fill(self.parts.arch, self.policy, self.parts.layers, skippable)
        self.cost_model = CostModel(model.config)
        self.dtype = self.parts.final_norm.weight.dtype  # heads read z in the model's dtype (Mamba keeps h in fp32)
        self.penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
        config = model.config
        self._mask_fn = (create_causal_mask if getattr(config, "sliding_window", None) is None
                         else create_sliding_window_causal_mask)

    stateful = staticmethod(_stateful)

    def generate_batch(self, prompts, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                       tokenizer=None, eos_token_id=None, climbing_only: bool | None = None) -> list[DecodeResult]:
        """Decode a list of prompts (token-id lists, any lengths) together, each row exiting on its own decision;
        one result per prompt, equal to `generate` on that prompt alone (decoding/batch.py)."""
        return self.generate_batch_thresholds(prompts, [self.threshold], max_new_tokens, stop_strings, tokenizer,
                                              eos_token_id, climbing_only)[0]

    def generate_batch_thresholds(self, prompts, thresholds, max_new_tokens: int = 64,
                                  stop_strings: list[str] | None = None, tokenizer=None, eos_token_id=None,
                                  climbing_only: bool | None = None) -> list[list[DecodeResult]]:
        """`generate_batch` at each threshold from one shared prefill (decoding/batch.py); several thresholds need
        exit heads. The oracle, a bound rather than a method, has no threshold and decodes one prompt at a time."""
        if self.oracle_exits:
            if len(thresholds) != 1:
                raise ValueError("the oracle has no threshold: decode it at one point")
            device = self.parts.lm_head.weight.device
            results = [self.generate(torch.tensor([p], device=device), max_new_tokens, stop_strings, tokenizer,
                                     eos_token_id) for p in prompts]
            for r in results:  # the batch took what its rows took, one after another
                r.batch_decode_seconds = sum(x.decode_seconds for x in results)
            return [results]
        return generate_batch_thresholds(self, prompts, thresholds, max_new_tokens, stop_strings, tokenizer,
                                         eos_token_id, climbing_only)

    def _eos_ids(self, eos_token_id) -> set[int]:
        if eos_token_id is None:
            eos_token_id = self.model.generation_config.eos_token_id
        if eos_token_id is None:
            return set()
        return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id}

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def _next_token(self, logits: torch.Tensor, seq: torch.Tensor | None) -> torch.Tensor:
        """Greedy choice from fp32 logits (1, V), after the optional repetition penalty; stays on device."""
        if self.penalty is not None:
            logits = self.penalty(seq, logits)  # (1, V)
        return logits.argmax(-1)  # (1,)

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: DynamicCache, states: dict) -> torch.Tensor:
        """Run the prompt through the (pruned) model's own forward; prime stateful heads on their layer's z."""
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.parts.layers[layer].register_forward_hook(
                     lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out))
                 for layer, head in self.heads.items() if _stateful(head)]
        try:
            with prune_blocks(self.model, self.prune, self.prune_start):
                out = self.model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            for hook in hooks:
                hook.remove()
        for layer, h in captured.items():
            states[layer] = self.heads[layer].prefill(self.parts.final_norm(h).to(self.dtype), states[layer])  # z: (1, T, D)
        return out.logits[:, -1, :].float()  # (1, V)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                 tokenizer=None, eos_token_id=None) -> DecodeResult:
        """Greedy-decode up to `max_new_tokens` after `input_ids` (1, T).

        Stops at an EOS id (`eos_token_id`: int or list; None takes the model's generation config, [] disables
        it) or once the decoded generated text contains a stop string (needs `tokenizer`); the stopping token is
        kept in `token_ids` and cutting the text at the stop string is the caller's job.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape (1, T>=1) (batch size 1), got {tuple(input_ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the generated text")
        p, model = self.parts, self.model
        device = p.lm_head.weight.device
        input_ids = input_ids.to(device)
        eos = self._eos_ids(eos_token_id)
        prompt_len = input_ids.shape[1]
        last = p.n_layers - 1
        # transformers' DynamicCache, generate's default: its StaticCache only pays under torch.compile (uncompiled,
        # generate with it took 1.11x / 1.01x the time on tiny Mistral at hidden 256 / 1024, CPU, 64 tokens)
        cache = DynamicCache(config=model.config)
        states = {layer: head.init_state(1, device, self.dtype) for layer, head in self.heads.items()}
        seq = None
        if self.penalty is not None:  # prompt + generated ids, for the repetition penalty
            seq = torch.empty(1, prompt_len + max_new_tokens, dtype=torch.long, device=device)  # (1, T + N)
            seq[:, :prompt_len] = input_ids

        self._sync(device)
        start = time.perf_counter()
        logits = self.prefill(input_ids, cache, states)  # (1, V)
        tok = self._next_token(logits, None if seq is None else seq[:, :prompt_len])  # (1,)
        token_ids, exit_layers, costs = [int(tok)], [last], []
        self._sync(device)
        prefill_seconds = time.perf_counter() - start

        stop_reason = self._stop_reason(token_ids, eos, stop_strings, tokenizer)
        position_ids = torch.full((1, 1), prompt_len, dtype=torch.long, device=device)  # (1, 1), advanced in place
        start = time.perf_counter()
        while stop_reason is None and len(token_ids) < max_new_tokens:
            pos = prompt_len + len(token_ids) - 1  # position of `tok`, the token this step reads
            if seq is not None:
                seq[:, pos] = tok
            logits, exit_layer, head_macs = self.step(tok, position_ids, cache, states)
            tok = self._next_token(logits, None if seq is None else seq[:, :pos + 1])  # (1,)
            token_ids.append(int(tok))
            exit_layers.append(exit_layer)
            costs.append(self.cost_model.token_cost(self._cost_layer[exit_layer], pos + 1, self.policy, head_macs,
                                                    self.prune))
            position_ids += 1
            stop_reason = self._stop_reason(token_ids, eos, stop_strings, tokenizer)
        self._sync(device)
        decode_seconds = time.perf_counter() - start
        return DecodeResult(token_ids, exit_layers, stop_reason or "max_new_tokens", costs, crf_exact(costs),
                            crf_paper(costs), decode_seconds, prefill_seconds, logits)

    @torch.no_grad()
    def step(self, tok: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
              states: dict) -> tuple[torch.Tensor, int, list[int]]:
        """One decode step for token `tok` (1,): returns fp32 logits (1, V), the exit block, head MACs spent."""
        p = self.parts
        h = p.embed(tok[:, None])  # (1, 1, D)
        block_kwargs: dict = {"cache": cache}
        pos_emb = None
        if p.is_attention:
            pos_emb = p.rotary_emb(h, position_ids=position_ids)  # cos, sin: (1, 1, head_dim)
            mask = self._mask_fn(config=self.model.config, inputs_embeds=h, attention_mask=None, cache=cache,
                                 position_ids=position_ids)
            block_kwargs.update(attention_mask=mask, position_ids=position_ids, use_cache=True, position_embeddings=pos_emb)
        exit_layer, head_macs = p.n_layers - 1, []
        body = self.kept[:-1]
        oracle_layer = self._oracle_exit(h, cache, block_kwargs) if self.oracle_exits else None
        for idx, i in enumerate(body):
            h_in, h = h, p.layers[i](h, **block_kwargs)  # (1, 1, D) each: block i's input and output
            if self.oracle_exits:
                exits = i == oracle_layer
            else:
                head = self.heads.get(i)
                if head is None:
                    continue
                z_in = p.final_norm(h_in)[:, 0].to(self.dtype) if head.reads_block_input else None  # (1, D)
                exit_logits, states[i] = head.step(p.final_norm(h)[:, 0].to(self.dtype), states[i], z_in)  # (1, 2)
                head_macs.append(self.head_macs[i])
                exits = float(exit_logits.float().softmax(-1)[0, 1]) >= self.threshold  # the one host sync per exit
            if exits:
                exit_layer = i
                self._fill(p.layers, cache, h, i, body[idx + 1:], pos_emb)
                break
        h = p.layers[self.kept[-1]](h, **block_kwargs)  # (1, 1, D): the last block always runs
        logits = p.lm_head(p.final_norm(h).to(p.lm_head.weight.dtype))[:, -1, :].float()  # (1, V)
        return logits, exit_layer, head_macs

    def _top1(self, h: torch.Tensor) -> int:
        p = self.parts
        return int(p.lm_head(p.final_norm(h).to(p.lm_head.weight.dtype))[0, -1].argmax())

    @torch.no_grad()
    def _oracle_exit(self, h: torch.Tensor, cache: DynamicCache, block_kwargs: dict) -> int | None:
        """Look ahead through every kept block from the embedding h (1, 1, D), then put the cache back as it was:
        the earliest oracle exit whose intermediate top-1 equals the full depth's top-1 (None: no exit agrees)."""
        p = self.parts
        saved = [(layer.keys, layer.values) if hasattr(layer, "keys")  # K/V grow by concatenation: new tensors
                 else (layer.conv_states[0].clone(), layer.recurrent_states[0].clone())  # SSM state: in place
                 for layer in cache.layers]
        intermediate = {}
        for i in self.kept:
            h = p.layers[i](h, **block_kwargs)  # (1, 1, D)
            if i in self.oracle_exits:
                intermediate[i] = self._top1(h)
        full = self._top1(h)
        for layer, (a, b) in zip(cache.layers, saved):
            if hasattr(layer, "keys"):
                layer.keys, layer.values = a, b
            else:
                layer.conv_states[0], layer.recurrent_states[0] = a, b
        return next((i for i in self.oracle_exits if intermediate[i] == full), None)

    @staticmethod
    def _stop_reason(token_ids: list[int], eos: set[int], stop_strings: list[str] | None, tokenizer) -> str | None:
        if token_ids[-1] in eos:
            return "eos"
        # Like transformers' StopStringCriteria, match on decoded text (a stop string may span tokens); only the
        # generated text counts, and the caller cuts it at the stop string.
        if stop_strings and any(s in tokenizer.decode(token_ids) for s in stop_strings):
            return "stop_string"
        return None
