"""The prompts' full-depth pass, once for every decoder of a model that decodes them (docs/policies.md, "One prefill").

The prompt runs at full depth whatever the threshold, the head, the policy or the emission rule: every exit cell, the
oracle and the baseline of one backbone start from the same cache. A pruned model differs only from its first dropped
block on: its blocks before are the full model's own, computed on the same inputs. So `Prefill` runs the full model
once on a batch of prompts, keeping the hidden states some decoder needs, and gives each decoder its start:
- a decoder of the full model: a copy of the cache and the last position's logits;
- a pruned decoder: the cache of the blocks before its dropped range, and its kept blocks after the range run on the
  hidden state that entered the range (the same computation as its own prefill, bit for bit);
- stateful heads (the `mamba` head): primed on z = final_norm(h) of their exit layer over the prompt.

The prompts are left-padded with an attention mask through the model's own forward, as transformers' batched
`generate` does (Mistral: positions counted over the real tokens, padded keys masked; Mamba-2: padded positions zeroed
before the state). On CPU a padded batch runs row by row instead and the caches are stacked (`Prefill.rows`, which
says why); decoding then masks the padded positions the same way.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.masking_utils import create_recurrent_attention_mask

from ..models.heads import stateful
from .core import DecoderCore
from .kv_cache import new_cache


def _pad_id(decoder: DecoderCore) -> int:
    config = decoder.model.config
    for pad in (config.pad_token_id, config.eos_token_id, 0):
        if isinstance(pad, int):
            return pad
        if isinstance(pad, (list, tuple)) and pad:
            return int(pad[0])
    return 0


def validate_prompts(decoder: DecoderCore, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """The prompts as lists of ids; a clear error for an empty list, an empty prompt, or one past the context."""
    if isinstance(prompts, torch.Tensor) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    config = decoder.model.config
    context = getattr(config, "max_position_embeddings", None)  # Mamba-2 has no context limit
    vocab = config.vocab_size
    out = []
    for i, prompt in enumerate(prompts):
        ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
        if not ids:
            raise ValueError(f"prompt {i} is empty")
        if context is not None and len(ids) > context:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, longer than the model's context of {context}")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt {i} has a token id outside the vocabulary 0..{vocab - 1}")
        out.append([int(t) for t in ids])
    return out


class Rows:
    """The rows still decoding and their per-row tensors; `keep` drops finished rows from all of them."""

    def __init__(self, decoder: DecoderCore, prompts: list[list[int]], max_new_tokens: int):
        device = decoder.parts.lm_head.weight.device
        self.device = device
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        pad = _pad_id(decoder)
        self.input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # (B, T)
        self.padded = min(lengths) != width
        # 0 at left padding, over the prompt and every token since (None without padding: the batch-1 calls)
        self.mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device) if self.padded else None
        self.rows = list(range(len(prompts)))  # original index of each row still decoding
        self.positions = torch.tensor(lengths, device=device)[:, None]  # (B, 1): position of the next token read
        self.seq = None
        if decoder.penalty is not None:
            # prompt + generated ids for the repetition penalty; left padding repeats the row's first token, which the
            # penalty (a gather/scatter over the ids present) then sees as nothing new
            self.seq = torch.empty(len(prompts), width + max_new_tokens, dtype=torch.long, device=device)  # (B, T+N)
            self.seq[:, :width] = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts], device=device)
        self.width = width

    def keep(self, keep: list[int], cache: DynamicCache, states: dict, heads: dict) -> torch.Tensor:
        """Keep the rows `keep` (indices into the current rows) everywhere; returns them as a tensor (K,)."""
        idx = torch.tensor(keep, device=self.device)  # (K,)
        cache.reorder_cache(idx)
        for layer, head in heads.items():
            states[layer] = head.keep_rows(states[layer], idx)
        self.rows = [self.rows[i] for i in keep]
        self.positions = self.positions[idx]
        if self.mask is not None:
            self.mask = self.mask[idx]
        if self.seq is not None:
            self.seq = self.seq[idx]
        return idx


def stack(caches: list[DynamicCache], width: int) -> DynamicCache:
    """One batch cache from single-row caches (the first one, filled in place): attention K/V left-padded to `width`
    positions, fixed-size conv and SSM states stacked as they are."""
    base = caches[0]
    for j, layer in enumerate(base.layers):
        if getattr(layer, "keys", None) is not None and layer.keys.numel():  # (1, kv_heads, T_r, head_dim) per row
            for name in ("keys", "values"):
                rows = [getattr(c.layers[j], name) for c in caches]
                setattr(layer, name, torch.cat([F.pad(t, (0, 0, width - t.shape[-2], 0)) for t in rows]))  # (B, ., W, .)
        for name in ("conv_states", "recurrent_states"):
            states = getattr(layer, name, None)
            if states and states.get(0) is not None:
                states[0] = torch.cat([getattr(c.layers[j], name)[0] for c in caches])  # (B, ...)
    return base


class _Part:
    """One forward's worth of prompts (a row, or the whole batch): its input ids (b, T), padding mask or None, the
    full model's cache, the last position's fp32 logits (b, V) and the hidden states kept, block -> (b, T, D)."""

    def __init__(self, input_ids: torch.Tensor, mask: torch.Tensor | None):
        self.input_ids, self.mask = input_ids, mask
        self.cache: DynamicCache | None = None
        self.logits: torch.Tensor | None = None
        self.hidden: dict[int, torch.Tensor] = {}


class Prefill:
    """The full model's pass over a batch of prompts, kept for every decoder in `decoders` (one model), then each
    decoder's start from it (`start`). See the module docstring; `by_rows` forces the row-by-row pass (True) or the one
    padded forward (False) instead of choosing by device."""

    @torch.no_grad()
    def __init__(self, decoders: Sequence[DecoderCore], prompts: list[list[int]], max_new_tokens: int,
                 by_rows: bool | None = None):
        first = decoders[0]
        self.model, self.parts, self.prompts = first.model, first.parts, prompts
        self.batch = Rows(first, prompts, max_new_tokens)
        self.max_new_tokens = max_new_tokens
        keep: set[int] = set()  # blocks whose outputs a decoder needs
        for d in decoders:
            if d.model is not self.model:
                raise ValueError("the decoders of one prefill must share one model")
            keep |= {layer for layer, head in d.heads.items() if stateful(head) and layer < self._start(d)}
            if d.prune:
                keep.add(d.prune_start - 1)  # the input of the first dropped block
        first.sync(self.batch.device)
        start = time.perf_counter()
        # Row by row on CPU when padded: there, a padding mask sends transformers' SDPA attention down its math path,
        # which materialises (B, heads, T, T) scores: padded in one forward, the default grid's Mistral TruthfulQA
        # cells (24 prompts of ~667 tokens) took 2.4x the CPU time of batch 1; row by row, one such cell took 18.5
        # CPU-s against 19.2 at batch 1. The row pass is exactly the batch-1 computation, so it rounds as batch 1.
        self.by_rows = self.batch.padded and self.batch.device.type == "cpu" if by_rows is None else by_rows
        if self.by_rows:
            self.items = [_Part(torch.tensor([ids], device=self.batch.device), None) for ids in prompts]
        else:
            self.items = [_Part(self.batch.input_ids, self.batch.mask)]
        for item in self.items:
            self._full(item, keep)
        first.sync(self.batch.device)
        self.seconds = time.perf_counter() - start

    @staticmethod
    def _start(decoder: DecoderCore) -> int:
        """The first block a decoder's prefill does not share with the full model's (n_layers: none)."""
        return decoder.prune_start if decoder.prune else decoder.parts.n_layers

    def _positions(self, item: _Part) -> torch.Tensor | None:
        """Padded: positions count the real tokens only, as generate's (None: the model's own arange)."""
        return None if item.mask is None else (item.mask.cumsum(-1) - 1).clamp(min=0)  # (b, T)

    def _full(self, item: _Part, keep: set[int]) -> None:
        p = self.parts
        hooks = [p.layers[j].register_forward_hook(lambda _m, _i, out, j=j: item.hidden.__setitem__(j, out))
                 for j in sorted(keep)]
        kwargs: dict = {"attention_mask": item.mask}
        if p.is_attention and item.mask is not None:
            kwargs["position_ids"] = self._positions(item)
        try:
            item.cache = new_cache(self.model.config)
            out = self.model(input_ids=item.input_ids, cache=item.cache, use_cache=True, logits_to_keep=1, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        item.logits = out.logits[:, -1, :].float()  # (b, V)

    def _pruned(self, decoder: DecoderCore, item: _Part, cache: DynamicCache, hidden: dict) -> torch.Tensor:
        """A pruned decoder's blocks after its dropped range, on the hidden state that entered the range: fresh cache
        layers for them, their outputs at stateful heads' layers into `hidden`; fp32 logits (b, V)."""
        p, s = self.parts, decoder.prune_start
        blocks = [j for j in decoder.kept if j >= s]
        fresh = new_cache(self.model.config)
        for j in range(s, p.n_layers):  # the dropped blocks' and the recomputed blocks' layers start empty
            cache.layers[j] = fresh.layers[j]
        h = item.hidden[s - 1]  # (b, T, D)
        if p.is_attention:
            positions = self._positions(item)
            if positions is None:
                positions = torch.arange(h.shape[1], device=h.device)[None]  # (1, T)
            mask = decoder.mask_fn(config=self.model.config, inputs_embeds=h, attention_mask=item.mask, cache=cache,
                                   position_ids=positions, layer_idx=blocks[0])  # sized on the first fresh layer
            kwargs = dict(attention_mask=mask, position_ids=positions, use_cache=True,
                          position_embeddings=p.rotary_emb(h, position_ids=positions))
        else:
            kwargs = dict(attention_mask=create_recurrent_attention_mask(
                config=self.model.config, inputs_embeds=h, attention_mask=item.mask, cache=cache))
        for j in blocks:
            h = p.layers[j](h, cache=cache, **kwargs)  # (b, T, D)
            hidden[j] = h
        return decoder.logits(h[:, -1:])  # (b, V)

    @torch.no_grad()
    def start(self, decoder: DecoderCore, last: bool = False) -> tuple[Rows, DynamicCache, dict, torch.Tensor, float]:
        """`decoder`'s start: (its rows, cache, stateful heads' states, fp32 logits (B, V), prefill seconds: the
        shared pass's plus its own part). `last`: the prefill's final use, which may take the cache itself."""
        decoder.sync(self.batch.device)
        begin = time.perf_counter()
        device = self.batch.device
        caches, logits, states = [], [], []
        for item in self.items:
            cache = item.cache if last and not decoder.prune else copy.deepcopy(item.cache)
            hidden = dict(item.hidden)
            row_logits = self._pruned(decoder, item, cache, hidden) if decoder.prune else item.logits
            row_states = {}
            for layer, head in decoder.heads.items():
                state = head.init_state(item.input_ids.shape[0], device, decoder.dtype)
                if stateful(head):  # its state reads the prompt: z of its exit layer at every position
                    z = self.parts.final_norm(hidden[layer]).to(decoder.dtype)  # (b, T, D)
                    state = head.prefill(z, state, attention_mask=item.mask)
                row_states[layer] = state
            caches.append(cache)
            logits.append(row_logits)
            states.append(row_states)
        if self.by_rows:
            cache = stack(caches, self.batch.width)
            merged = {layer: stack([s[layer] for s in states], self.batch.width) if stateful(head) else None
                      for layer, head in decoder.heads.items()}
        else:
            cache, merged = caches[0], states[0]
        decoder.sync(device)
        seconds = self.seconds + time.perf_counter() - begin
        return Rows(decoder, self.prompts, self.max_new_tokens), cache, merged, torch.cat(logits), seconds
