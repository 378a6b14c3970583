"""Batched early-exit decoding: every row of a batch exits on its own decision, with the result of batch size 1.

`ExitDecoder.generate` (decoder.py) is the batch-1 reference; `generate_batch_thresholds` here (behind
`ExitDecoder.generate_batch`) decodes B prompts together, at one threshold or several from one prefill:
- Prefill: the prompts left-padded with an attention mask through the model's own forward, as transformers'
  batched `generate` does (Mistral: positions counted over the real tokens, padded keys masked; Mamba-2: padded
  positions zeroed before the state, transformers' `apply_mask_to_padding_states`). On CPU a padded batch is
  prefilled row by row instead and the caches stacked (`prefill_rows`, which says why); decoding then masks the
  padded positions the same way.
- Each step, at each exit layer, each row still climbing compares its own p_exit with the threshold. A row that
  exits keeps its exit hidden state; the policy fills its skipped blocks for that row alone (`rows=`); stateful
  heads keep one state row per batch row and step only the rows that reach them.
- Rows that exited stop costing compute (`climbing_only=True`, the default on CPU): the blocks after an exit run
  on the rows still climbing only (their hidden states and their cache rows gathered, then scattered back; a block no
  row reaches does not run), and only the last block runs on the whole batch (under the `last_block` emission
  rule; under `lens` / `translator` the last block is one more block an exited row skips). For Mistral the new
  position's K, V of a skipped block come from the policy for the rows that exited and from the block for the rows
  that ran; both are merged into one cache append per block, so the cache stays one dense tensor per block. With
  `climbing_only=False` (the default on GPU) such a block runs on every row and the exited rows' hidden state,
  K/V entry or SSM state is put back afterwards: no gather, but the exited rows' compute is spent. Which wins
  depends on what a block costs (benchmarks/batched_throughput.py --compare-rows): at 7B in bf16 on an H200 a
  decode step reads the same weights for 1 or 32 rows, and every row ran 190 / 607 tokens/s at batch 8 / 32 against
  70 / 202 for the climbing rows only (Mistral, threshold 0.5, CRF 1.49); on a CPU a block costs per row.
- The oracle bound (`oracle_exits`, no heads): each step first looks ahead through every block on every row, with
  the cache put back, and each row then exits at its earliest oracle exit whose emitted token is the full depth's
  (`_Step.oracle_exits`), as batch 1's `ExitDecoder._oracle_exit` decides it one row at a time.
- A row that finishes (EOS, stop string, max tokens) leaves the batch: its cache, head-state and position rows
  are dropped, so it costs nothing further.
Per row the result is a `DecodeResult` with the meaning batch 1 gives it (token ids, exit layers, stop reason, one
cost per decode step at that row's own context length); decode_seconds is the row's latency (decode start to its
last token) and `batch_decode_seconds` the whole batch's, which is what throughput divides by.

Hand-written because transformers' `generate` has no per-layer hook, and no early-exit library we know of decodes
a batch with a separate exit decision per row.
"""
from __future__ import annotations

import copy
import time
from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .accounting import crf_exact, crf_paper
from .core import DecodeResult, DecoderCore, restore_cache, snapshot_cache
from .kv_cache import new_cache
from .pruning import prune_blocks


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


class _Batch:
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
def prefill_batch(decoder: DecoderCore, batch: _Batch, cache: DynamicCache, states: dict) -> torch.Tensor:
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


class _Step:
    """One decode step of a batch: blocks on the rows still climbing, exits per row, K/V merges (Mistral)."""

    def __init__(self, decoder: DecoderCore, cache: DynamicCache, batch: _Batch, climbing_only: bool = True):
        self.d, self.cache, self.p, self.climbing_only = decoder, cache, decoder.parts, climbing_only
        self.b = len(batch.rows)
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # Mistral: block -> this position's K, V (B,...)

    def write(self, rows: torch.Tensor):
        """The policy's writer for `rows`: K, V (R, kv_heads, 1, head_dim) into block j's pending append."""
        def write(j: int, k: torch.Tensor, v: torch.Tensor) -> None:
            if j not in self.pending:
                self.pending[j] = (k.new_empty(self.b, *k.shape[1:]), v.new_empty(self.b, *v.shape[1:]))
            self.pending[j][0][rows], self.pending[j][1][rows] = k, v
        return write

    def commit(self, j: int) -> None:
        """Append block j's merged K, V for this position (every row: the policy's or the block's)."""
        k, v = self.pending.pop(j)  # (B, kv_heads, 1, head_dim) each
        self.cache.update(k, v, j)

    def run_rows(self, j: int, h: torch.Tensor, rows: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Block j on the rows `rows` (R,) only, h: (R, 1, D); their cache rows gathered, written back merged."""
        layer = self.cache.layers[j]
        block = self.p.layers[j]
        if self.p.is_attention:
            keys, values = layer.keys, layer.values  # (B, kv_heads, L, head_dim)
            layer.keys, layer.values = keys[rows], values[rows]  # (R, kv_heads, L, head_dim): the block appends to these
            try:
                cos, sin = kwargs["position_embeddings"]
                mask = kwargs["attention_mask"]
                out = block(h, cache=self.cache, use_cache=True, position_ids=kwargs["position_ids"][rows],
                            position_embeddings=(cos[rows], sin[rows]),
                            attention_mask=None if mask is None else mask[rows])  # (R, 1, D)
                self.write(rows)(j, layer.keys[:, :, -1:], layer.values[:, :, -1:])
            finally:
                layer.keys, layer.values = keys, values
            self.commit(j)
            return out
        conv, ssm = layer.conv_states[0], layer.recurrent_states[0]  # (B, conv_dim, K), (B, H, P, N)
        layer.conv_states[0], layer.recurrent_states[0] = conv[rows], ssm[rows]  # advanced in place by the block
        try:
            out = block(h, cache=self.cache)  # (R, 1, D)
            conv.index_copy_(0, rows, layer.conv_states[0])
            ssm.index_copy_(0, rows, layer.recurrent_states[0])
        finally:
            layer.conv_states[0], layer.recurrent_states[0] = conv, ssm
        return out

    def run_all_rows(self, j: int, h: torch.Tensor, done: list[int], kwargs: dict) -> torch.Tensor:
        """Block j on every row, h: (B, 1, D); the rows `done`, which exited before block j, then get back their
        hidden state and their state for this position (the policy's K, V; the SSM state the policy left)."""
        layer = self.cache.layers[j]
        exited = torch.zeros(self.b, dtype=torch.bool, device=h.device)
        exited[done] = True
        done = torch.tensor(done, device=h.device)  # (E,)
        if self.p.is_attention:
            out = self.p.layers[j](h, **kwargs)  # (B, 1, D); appends every row's K, V
            k, v = self.pending.pop(j)  # (B, kv_heads, 1, head_dim): the exited rows' rows are the policy's
            layer.keys[done, :, -1:], layer.values[done, :, -1:] = k[done], v[done]
        else:
            conv, ssm = layer.conv_states[0][done], layer.recurrent_states[0][done]  # what the policy left
            out = self.p.layers[j](h, **kwargs)  # (B, 1, D); advances every row's state in place
            layer.conv_states[0].index_copy_(0, done, conv)
            layer.recurrent_states[0].index_copy_(0, done, ssm)
        return torch.where(exited[:, None, None], h, out)  # (B, 1, D)

    @torch.no_grad()
    def oracle_exits(self, h: torch.Tensor, kwargs: dict) -> list[int | None]:
        """Each row's oracle exit (the batched `ExitDecoder._oracle_exit`): every kept block on every row from the
        embedding h (B, 1, D), then the cache put back; per row the earliest oracle exit whose emitted token equals
        the full depth's top-1 (None: no exit agrees)."""
        d, p = self.d, self.p
        saved = snapshot_cache(self.cache)
        emitted = {}  # exit block -> (B,) the token an exit there emits
        for i in d.kept:
            h = p.layers[i](h, **kwargs)  # (B, 1, D)
            if i not in d.oracle_exits:
                continue
            if d.tail:
                emitted[i] = d.logits(d.translate(h, i)).argmax(-1)  # (B,)
            else:
                # last_block: the last block on h_i. The policy's fill of the blocks between is left out: the last
                # block reads only its own cache, so the token does not depend on it (batch 1 runs it, to the same
                # top-1; tests/test_batch.py).
                last = snapshot_cache(self.cache, [d.kept[-1]])  # only the last block's state changes
                emitted[i] = d.logits(p.layers[d.kept[-1]](h, **kwargs)).argmax(-1)  # (B,)
                restore_cache(self.cache, last)
        full = d.logits(h).argmax(-1)  # (B,)
        restore_cache(self.cache, saved)
        agree = {i: (emitted[i] == full).tolist() for i in d.oracle_exits}  # one host read per exit
        return [next((i for i in d.oracle_exits if agree[i][r]), None) for r in range(self.b)]

    @torch.no_grad()
    def __call__(self, tok: torch.Tensor, position_ids: torch.Tensor, states: dict,
                 attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, list[int], list[list[int]], list[int]]:
        """Tokens `tok` (B,) at `position_ids` (B, 1): fp32 logits (B, V), each row's exit block, head MACs and
        translations run (see `ExitDecoder.step`)."""
        d, p, b = self.d, self.p, self.b
        h = p.embed(tok[:, None])  # (B, 1, D)
        kwargs: dict = {"cache": self.cache}
        pos_emb = None
        if p.is_attention:
            pos_emb = p.rotary_emb(h, position_ids=position_ids)  # cos, sin: (B, 1, head_dim)
            mask = d._mask_fn(config=d.model.config, inputs_embeds=h, attention_mask=attention_mask, cache=self.cache,
                              position_ids=position_ids)  # (B, 1, 1, L+1) or None
            kwargs.update(attention_mask=mask, position_ids=position_ids, use_cache=True, position_embeddings=pos_emb)
        exit_layers = [p.n_layers - 1] * b
        head_macs: list[list[int]] = [[] for _ in range(b)]
        translations = [0] * b
        climbing = None  # (R,) rows still climbing; None: every row
        climbing_rows: list[int] = list(range(b))  # the same on the host: no device sync to read it
        body = d.kept[:-1]
        oracle = self.oracle_exits(h, kwargs) if d.oracle_exits else None  # per row: its exit block, or None
        # under lens / translator the last block is one more block an exited row skips; under last_block it runs
        # on every row after the loop
        for idx, i in enumerate(body + d.tail):
            h_in = h  # (B, 1, D): block i's input (each branch below makes a new tensor)
            if climbing is None:
                h = p.layers[i](h, **kwargs)  # (B, 1, D)
            elif not climbing_rows:  # no row reaches this block: it does not run
                if i in self.pending:
                    self.commit(i)
                continue
            elif self.climbing_only:
                h = h.index_copy(0, climbing, self.run_rows(i, h[climbing], climbing, kwargs))  # (B, 1, D)
            else:
                h = self.run_all_rows(i, h, sorted(set(range(b)) - set(climbing_rows)), kwargs)  # (B, 1, D)
            head = d.heads.get(i)
            reached = climbing_rows
            emitted = None  # (R, 1, D): translate(h_r, i) once computed
            if oracle is not None:
                if i not in d.oracle_exits:
                    continue
                flags = [oracle[r] == i for r in reached]
            elif head is None:
                continue
            else:
                h_r = h if climbing is None else h[climbing]  # (R, 1, D)
                if d.reads_emission(head):
                    emitted = d.translate(h_r, i)  # (R, 1, D)
                z = p.final_norm(h_r if emitted is None else emitted)[:, 0].to(d.dtype)  # (R, D)
                z_in = (p.final_norm(h_in if climbing is None else h_in[climbing])[:, 0].to(d.dtype)
                        if head.reads_block_input else None)  # (R, D)
                exit_logits, states[i] = head.step_rows(z, states[i], climbing, z_in)  # (R, 2)
                exits = exit_logits.float().softmax(-1)[:, 1] >= d.threshold  # (R,)
                for r in reached:
                    head_macs[r].append(d.head_macs[i])
                    translations[r] += emitted is not None
                flags = exits.tolist()  # the one host sync per exit layer
            if not any(flags):
                continue
            rows = torch.tensor([r for r, e in zip(reached, flags) if e], device=h.device)  # (E,) exiting rows
            for r in rows.tolist():
                exit_layers[r] = i
            d._fill(p.layers, self.cache, h[rows], i, body[idx + 1:] + d.tail,
                    None if pos_emb is None else (pos_emb[0][rows], pos_emb[1][rows]), rows=rows,
                    write=self.write(rows))
            if d.tail:  # lens / translator: the exited rows' h becomes what the final norm reads
                if emitted is None:
                    h = h.index_copy(0, rows, d.translate(h[rows], i))  # (B, 1, D)
                    for r in rows.tolist():
                        translations[r] += d.emission == "translator"
                else:
                    picked = torch.tensor([k for k, e in enumerate(flags) if e], device=h.device)  # (E,) of R
                    h = h.index_copy(0, rows, emitted[picked])  # (B, 1, D)
            climbing_rows = [r for r, e in zip(reached, flags) if not e]
            climbing = torch.tensor(climbing_rows, dtype=torch.long, device=h.device)
        for j in sorted(self.pending):  # blocks no row reached after the last exit
            self.commit(j)
        if not d.tail:
            h = p.layers[d.kept[-1]](h, **kwargs)  # (B, 1, D): under last_block the last block runs on every row
        logits = d.logits(h)  # (B, V)
        return logits, exit_layers, head_macs, translations


@torch.no_grad()
def generate_batch_thresholds(decoder: DecoderCore, prompts: Sequence[Sequence[int]], thresholds: Sequence[float],
                              max_new_tokens: int = 64, stop_strings: list[str] | None = None, tokenizer=None,
                              eos_token_id=None, climbing_only: bool | None = None) -> list[list[DecodeResult]]:
    """Greedy-decode every prompt (a list of token-id lists, any lengths) together at each of `thresholds`, from one
    prefill: result i holds one `DecodeResult` per prompt, equal to what `decoder.generate` gives that prompt alone
    with the decoder's threshold set to thresholds[i] (see the module docstring for `climbing_only`; None: True on a
    CPU, False on a GPU).

    The prompt runs at full depth whatever the threshold, so a grid over thresholds needs its prefill once: each
    threshold decodes from its own copy of the prefilled cache and head states (transformers' documented way to
    reuse a prompt cache, `copy.deepcopy`). On the embedded grid prefill was 68% of evaluation time (4,994 of
    7,369 s, long few-shot prompts and short answers). Every result reports the one shared prefill's seconds.
    """
    prompts = validate_prompts(decoder, prompts, max_new_tokens)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    if len(thresholds) > 1 and (not decoder.exits_enabled or decoder.oracle_exits
                                or not all(0 <= t <= 1 for t in thresholds)):
        raise ValueError("several thresholds need a decoder with exit heads and thresholds in [0, 1] "
                         f"(got {thresholds}, exits {'on' if decoder.exits_enabled else 'off'})")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    batch = _Batch(decoder, prompts, max_new_tokens)
    device = batch.device
    if climbing_only is None:
        climbing_only = device.type == "cpu"
    decoder._sync(device)
    start = time.perf_counter()
    if batch.padded and device.type == "cpu":
        logits, cache, states = prefill_rows(decoder, prompts, batch.width)  # (B, V)
    else:
        cache = new_cache(decoder.model.config)
        states = {layer: head.init_state(len(prompts), device, decoder.dtype) for layer, head in decoder.heads.items()}
        logits = prefill_batch(decoder, batch, cache, states)  # (B, V)
    decoder._sync(device)
    prefill_seconds = time.perf_counter() - start

    results, own_threshold = [], decoder.threshold
    try:
        for k, threshold in enumerate(thresholds):
            decoder.threshold = threshold
            last = k == len(thresholds) - 1  # the last threshold may consume the prefilled state itself
            results.append(_decode(decoder, batch if k == 0 else _Batch(decoder, prompts, max_new_tokens),
                                   cache if last else copy.deepcopy(cache), states if last else copy.deepcopy(states),
                                   logits, max_new_tokens, stop_strings, tokenizer, eos_token_id, climbing_only,
                                   prefill_seconds))
    finally:
        decoder.threshold = own_threshold
    return results


def _decode(decoder: DecoderCore, batch: _Batch, cache: DynamicCache, states: dict, logits: torch.Tensor,
            max_new_tokens: int, stop_strings, tokenizer, eos_token_id, climbing_only: bool,
            prefill_seconds: float) -> list[DecodeResult]:
    """Decode a prefilled batch (`logits` (B, V): the prefill's last position) at the decoder's threshold; consumes
    `batch`, `cache` and `states`."""
    p = decoder.parts
    eos = decoder._eos_ids(eos_token_id)
    last = p.n_layers - 1
    n = len(batch.rows)
    device = batch.device
    token_ids: list[list[int]] = [[] for _ in range(n)]
    exit_layers: list[list[int]] = [[] for _ in range(n)]
    costs: list[list] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    latency = [0.0] * n
    tok = decoder._next_token(logits, None if batch.seq is None else batch.seq[:, :batch.width])  # (B,)
    for r, t in enumerate(tok.tolist()):
        token_ids[r].append(t)
        exit_layers[r].append(last)

    start = time.perf_counter()
    step_no = 0  # tokens generated so far by every row still decoding, minus one
    while True:
        keep = []
        for i, row in enumerate(batch.rows):
            reasons[row] = decoder._stop_reason(token_ids[row], eos, stop_strings, tokenizer)
            if reasons[row] is None and len(token_ids[row]) >= max_new_tokens:
                reasons[row] = "max_new_tokens"
            if reasons[row] is None:
                keep.append(i)
            else:
                latency[row] = time.perf_counter() - start
        if not keep:
            break
        if len(keep) < len(batch.rows):  # finished rows leave the batch
            tok = tok[batch.keep(keep, cache, states, decoder.heads)]
        pos_in_seq = batch.width + step_no  # column of `tok` in the padded sequence
        if batch.seq is not None:
            batch.seq[:, pos_in_seq] = tok
        if batch.mask is not None:
            batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch.rows), 1)], dim=-1)  # (B, L+1)
        logits, exits, macs, translations = _Step(decoder, cache, batch, climbing_only)(tok, batch.positions, states,
                                                                                         batch.mask)
        tok = decoder._next_token(logits, None if batch.seq is None else batch.seq[:, :pos_in_seq + 1])  # (B,)
        positions = batch.positions[:, 0].tolist()  # one host read per step, not one per row
        for i, (row, t) in enumerate(zip(batch.rows, tok.tolist())):
            token_ids[row].append(t)
            exit_layers[row].append(exits[i])
            pos = positions[i]  # the position this step read; it attended to pos + 1 positions
            costs[row].append(decoder.token_cost(exits[i], pos + 1, macs[i], translations[i]))
        batch.positions = batch.positions + 1
        step_no += 1
    decoder._sync(device)
    decode_seconds = time.perf_counter() - start
    return [DecodeResult(token_ids[r], exit_layers[r], reasons[r], costs[r], crf_exact(costs[r]), crf_paper(costs[r]),
                         latency[r], prefill_seconds, None, batch_size=n, batch_decode_seconds=decode_seconds)
            for r in range(n)]
