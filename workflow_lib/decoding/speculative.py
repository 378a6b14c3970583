"""Lossless early exit: the exits draft, the full model verifies (self-speculative decoding, docs/speculative.md).

A row's cycle: the token it reads runs the drafting step (`step.Step`, draft=True). If a head exits, the exit emits a
draft token (its emission rule, through the draft vocabulary when there is one), which the row reads next; the policy
fills the skipped blocks as always, so that the next drafts can attend to this position. Drafting stops at a token that
does not exit by the deepest exit layer, or once `max_draft` tokens are drafted. Under `draft_climb="shallowest"` a
token after the cycle's first climbs no higher than the shallowest block the cycle's tokens stopped at, and nothing is
filled: above that block the verification recomputes every position anyway. One verification pass then runs the full
model over the cycle's positions from block m+1, m the shallowest exit of the cycle: up to block m every position ran
the full model's own computation (on the full model's states), so the drafts' cache entries and hidden states there are
reused, as LayerSkip shares its cache; above m the cycle's entries are recomputed. The full model's greedy token at each
position is compared with the draft there: the longest agreeing prefix is kept, then the full model's token at the first
disagreement (or, when the cycle ended on a token that did not exit, the full model's token after it). The cache rolls
back to the last kept position: attention K/V cropped (in a batch, a row's rejected positions masked), Mamba-2 conv and
SSM states restored to the cycle's start and the kept positions re-run. Every token is the full model's greedy token:
the output equals exits-off greedy decoding.

A batch decodes its cycles in lock step: each drafting round runs the rows still drafting (the others append a hole
that the attention mask hides); the verification is one pass over every row's positions (Mamba-2: one pass per
group of rows of equal cycle length, since a recurrent state cannot skip a padded position).

Costs (accounting.py): each cycle's MACs (drafts, the stopped token's climb, the verification, a Mamba-2 rollback)
are shared equally by the tokens it keeps; a verification of r positions reads the weights once but costs r
positions of MACs, so the MAC-based CRF can fall below 1 while the measured time speeds up (`speculation` in each
result says which work went where).

Hand-written: transformers' assisted generation (`assistant_early_exit`) drafts with the first k layers of the same
model but re-runs every layer of every drafted position at verification and cannot roll back a Mamba-2 state.
"""
from __future__ import annotations

import time
from collections import Counter

import torch
from transformers import DynamicCache

from .accounting import TokenCost, crf_exact, crf_paper
from .core import DecodeResult, DecoderCore, snapshot_cache
from .step import Step, run_mamba_rows


def _cycle_costs(decoder: DecoderCore, spent: int, blocks: float, contexts: list[int]) -> list[TokenCost]:
    """One TokenCost per kept token (attending to `contexts`): the cycle's MACs and paper blocks shared equally."""
    cm, n = decoder.cost_model, len(contexts)
    return [TokenCost(macs_spent=spent // n + (spent % n if i == n - 1 else 0), macs_full=cm.full_token_macs(c),
                      blocks_spent_paper=blocks / n, blocks_full_paper=float(cm.n_layers))
            for i, c in enumerate(contexts)]


def _verify(decoder: DecoderCore, cache: DynamicCache, start: int, hidden: torch.Tensor, positions: torch.Tensor,
            mask: torch.Tensor | None, lengths: list[int], saved: list | None) -> torch.Tensor:
    """The full model from block `start` on the cycle's positions: hidden (B, K, D) the states entering block
    `start` (block start-1's outputs), positions (B, K), lengths[r] the row's positions (the rest are holes).
    Returns fp32 logits (B, K, V). Attention: blocks from `start` are cropped to the cycle's start and recomputed;
    Mamba-2: their states restored to the cycle's start (`saved`) and advanced over each row's positions."""
    p = decoder.parts
    blocks = [j for j in decoder.kept if j >= start]
    b, k = hidden.shape[:2]
    if p.is_attention:
        first = cache.layers[0].keys.shape[-2] - k  # the cycle's first slot
        for j in blocks:
            _truncate(cache.layers[j], first)
        pos_emb = p.rotary_emb(hidden, position_ids=positions)  # cos, sin: (B, K, head_dim)
        attn = decoder.mask_fn(config=decoder.model.config, inputs_embeds=hidden, attention_mask=mask, cache=cache,
                               position_ids=positions, layer_idx=blocks[0])  # sized on a cropped block
        h = hidden
        for j in blocks:
            h = p.layers[j](h, attention_mask=attn, position_ids=positions, use_cache=True, cache=cache,
                            position_embeddings=pos_emb)  # (B, K, D)
        return decoder.logits_all(h)  # (B, K, V)
    out = torch.zeros_like(hidden)  # (B, K, D)
    restore = {j: (conv, ssm) for j, conv, ssm in saved if j in blocks}
    for length, rows in _groups(lengths).items():
        idx = torch.tensor(rows, device=hidden.device)  # (R,)
        for j in blocks:  # these rows' states of the recomputed blocks back to the cycle's start
            layer = cache.layers[j]
            layer.conv_states[0].index_copy_(0, idx, restore[j][0][idx])
            layer.recurrent_states[0].index_copy_(0, idx, restore[j][1][idx])
        h = hidden[idx, :length]  # (R, P, D)
        for j in blocks:
            h = run_mamba_rows(cache, p.layers[j], j, h, idx)  # (R, P, D)
        out[idx, :length] = h
    return decoder.logits_all(out)  # (B, K, V)


def _truncate(layer, length: int) -> None:
    """An attention cache layer's first `length` positions (prefix views: kv_cache.GrowingLayer writes on past them)."""
    layer.keys, layer.values = layer.keys[..., :length, :], layer.values[..., :length, :]


def _groups(lengths: list[int]) -> dict[int, list[int]]:
    """Rows by their number of positions (rows with none left out)."""
    groups: dict[int, list[int]] = {}
    for r, n in enumerate(lengths):
        if n:
            groups.setdefault(n, []).append(r)
    return groups


def _rerun_mamba(decoder: DecoderCore, cache: DynamicCache, saved: list, tokens: dict[int, list[int]]) -> None:
    """Mamba-2 rollback: rows r (keys of `tokens`) back to their states at the cycle's start, then every block on
    the tokens they keep (one chunk per group of rows keeping as many)."""
    p = decoder.parts
    device = p.lm_head.weight.device
    for length, rows in _groups([len(tokens.get(r, [])) for r in range(max(tokens) + 1)]).items():
        idx = torch.tensor(rows, device=device)  # (R,)
        for j, conv, ssm in saved:
            cache.layers[j].conv_states[0].index_copy_(0, idx, conv[idx])
            cache.layers[j].recurrent_states[0].index_copy_(0, idx, ssm[idx])
        h = p.embed(torch.tensor([tokens[r] for r in rows], device=device))  # (R, T, D)
        for j in decoder.kept:
            h = run_mamba_rows(cache, p.layers[j], j, h, idx)  # (R, T, D)


def decode(decoder: DecoderCore, batch, cache: DynamicCache, states: dict, logits: torch.Tensor, threshold: float,
           max_new_tokens: int, stop_strings, tokenizer, eos_token_id, prefill_seconds: float) -> list[DecodeResult]:
    """Decode a prefilled batch (`batch`: decoder.Rows; `logits` (B, V): the prefill's last position) in cycles of
    drafts and one verification; consumes `batch`, `cache` and `states`."""
    p, cm = decoder.parts, decoder.cost_model
    eos = decoder.eos_ids(eos_token_id)
    last = p.n_layers - 1
    n = len(batch.rows)
    device = batch.device
    deepest = max(decoder.heads or decoder.oracle_exits)
    lm_draft = decoder.model.config.hidden_size * (decoder.draft_head.shape[0] if decoder.draft_head is not None
                                                   else decoder.model.config.vocab_size)  # a draft's emission
    token_ids = [[t] for t in decoder.next_token(logits, None).tolist()]
    exit_layers = [[last] for _ in range(n)]
    costs: list[list[TokenCost]] = [[] for _ in range(n)]
    stats = [Counter() for _ in range(n)]
    reasons: list[str | None] = [None] * n
    latency = [0.0] * n
    tok = torch.tensor([t[0] for t in token_ids], device=device)  # (B,) the token each row reads next
    if batch.mask is None and n > 1:  # rejected positions become holes in a batch: a mask from now on (K/V slots)
        batch.mask = torch.ones(n, batch.width, dtype=torch.long, device=device)

    start = time.perf_counter()
    while True:
        keep = []
        for i, row in enumerate(batch.rows):
            if reasons[row] is None:  # after the prefill's token; a cycle sets it for the tokens it keeps
                reasons[row] = decoder.stop_reason(token_ids[row], eos, stop_strings, tokenizer)
            if reasons[row] is None and len(token_ids[row]) >= max_new_tokens:
                reasons[row] = "max_new_tokens"
            if reasons[row] is None:
                keep.append(i)
            elif not latency[row]:
                latency[row] = time.perf_counter() - start
        if not keep:
            break
        if len(keep) < len(batch.rows):  # finished rows leave the batch
            tok = tok[batch.keep(keep, cache, states, decoder.heads)]
        b = len(batch.rows)
        saved = None if p.is_attention else snapshot_cache(cache)  # the cycle's start, for the Mamba-2 rollback
        # ---- drafting rounds ----
        drafts: list[list[int]] = [[] for _ in range(b)]
        exits: list[list[int]] = [[] for _ in range(b)]  # per position: the block its hidden state is exact to
        spent = [0] * b  # MACs per row: drafts and climbs, then the verification and any rollback
        blocks = [0.0] * b  # the paper's block count, likewise
        draft_macs: list[list[int]] = [[] for _ in range(b)]  # per position: what its drafting step cost
        read: list[torch.Tensor] = []  # per round: the token each row read (B,)
        hidden: list[dict[int, torch.Tensor]] = []  # per round: exit layer -> (B, 1, D)
        lengths = [0] * b  # positions in the cycle per row
        active = list(range(b))
        cur = tok
        ceiling = [deepest] * b  # per row: how high its next token climbs (draft_climb)
        for t in range(decoder.max_draft + 1):
            if not active:
                break
            if batch.mask is not None:  # this round's slot: real for the active rows, a hole for the others
                column = torch.zeros(b, 1, dtype=batch.mask.dtype, device=device)
                column[active] = 1
                batch.mask = torch.cat([batch.mask, column], dim=-1)  # (B, L+1)
            step = Step(decoder, cache, b, threshold, draft=True, ceiling=ceiling)
            drafted, round_exits, head_macs, translations = step(cur, batch.positions + t, states, batch.mask,
                                                                 active=active)
            read.append(cur)
            hidden.append(step.hidden)
            drafted = drafted.tolist()
            nxt = cur.clone()
            still = []
            for r in active:
                context = int(batch.positions[r]) + t + 1
                lengths[r] += 1
                e = round_exits[r]
                if e is None:  # stopped at its ceiling: the verification takes it from there
                    macs = cm.climb_macs(ceiling[r] + 1, context, head_macs[r], translations[r])
                    exits[r].append(ceiling[r])
                    blocks[r] += ceiling[r] + 1
                else:
                    if step.fills:  # the exit's cost with the policy's fill, the draft's emission for the LM head
                        cost = decoder.token_cost(e, context, head_macs[r], translations[r])
                        macs = cost.macs_spent - cm.lm_head_macs + lm_draft
                        blocks[r] += cost.blocks_spent_paper
                    else:  # its blocks (and the last one under last_block), no fill
                        ran = e + 1 + (decoder.emission == "last_block")
                        macs = cm.climb_macs(ran, context, head_macs[r], translations[r]) + lm_draft
                        blocks[r] += ran
                    exits[r].append(e)
                    drafts[r].append(drafted.pop(0))
                    nxt[r] = drafts[r][-1]
                    if len(drafts[r]) < decoder.max_draft:
                        still.append(r)
                spent[r] += macs
                draft_macs[r].append(macs)
                if decoder.draft_climb == "shallowest":  # above its shallowest block the verification redoes all
                    ceiling[r] = min(ceiling[r], exits[r][-1])
            active, cur = still, nxt
        # ---- verification ----
        k = len(read)
        m = min(min(e) for e in exits if e)  # the shallowest exact block over the cycle
        start_block = next(j for j in decoder.kept if j > m)
        h_m = torch.stack([hidden[t][m][:, 0] for t in range(k)], dim=1)  # (B, K, D)
        h_m = h_m * torch.tensor([[t < lengths[r] for t in range(k)] for r in range(b)], dtype=h_m.dtype,
                                 device=device)[:, :, None]  # holes read zeros
        positions = batch.positions + torch.arange(k, device=device)  # (B, K)
        full = _verify(decoder, cache, start_block, h_m, positions, batch.mask, lengths, saved).argmax(-1).tolist()
        # ---- acceptance, stopping, rollback ----
        kept_slots = [0] * b
        rerun: dict[int, list[int]] = {}
        reads = torch.stack(read, dim=1).tolist()  # (B, K)
        for r, row in enumerate(batch.rows):
            y, d = full[r][:lengths[r]], drafts[r]
            a = next((i for i in range(len(d)) if d[i] != y[i]), len(d))
            kept = d[:a] + ([y[a]] if a < lengths[r] else [])
            layers = exits[r][:a] + ([last] if a < lengths[r] else [])
            contexts = [int(batch.positions[r]) + i + 1 for i in range(len(kept))]
            verify = cm.verify_macs(start_block, [int(batch.positions[r]) + i + 1 for i in range(lengths[r])])
            spent[r] += verify
            blocks[r] += (last + 1 - start_block) * lengths[r]
            if not p.is_attention and len(kept) < lengths[r]:
                rerun[r] = reads[r][:len(kept)]
                rollback = cm.rerun_macs(contexts)
                spent[r] += rollback
                blocks[r] += len(kept) * (last + 1)
                stats[row]["macs_rollback"] += rollback
            for i in range(len(kept)):  # kept tokens one by one: a stop inside the cycle ends the row there
                token_ids[row].append(kept[i])
                exit_layers[row].append(layers[i])
                reasons[row] = decoder.stop_reason(token_ids[row], eos, stop_strings, tokenizer)
                if reasons[row] is None and len(token_ids[row]) >= max_new_tokens:
                    reasons[row] = "max_new_tokens"
                if reasons[row] is not None:
                    kept, layers, contexts = kept[:i + 1], layers[:i + 1], contexts[:i + 1]
                    break
            costs[row].extend(_cycle_costs(decoder, spent[r], blocks[r], contexts))
            kept_slots[r] = len(kept)
            rejected = sum(draft_macs[r][i] + cm.verify_macs(start_block, [int(batch.positions[r]) + i + 1])
                           for i in range(len(kept), lengths[r]))
            stats[row].update(cycles=1, drafted=len(d), accepted=a, kept=len(kept), verified=lengths[r],
                              macs_draft=sum(draft_macs[r]), macs_verify=verify, macs_rejected=rejected)
            tok[r] = kept[-1]
        _roll_back(decoder, cache, batch, kept_slots, k, rerun, saved)
        batch.positions = batch.positions + torch.tensor(kept_slots, device=device)[:, None]
    decoder.sync(device)
    decode_seconds = time.perf_counter() - start
    return [DecodeResult(token_ids[r], exit_layers[r], reasons[r], costs[r], crf_exact(costs[r]), crf_paper(costs[r]),
                         latency[r], prefill_seconds, batch_size=n, batch_decode_seconds=decode_seconds,
                         speculation=dict(stats[r]) or {"cycles": 0})
            for r in range(n)]


def _roll_back(decoder: DecoderCore, cache: DynamicCache, batch, kept: list[int], k: int, rerun: dict[int, list[int]],
               saved: list | None) -> None:
    """Every row's cache back to its last kept position: of the cycle's k slots, row r keeps its first kept[r]."""
    if rerun:
        _rerun_mamba(decoder, cache, saved, rerun)
    if batch.mask is None and not decoder.parts.is_attention:
        return
    slots = cache.layers[0].keys.shape[-2] if batch.mask is None else batch.mask.shape[1]
    keep = slots - k + max(kept)  # the slots no row needs any more are cropped
    if decoder.parts.is_attention:
        for layer in cache.layers:
            _truncate(layer, keep)
    if batch.mask is not None:
        batch.mask = batch.mask[:, :keep].clone()
        for r, n in enumerate(kept):
            batch.mask[r, keep - max(kept) + n:] = 0  # this row's rejected positions: holes
