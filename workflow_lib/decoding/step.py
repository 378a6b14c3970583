"""The one per-token step of the decoder: a batch of rows, each exiting on its own decision (docs/policies.md).

This is the one place that knows how a token exits: `Step.__call__` runs one token of every row block by block; at an
exit layer each row still climbing compares its head's p_exit with the threshold (or, for the oracle bound, exits at
its earliest exit whose emitted token is the full model's); a row that exits keeps its exit hidden state, the policy
fills its skipped blocks for that row alone (`rows=`), and the emission rule (decoding/core.py) gives its token.
Batch size 1 is a batch of one row.
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
  (`Step.oracle_exits`).

Hand-written because transformers' `generate` has no per-layer hook, and no early-exit library we know of decodes
a batch with a separate exit decision per row.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

from .core import DecoderCore, restore_cache, snapshot_cache


def run_mamba_rows(cache: DynamicCache, block, j: int, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mamba-2 block j on the rows `rows` (R,) only, h: (R, T, D) (one position, or a chunk continuing the state):
    their conv and SSM states gathered, advanced by the block, scattered back."""
    layer = cache.layers[j]
    conv, ssm = layer.conv_states[0], layer.recurrent_states[0]  # (B, conv_dim, K), (B, H, P, N)
    layer.conv_states[0], layer.recurrent_states[0] = conv[rows], ssm[rows]  # advanced in place by the block
    try:
        out = block(h, cache=cache)  # (R, T, D)
        conv.index_copy_(0, rows, layer.conv_states[0])
        ssm.index_copy_(0, rows, layer.recurrent_states[0])
    finally:
        layer.conv_states[0], layer.recurrent_states[0] = conv, ssm
    return out


class Step:
    """One decode step of a batch: blocks on the rows still climbing, exits per row, K/V merges (Mistral).

    `draft=True` is the speculative mode's drafting step (decoding/speculative.py): a row that has not exited by the
    deepest exit layer (or its `ceiling`) stops there (the verification pass runs the rest), only the rows that exit
    emit (through the draft vocabulary, `DecoderCore.draft_tokens`), rows outside `active` run nothing, and each exit
    layer's hidden states are kept in `hidden` for the verification pass. Every block still appends one position for
    every row (zeros where a row ran nothing: a hole the attention mask hides), so the cache stays one dense tensor per
    block.
    """

    def __init__(self, decoder: DecoderCore, cache: DynamicCache, rows: int, threshold: float,
                 climbing_only: bool = True, draft: bool = False, ceiling: list[int] | None = None):
        # a draft gathers the rows that run (its inactive rows would need a state put back otherwise)
        self.d, self.cache, self.p, self.climbing_only = decoder, cache, decoder.parts, climbing_only or draft
        self.b, self.threshold, self.draft = rows, threshold, draft
        # draft: per row the block it climbs no higher than (default the deepest exit); under draft_climb
        # "shallowest" an exited row's skipped blocks stay holes, as no drafting token reads them before the
        # verification
        self.ceiling = ceiling
        self.fills = not (draft and decoder.draft_climb == "shallowest")
        self.pending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # Mistral: block -> this position's K, V (B,...)
        self.hidden: dict[int, torch.Tensor] = {}  # draft: exit layer -> every row's h after that block, (B, 1, D)

    def write(self, rows: torch.Tensor):
        """The policy's writer for `rows`: K, V (R, kv_heads, 1, head_dim) into block j's pending append."""
        def write(j: int, k: torch.Tensor, v: torch.Tensor) -> None:
            if j not in self.pending:  # zeros: a row nobody writes (a draft's hole) stays finite under the mask
                self.pending[j] = (k.new_zeros(self.b, *k.shape[1:]), v.new_zeros(self.b, *v.shape[1:]))
            self.pending[j][0][rows], self.pending[j][1][rows] = k, v
        return write

    def commit(self, j: int) -> None:
        """Append block j's merged K, V for this position (every row: the policy's or the block's)."""
        k, v = self.pending.pop(j)  # (B, kv_heads, 1, head_dim) each
        self.cache.update(k, v, j)

    def hole(self, j: int) -> None:
        """Draft: append block j's position with nothing computed for any row (attention; zeros, masked later)."""
        if self.p.is_attention:
            keys = self.cache.layers[j].keys  # (B, kv_heads, L, head_dim)
            self.cache.update(keys.new_zeros(self.b, keys.shape[1], 1, keys.shape[3]),
                              keys.new_zeros(self.b, keys.shape[1], 1, keys.shape[3]), j)

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
        return run_mamba_rows(self.cache, block, j, h, rows)

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
        """Each row's oracle exit: every kept block on every row from the embedding h (B, 1, D), then the cache put
        back; per row the earliest oracle exit whose emitted token equals the full depth's top-1 (None: no exit
        agrees)."""
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
                # block reads only its own cache, so the token does not depend on it (the reference decoder in tests/
                # runs it, to the same top-1; tests/test_batch.py).
                last = snapshot_cache(self.cache, [d.kept[-1]])  # only the last block's state changes
                emitted[i] = d.logits(p.layers[d.kept[-1]](h, **kwargs)).argmax(-1)  # (B,)
                restore_cache(self.cache, last)
        full = d.logits(h).argmax(-1)  # (B,)
        restore_cache(self.cache, saved)
        agree = {i: (emitted[i] == full).tolist() for i in d.oracle_exits}  # one host read per exit
        return [next((i for i in d.oracle_exits if agree[i][r]), None) for r in range(self.b)]

    @torch.no_grad()
    def __call__(self, tok: torch.Tensor, position_ids: torch.Tensor, states: dict,
                 attention_mask: torch.Tensor | None,
                 active: list[int] | None = None) -> tuple[torch.Tensor, list, list[list[int]], list[int]]:
        """Tokens `tok` (B,) at `position_ids` (B, 1): fp32 logits (B, V), each row's exit block, the MACs of the
        heads it evaluated, and how many translations it ran (the `translator` rule: 1 on an exit, or one per evaluated
        exit of a head that reads the emitted distribution).

        Draft (`draft=True`, rows `active`, default all): instead of logits, the drafted token ids (E,) of the rows
        that exited, in row order; a row's exit block is None when it stopped at the deepest exit without exiting (or
        ran nothing, outside `active`)."""
        d, p, b = self.d, self.p, self.b
        h = p.embed(tok[:, None])  # (B, 1, D)
        kwargs: dict = {"cache": self.cache}
        pos_emb = None
        if p.is_attention:
            pos_emb = p.rotary_emb(h, position_ids=position_ids)  # cos, sin: (B, 1, head_dim)
            mask = d.mask_fn(config=d.model.config, inputs_embeds=h, attention_mask=attention_mask, cache=self.cache,
                              position_ids=position_ids)  # (B, 1, 1, L+1) or None
            kwargs.update(attention_mask=mask, position_ids=position_ids, use_cache=True, position_embeddings=pos_emb)
        exit_layers: list = [None if self.draft else p.n_layers - 1] * b
        head_macs: list[list[int]] = [[] for _ in range(b)]
        translations = [0] * b
        climbing = None  # (R,) rows still climbing; None: every row
        climbing_rows: list[int] = list(range(b))  # the same on the host: no device sync to read it
        if active is not None and len(active) < b:  # a draft: the other rows run nothing
            climbing_rows = list(active)
            climbing = torch.tensor(climbing_rows, dtype=torch.long, device=h.device)
        deepest = max(d.heads or d.oracle_exits or [-1])
        top = self.ceiling or [deepest] * b  # draft: row r, still climbing, stops after block top[r]
        body = d.kept[:-1]
        oracle = self.oracle_exits(h, kwargs) if d.oracle_exits else None  # per row: its exit block, or None
        # under lens / translator the last block is one more block an exited row skips; under last_block it runs
        # on every row after the loop
        for idx, i in enumerate(body + d.tail):
            if self.draft and climbing_rows and i > min(top[r] for r in climbing_rows):  # a draft climbs no
                # higher: the verification runs the rest
                climbing_rows = [r for r in climbing_rows if i <= top[r]]
                climbing = torch.tensor(climbing_rows, dtype=torch.long, device=h.device)
            h_in = h  # (B, 1, D): block i's input (each branch below makes a new tensor)
            if climbing is None:
                h = p.layers[i](h, **kwargs)  # (B, 1, D)
            elif not climbing_rows:  # no row reaches this block: it does not run
                if i in self.pending:
                    self.commit(i)
                elif self.draft:
                    self.hole(i)
                continue
            elif self.climbing_only:
                h = h.index_copy(0, climbing, self.run_rows(i, h[climbing], climbing, kwargs))  # (B, 1, D)
            else:
                h = self.run_all_rows(i, h, sorted(set(range(b)) - set(climbing_rows)), kwargs)  # (B, 1, D)
            head = d.heads.get(i)
            reached = climbing_rows
            if self.draft and (head is not None or i in d.oracle_exits):
                self.hidden[i] = h  # (B, 1, D): the verification pass starts from some exit's block
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
                exits = exit_logits.float().softmax(-1)[:, 1] >= self.threshold  # (R,)
                for r in reached:
                    head_macs[r].append(d.head_macs[i])
                    translations[r] += emitted is not None
                flags = exits.tolist()  # the one host sync per exit layer
            if not any(flags):
                continue
            rows = torch.tensor([r for r, e in zip(reached, flags) if e], device=h.device)  # (E,) exiting rows
            for r in rows.tolist():
                exit_layers[r] = i
            if self.fills:
                d.fill(p.layers, self.cache, h[rows], i, body[idx + 1:] + d.tail,
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
        if self.draft:
            return self.emit_drafts(h, exit_layers, kwargs), exit_layers, head_macs, translations
        if not d.tail:
            h = p.layers[d.kept[-1]](h, **kwargs)  # (B, 1, D): under last_block the last block runs on every row
        logits = d.logits(h)  # (B, V)
        return logits, exit_layers, head_macs, translations

    def emit_drafts(self, h: torch.Tensor, exit_layers: list, kwargs: dict) -> torch.Tensor:
        """Draft: the tokens of the rows that exited (E,), from h (B, 1, D) (under last_block through the last block,
        run on those rows only); the last block's position appended for every row."""
        d, last = self.d, self.d.kept[-1]
        exited = [r for r, e in enumerate(exit_layers) if e is not None]
        rows = torch.tensor(exited, dtype=torch.long, device=h.device)  # (E,)
        if not d.tail:  # last_block
            if exited:
                h = h.index_copy(0, rows, self.run_rows(last, h[rows], rows, kwargs))  # (B, 1, D)
            else:
                self.hole(last)
        return d.draft_tokens(h[rows])  # (E,)
