"""The reference decoder: the batch-1 loop the production decoder (workflow_lib/decoding/decoder.py, which decodes
every batch through step.Step) is checked against, token for token, exit for exit and cost for cost
(tests/test_batch.py, tests/test_decoder_records.py). It was the project's batch-1 decoder until the two became one;
kept as it was, so the equivalence tests keep meaning something.

The prompt runs at full (or pruned) depth through the model's own forward, filling transformers' own cache.
Each new token then runs block by block: at an exit layer the head reads z = final_norm(h) and the token
exits when p_exit >= threshold; the missing-state policy fills the skipped blocks and the emission rule gives the
token (decoding/core.py): under `last_block` (the paper's) the policy fills blocks e+1 .. n-2, the last block n-1
runs on the exit hidden state, then the final norm and the LM head; under `lens` / `translator` the last block is
skipped and filled too, and the final norm and the LM head read h_e (or translate(h_e, e)). With exits disabled
(no heads, or threshold > 1) this is plain greedy decoding and matches `model.generate(do_sample=False)` token for
token (`last_logits`: the last step's fp32 logits, (1, V), compared with generate's).
"""
from __future__ import annotations

import time

import torch
from transformers import DynamicCache

from workflow_lib.decoding.accounting import crf_exact, crf_paper
from workflow_lib.decoding.core import DecodeResult, DecoderCore, restore_cache, snapshot_cache
from workflow_lib.decoding.core import stateful
from workflow_lib.decoding.kv_cache import new_cache
from workflow_lib.decoding.pruning import prune_blocks


class ReferenceDecoder(DecoderCore):
    """Batch-1 greedy early-exit decoding; DecoderCore takes the arguments."""

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache: DynamicCache, states: dict) -> torch.Tensor:
        """Run the prompt through the (pruned) model's own forward; prime stateful heads on their layer's z."""
        captured: dict[int, torch.Tensor] = {}
        hooks = [self.parts.layers[layer].register_forward_hook(
                     lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out))
                 for layer, head in self.heads.items() if stateful(head)]
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
        eos = self.eos_ids(eos_token_id)
        prompt_len = input_ids.shape[1]
        last = p.n_layers - 1
        # transformers' DynamicCache (generate's default) with in-place appends (kv_cache.py); its StaticCache only
        # pays under torch.compile (uncompiled, generate with it took 1.11x / 1.01x the time on tiny Mistral, CPU)
        cache = new_cache(model.config)
        states = {layer: head.init_state(1, device, self.dtype) for layer, head in self.heads.items()}
        seq = None
        if self.penalty is not None:  # prompt + generated ids, for the repetition penalty
            seq = torch.empty(1, prompt_len + max_new_tokens, dtype=torch.long, device=device)  # (1, T + N)
            seq[:, :prompt_len] = input_ids

        self.sync(device)
        start = time.perf_counter()
        logits = self.prefill(input_ids, cache, states)  # (1, V)
        tok = self.next_token(logits, None if seq is None else seq[:, :prompt_len])  # (1,)
        token_ids, exit_layers, costs = [int(tok)], [last], []
        self.sync(device)
        prefill_seconds = time.perf_counter() - start

        stop_reason = self.stop_reason(token_ids, eos, stop_strings, tokenizer)
        position_ids = torch.full((1, 1), prompt_len, dtype=torch.long, device=device)  # (1, 1), advanced in place
        start = time.perf_counter()
        while stop_reason is None and len(token_ids) < max_new_tokens:
            pos = prompt_len + len(token_ids) - 1  # position of `tok`, the token this step reads
            if seq is not None:
                seq[:, pos] = tok
            logits, exit_layer, head_macs, translations = self.step(tok, position_ids, cache, states)
            tok = self.next_token(logits, None if seq is None else seq[:, :pos + 1])  # (1,)
            token_ids.append(int(tok))
            exit_layers.append(exit_layer)
            costs.append(self.token_cost(exit_layer, pos + 1, head_macs, translations))
            position_ids += 1
            stop_reason = self.stop_reason(token_ids, eos, stop_strings, tokenizer)
        self.sync(device)
        decode_seconds = time.perf_counter() - start
        self.last_logits = logits  # (1, V)
        return DecodeResult(token_ids, exit_layers, stop_reason or "max_new_tokens", costs, crf_exact(costs),
                            crf_paper(costs), decode_seconds, prefill_seconds)

    @torch.no_grad()
    def step(self, tok: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
             states: dict) -> tuple[torch.Tensor, int, list[int], int]:
        """One decode step for token `tok` (1,): returns fp32 logits (1, V), the exit block, the MACs of the heads
        evaluated, and how many translations ran (the `translator` rule: 1 on an exit, or one per evaluated exit of a
        head that reads the emitted distribution)."""
        p = self.parts
        h = p.embed(tok[:, None])  # (1, 1, D)
        block_kwargs: dict = {"cache": cache}
        pos_emb = None
        if p.is_attention:
            pos_emb = p.rotary_emb(h, position_ids=position_ids)  # cos, sin: (1, 1, head_dim)
            mask = self.mask_fn(config=self.model.config, inputs_embeds=h, attention_mask=None, cache=cache,
                                 position_ids=position_ids)
            block_kwargs.update(attention_mask=mask, position_ids=position_ids, use_cache=True, position_embeddings=pos_emb)
        exit_layer, head_macs, translations = p.n_layers - 1, [], 0
        body = self.kept[:-1]
        oracle_layer = self._oracle_exit(h, cache, block_kwargs, pos_emb) if self.oracle_exits else None
        for idx, i in enumerate(body):
            h_in, h = h, p.layers[i](h, **block_kwargs)  # (1, 1, D) each: block i's input and output
            emitted = None  # (1, 1, D): translate(h, i) once computed
            if self.oracle_exits:
                exits = i == oracle_layer
            else:
                head = self.heads.get(i)
                if head is None:
                    continue
                z_in = p.final_norm(h_in)[:, 0].to(self.dtype) if head.reads_block_input else None  # (1, D)
                if self.reads_emission(head):
                    emitted, translations = self.translate(h, i), translations + 1  # (1, 1, D)
                z = p.final_norm(h if emitted is None else emitted)[:, 0].to(self.dtype)  # (1, D)
                exit_logits, states[i] = head.step(z, states[i], z_in)  # (1, 2)
                head_macs.append(self.head_macs[i])
                exits = float(exit_logits.float().softmax(-1)[0, 1]) >= self.threshold  # the one host sync per exit
            if exits:
                exit_layer = i
                self.fill(p.layers, cache, h, i, body[idx + 1:] + self.tail, pos_emb)
                if self.tail:  # lens / translator: the token is read off h_e, the last block skipped
                    if emitted is None:
                        emitted, translations = self.translate(h, i), translations + (self.emission == "translator")
                    return self.logits(emitted), exit_layer, head_macs, translations
                break
        h = p.layers[self.kept[-1]](h, **block_kwargs)  # (1, 1, D): the last block (every rule at full depth)
        return self.logits(h), exit_layer, head_macs, translations

    def _emitted_top1(self, h: torch.Tensor, i: int, cache: DynamicCache, block_kwargs: dict, pos_emb) -> int:
        """The token an exit at block i with hidden state h (1, 1, D) emits under this rule. For last_block: the
        policy fills the skipped blocks and the last block runs on h, exactly as `step` would, and the cache is then
        put back (the caller's look-ahead continues from it)."""
        p = self.parts
        if self.tail:
            return int(self.logits(self.translate(h, i)).argmax())
        saved = snapshot_cache(cache)
        body = self.kept[:-1]
        self.fill(p.layers, cache, h, i, body[body.index(i) + 1:], pos_emb)
        top1 = int(self.logits(p.layers[self.kept[-1]](h, **block_kwargs)).argmax())
        restore_cache(cache, saved)
        return top1

    @torch.no_grad()
    def _oracle_exit(self, h: torch.Tensor, cache: DynamicCache, block_kwargs: dict, pos_emb) -> int | None:
        """Look ahead through every kept block from the embedding h (1, 1, D), then put the cache back as it was:
        the earliest oracle exit whose emitted token (under this emission rule) equals the full depth's top-1
        (None: no exit agrees)."""
        p = self.parts
        saved = snapshot_cache(cache)
        emitted = {}
        for i in self.kept:
            h = p.layers[i](h, **block_kwargs)  # (1, 1, D)
            if i in self.oracle_exits:
                emitted[i] = self._emitted_top1(h, i, cache, block_kwargs, pos_emb)
        full = int(self.logits(h).argmax())
        restore_cache(cache, saved)
        return next((i for i in self.oracle_exits if emitted[i] == full), None)


def reference_of(decoder: DecoderCore) -> ReferenceDecoder:
    """A reference decoder with `decoder`'s configuration (its heads, threshold, policy, pruning, penalty, oracle and
    emission rule)."""
    from torch import nn

    heads = nn.ModuleDict({str(layer): head for layer, head in decoder.heads.items()})
    return ReferenceDecoder(decoder.model, heads, decoder.threshold, decoder.policy, decoder.prune,
                            decoder.penalty.penalty if decoder.penalty is not None else 1.0, decoder.prune_start,
                            decoder.oracle_exits or None, decoder.emission, decoder.translators)


def prefill_row(decoder: DecoderCore, input_ids: torch.Tensor, cache: DynamicCache, states: dict) -> torch.Tensor:
    """The reference's batch-1 prefill of `input_ids` (1, T) for any decoder (its configuration): fp32 logits (1, V)."""
    return ReferenceDecoder.prefill(decoder, input_ids, cache, states)
