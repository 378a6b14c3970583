"""The exit-aware greedy decoder (Algorithm 1 of the paper, docs/policies.md): a batch of prompts decoded together,
every row exiting on its own decision; batch size 1 is a batch of one row.

- Prefill: the prompts left-padded with an attention mask through the model's own forward, as transformers'
  batched `generate` does (Mistral: positions counted over the real tokens, padded keys masked; Mamba-2: padded
  positions zeroed before the state, transformers' `apply_mask_to_padding_states`). On CPU a padded batch is
  prefilled row by row instead and the caches stacked (`prefill_rows`, which says why); decoding then masks the
  padded positions the same way.
- Each decode step is `step.Step` (the one place where a token exits). Stateful heads keep one state row per batch
  row and step only the rows that reach them.
- A row that finishes (EOS, stop string, max tokens) leaves the batch: its cache, head-state and position rows
  are dropped, so it costs nothing further.
With exits disabled (no heads, or threshold > 1) this is plain greedy decoding and matches
`model.generate(do_sample=False)` token for token, batched or not (tests/test_decoder.py, tests/test_batch.py); every
row gets exactly the tokens, exits and costs of the reference batch-1 loop in tests/reference_decoder.py.
Per row the result is a `DecodeResult` (token ids, exit layers, stop reason, one cost per decode step at that row's
own context length); decode_seconds is the row's latency (decode start to its last token) and
`batch_decode_seconds` the whole batch's, which is what throughput divides by.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from ..defaults import EXITS_OFF
from .accounting import crf_exact, crf_paper
from .core import DecodeResult, DecoderCore
from .kv_cache import new_cache
from .pruning import prune_blocks
from . import speculative
from .step import Step

__all__ = ["DecodeResult", "ExitDecoder"]


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


def _stack(caches: list[DynamicCache], width: int) -> DynamicCache:
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


@torch.no_grad()
def prefill_rows(decoder: DecoderCore, prompts: list[list[int]], width: int) -> tuple[torch.Tensor, DynamicCache, dict]:
    """Each prompt through the batch-1 prefill, the caches and head states then stacked into one batch.

    Used for padded batches on CPU: there, a padding mask sends transformers' SDPA attention down its math path,
    which materialises (B, heads, T, T) scores: padded in one forward, the default grid's Mistral TruthfulQA cells
    (24 prompts of ~667 tokens) took 2.4x the CPU time of batch 1 (other tasks ~1.5x under the same load); row by
    row, one such cell took 18.5 CPU-s against 19.2 at batch 1. The row prefill is exactly the batch-1
    computation, so it also rounds exactly as batch size 1.
    """
    device = decoder.parts.lm_head.weight.device
    logits, caches, states = [], [], []
    for ids in prompts:
        cache = new_cache(decoder.model.config)
        row_states = {layer: head.init_state(1, device, decoder.dtype) for layer, head in decoder.heads.items()}
        logits.append(decoder.prefill(torch.tensor([ids], device=device), cache, row_states))  # (1, V)
        caches.append(cache)
        states.append(row_states)
    merged = {layer: _stack([s[layer] for s in states], width) if decoder.stateful(head) else None
              for layer, head in decoder.heads.items()}
    return torch.cat(logits), _stack(caches, width), merged  # (B, V)


@torch.no_grad()
def prefill_batch(decoder: DecoderCore, batch: Rows, cache: DynamicCache, states: dict) -> torch.Tensor:
    """The padded prompts through the (pruned) model's own forward; stateful heads primed on their layer's z."""
    p = decoder.parts
    captured: dict[int, torch.Tensor] = {}
    hooks = [p.layers[layer].register_forward_hook(lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out))
             for layer, head in decoder.heads.items() if decoder.stateful(head)]
    mask = batch.mask  # (B, T), or None without padding: exactly the batch-1 call
    kwargs: dict = {"attention_mask": mask}
    if p.is_attention and mask is not None:  # positions count the real tokens only, as generate's
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    try:
        with prune_blocks(decoder.model, decoder.prune, decoder.prune_start):
            out = decoder.model(input_ids=batch.input_ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
    finally:
        for hook in hooks:
            hook.remove()
    for layer, h in captured.items():
        z = p.final_norm(h).to(decoder.dtype)  # (B, T, D)
        states[layer] = decoder.heads[layer].prefill(z, states[layer], attention_mask=mask)
    return out.logits[:, -1, :].float()  # (B, V)


@torch.no_grad()
def prefill(decoder: DecoderCore, prompts: list[list[int]], max_new_tokens: int) -> tuple[Rows, DynamicCache, dict,
                                                                                         torch.Tensor]:
    """The prompts' full-depth pass: (their rows, the cache, the stateful heads' states, fp32 logits (B, V) of each
    prompt's last position)."""
    batch = Rows(decoder, prompts, max_new_tokens)
    if batch.padded and batch.device.type == "cpu":
        logits, cache, states = prefill_rows(decoder, prompts, batch.width)  # (B, V)
    else:
        cache = new_cache(decoder.model.config)
        states = {layer: head.init_state(len(prompts), batch.device, decoder.dtype)
                  for layer, head in decoder.heads.items()}
        logits = prefill_batch(decoder, batch, cache, states)  # (B, V)
    return batch, cache, states, logits


class ExitDecoder(DecoderCore):
    """Greedy early-exit decoding on a Mistral, Llama, Qwen2 or Mamba-2 backbone; see the module docstring, and
    DecoderCore for the arguments (`emission`: one of choices.EMISSION_RULES; `translators`: the `translator` rule's)."""

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                 tokenizer=None, eos_token_id=None) -> DecodeResult:
        """Greedy-decode up to `max_new_tokens` after `input_ids` (1, T): `generate_batch` on a batch of one row.

        Stops at an EOS id (`eos_token_id`: int or list; None takes the model's generation config, [] disables
        it) or once the decoded generated text contains a stop string (needs `tokenizer`); the stopping token is
        kept in `token_ids` and cutting the text at the stop string is the caller's job.
        """
        if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 1:
            raise ValueError(f"input_ids must have shape (1, T>=1) (batch size 1), got {tuple(input_ids.shape)}")
        return self.generate_batch([input_ids[0].tolist()], max_new_tokens, stop_strings, tokenizer, eos_token_id)[0]

    def generate_batch(self, prompts, max_new_tokens: int = 64, stop_strings: list[str] | None = None,
                       tokenizer=None, eos_token_id=None, climbing_only: bool | None = None) -> list[DecodeResult]:
        """Decode a list of prompts (token-id lists, any lengths) together at the decoder's threshold, each row
        exiting on its own decision; one result per prompt."""
        return self.generate_batch_thresholds(prompts, [self.threshold], max_new_tokens, stop_strings, tokenizer,
                                              eos_token_id, climbing_only)[0]

    @torch.no_grad()
    def generate_batch_thresholds(self, prompts: Sequence[Sequence[int]], thresholds: Sequence[float],
                                  max_new_tokens: int = 64, stop_strings: list[str] | None = None, tokenizer=None,
                                  eos_token_id=None, climbing_only: bool | None = None,
                                  paired: str | None = None) -> list[list[DecodeResult]]:
        """Greedy-decode every prompt (a list of token-id lists, any lengths) together at each of `thresholds`, from
        one prefill: result i holds one `DecodeResult` per prompt, what a decoder built with threshold thresholds[i]
        gives it (`climbing_only`: see step.py; None: True on a CPU, False on a GPU). Several thresholds need exit
        heads (the oracle, a bound rather than a method, has no threshold: it decodes at one point).

        `paired` ('before' or 'after' the thresholds) also decodes the same prefill with exits off (no heads), timed
        the same way: one more result list, last, whose time the thresholds' can be divided by batch for batch (the
        speculative mode's measured speedup; alternate the order from batch to batch to spread any drift).

        The prompt runs at full depth whatever the threshold, so a grid over thresholds needs its prefill once: each
        threshold decodes from its own copy of the prefilled cache and head states (transformers' documented way to
        reuse a prompt cache, `copy.deepcopy`). On the embedded grid prefill was 68% of evaluation time (4,994 of
        7,369 s, long few-shot prompts and short answers). Every result reports the one shared prefill's seconds.
        """
        prompts = validate_prompts(self, prompts, max_new_tokens)
        thresholds = [float(t) for t in thresholds]
        if not thresholds:
            raise ValueError("thresholds must not be empty")
        if len(thresholds) > 1 and (not self.exits_enabled or self.oracle_exits
                                    or not all(0 <= t <= 1 for t in thresholds)):
            raise ValueError("several thresholds need a decoder with exit heads and thresholds in [0, 1] "
                             f"(got {thresholds}, exits {'on' if self.exits_enabled else 'off'})")
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need a tokenizer to decode the generated text")
        device = self.parts.lm_head.weight.device
        if climbing_only is None:
            climbing_only = device.type == "cpu"
        self.sync(device)
        start = time.perf_counter()
        batch, cache, states, logits = prefill(self, prompts, max_new_tokens)  # logits (B, V)
        self.sync(device)
        prefill_seconds = time.perf_counter() - start

        if paired not in (None, "before", "after"):
            raise ValueError(f"paired must be None, 'before' or 'after', got {paired!r}")
        runs: list = [(self, threshold) for threshold in thresholds]
        if paired is not None:  # exits off on the same prefill: the model's own decoder, no heads
            plain = (ExitDecoder(self.model), EXITS_OFF)
            runs = [plain] + runs if paired == "before" else runs + [plain]
        results = []
        for k, (decoder, threshold) in enumerate(runs):
            last = k == len(runs) - 1  # the last run may consume the prefilled state itself
            results.append(decoder.decode(batch if k == 0 else Rows(self, prompts, max_new_tokens),
                                          cache if last else copy.deepcopy(cache),
                                          states if last else copy.deepcopy(states), logits, threshold,
                                          max_new_tokens, stop_strings, tokenizer, eos_token_id, climbing_only,
                                          prefill_seconds))
        if paired == "before":
            results.append(results.pop(0))
        return results

    def decode(self, batch: Rows, cache: DynamicCache, states: dict, logits: torch.Tensor, threshold: float,
               max_new_tokens: int, stop_strings, tokenizer, eos_token_id, climbing_only: bool,
               prefill_seconds: float) -> list[DecodeResult]:
        """Decode a prefilled batch (`logits` (B, V): the prefill's last position) at `threshold`; consumes `batch`,
        `cache` and `states`. With max_draft set, the exits draft and the full model verifies (speculative.py)."""
        if self.max_draft is not None and self.exits_enabled:
            return speculative.decode(self, batch, cache, states, logits, threshold, max_new_tokens, stop_strings,
                                      tokenizer, eos_token_id, prefill_seconds)
        p = self.parts
        eos = self.eos_ids(eos_token_id)
        last = p.n_layers - 1
        n = len(batch.rows)
        device = batch.device
        token_ids: list[list[int]] = [[] for _ in range(n)]
        exit_layers: list[list[int]] = [[] for _ in range(n)]
        costs: list[list] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        latency = [0.0] * n
        tok = self.next_token(logits, None if batch.seq is None else batch.seq[:, :batch.width])  # (B,)
        for r, t in enumerate(tok.tolist()):
            token_ids[r].append(t)
            exit_layers[r].append(last)

        start = time.perf_counter()
        step_no = 0  # tokens generated so far by every row still decoding, minus one
        while True:
            keep = []
            for i, row in enumerate(batch.rows):
                reasons[row] = self.stop_reason(token_ids[row], eos, stop_strings, tokenizer)
                if reasons[row] is None and len(token_ids[row]) >= max_new_tokens:
                    reasons[row] = "max_new_tokens"
                if reasons[row] is None:
                    keep.append(i)
                else:
                    latency[row] = time.perf_counter() - start
            if not keep:
                break
            if len(keep) < len(batch.rows):  # finished rows leave the batch
                tok = tok[batch.keep(keep, cache, states, self.heads)]
            pos_in_seq = batch.width + step_no  # column of `tok` in the padded sequence
            if batch.seq is not None:
                batch.seq[:, pos_in_seq] = tok
            if batch.mask is not None:
                batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=-1)  # (B, L+1)
            step = Step(self, cache, len(batch.rows), threshold, climbing_only)
            logits, exits, macs, translations = step(tok, batch.positions, states, batch.mask)
            tok = self.next_token(logits, None if batch.seq is None else batch.seq[:, :pos_in_seq + 1])  # (B,)
            positions = batch.positions[:, 0].tolist()  # one host read per step, not one per row
            for i, (row, t) in enumerate(zip(batch.rows, tok.tolist())):
                token_ids[row].append(t)
                exit_layers[row].append(exits[i])
                pos = positions[i]  # the position this step read; it attended to pos + 1 positions
                costs[row].append(self.token_cost(exits[i], pos + 1, macs[i], translations[i]))
            batch.positions = batch.positions + 1
            step_no += 1
        self.sync(device)
        decode_seconds = time.perf_counter() - start
        return [DecodeResult(token_ids[r], exit_layers[r], reasons[r], costs[r], crf_exact(costs[r]),
                             crf_paper(costs[r]), latency[r], prefill_seconds, batch_size=n,
                             batch_decode_seconds=decode_seconds)
                for r in range(n)]
