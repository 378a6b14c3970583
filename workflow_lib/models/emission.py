"""What an exit would emit at every position of a sequence, for each emission rule (models/translators.py).

For a frozen backbone and token sequences (B, T): the logits the decoder emits for the token at position t if it
left at exit layer l while every earlier position ran at full depth. One full-depth pass gives h_l for every exit
and the last block's full-depth input; each rule then maps h_l to logits:

  lens        LM head(final_norm(h_l))
  translator  LM head(final_norm(translate(h_l, l)))
  last_block  LM head(final_norm(last_block(h_l))), where the last block at position t attends to the full-depth
              keys/values of positions < t and to its own K/V computed from h_l[t] (attention backbones), or
              starts from its state after the full-depth inputs up to t-1 (Mamba-2)

These are the labels' intermediate predictions (training/labels.exit_predictions) and the agreement table's;
tests/test_emission.py checks each against the decoder's emitted logits at a forced exit. Given `positions` (a bool
mask (B, T)), the logits are computed at those positions only: on a greedy answer the decode steps are a few dozen of
a prompt's hundreds of tokens, and the LM head over a 49k vocabulary at every position and exit is most of the cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb, repeat_kv

from .backbone import block_owner, parts
from .translators import Translators, check_emission


@dataclass
class ExitStates:
    """One full-depth pass over (B, T) tokens: what every rule's emission is computed from."""

    logits: torch.Tensor  # (B, T, V) the full model's logits (fp32); (P, V) at the `positions` asked for
    hidden: dict[int, torch.Tensor]  # exit layer -> h_l (B, T, D), the output of block l
    last_input: torch.Tensor  # (B, T, D) the last block's input at full depth (the output of block n-2)


@torch.no_grad()
def exit_states(model: nn.Module, input_ids: torch.Tensor, exit_layers: list[int],
                positions: torch.Tensor | None = None) -> ExitStates:
    """Run the model once on input_ids (B, T), capturing the exit blocks' outputs and the last block's input; the
    full model's logits everywhere, or at `positions` (bool (B, T)) only (transformers' logits_to_keep)."""
    p = parts(model)
    keep = sorted(set(exit_layers) | {p.n_layers - 2})
    captured: dict[int, torch.Tensor] = {}
    hooks = [p.layers[i].register_forward_hook(
        lambda _m, _a, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in keep]
    columns = None if positions is None else positions.any(0).nonzero()[:, 0]  # (K,) the positions any row keeps
    try:
        logits = model(input_ids=input_ids, use_cache=False,
                       logits_to_keep=0 if columns is None else columns).logits.float()  # (B, T or K, V)
    finally:
        for hook in hooks:
            hook.remove()
    if positions is not None:
        logits = logits[positions[:, columns]]  # (P, V), in the order of h[positions]
    return ExitStates(logits, {i: captured[i] for i in exit_layers}, captured[p.n_layers - 2])


@torch.no_grad()
def exit_hidden(model: nn.Module, input_ids: torch.Tensor, exit_layers: list[int]) -> dict[int, torch.Tensor]:
    """h_l (B, T, D) for every exit layer, from blocks 0 .. max(exit_layers) only: the model's own forward over its
    first blocks (the rest hidden for the call, as decoding/pruning.prune_blocks does), bit-identical to
    exit_states' h_l. For head training from stored labels, which needs neither the upper blocks nor the logits."""
    owner = block_owner(model)
    full = owner.layers
    captured: dict[int, torch.Tensor] = {}
    hooks = [full[i].register_forward_hook(
        lambda _m, _a, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)) for i in exit_layers]
    owner.layers = nn.ModuleList(full[: max(exit_layers) + 1])
    try:
        owner(input_ids=input_ids, use_cache=False)
    finally:
        owner.layers = full
        for hook in hooks:
            hook.remove()
    return {i: captured[i] for i in exit_layers}


def _head(p, h: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head: h (..., D) -> fp32 logits (..., V)."""
    return p.lm_head(p.final_norm(h).to(p.lm_head.weight.dtype)).float()  # (..., V)


def emitted_logits(model: nn.Module, states: ExitStates, rule: str, translators: Translators | None = None,
                   positions: torch.Tensor | None = None) -> dict[int, torch.Tensor]:
    """Per exit layer, the logits the rule emits (see the module docstring): (B, T, V) at every position, or (P, V) at
    `positions` (bool (B, T)) only, the states from exit_states with the same positions."""
    layers = list(states.hidden)
    check_emission(rule, translators, layers)
    p = parts(model)
    pick = (lambda h: h) if positions is None else (lambda h: h[positions])  # (B, T, D) -> itself or (P, D)
    with torch.no_grad():
        if rule == "lens":
            return {l: _head(p, pick(h)) for l, h in states.hidden.items()}
        if rule == "translator":
            return {l: _head(p, translators(pick(h), l)) for l, h in states.hidden.items()}
        last = _last_block_attention if p.arch != "mamba2" else _last_block_mamba2  # needs every position's input
        return {l: _head(p, pick(out)) for l, out in last(model, states).items()}


def _last_block_attention(model: nn.Module, states: ExitStates) -> dict[int, torch.Tensor]:
    """The last block run on h_l at every position t, attending to the full-depth K/V of positions < t and to its own
    K/V from h_l[t]: per exit (B, T, D). Written by hand from the block's own modules (input norm, q/k/v projections,
    rotary, GQA, o_proj, post-norm, MLP): transformers' block attends to one K/V sequence, not to a different
    diagonal per query. Mistral's layout; the Llama family shares it."""
    p = parts(model)
    config = model.config
    block = p.layers[p.n_layers - 1]
    attn = block.self_attn
    full = states.last_input  # (B, T, D)
    b, t = full.shape[:2]
    window = getattr(config, "sliding_window", None)
    if window is not None and t > window:
        raise ValueError(f"sequences of {t} tokens exceed the backbone's sliding window {window}")
    position_ids = torch.arange(t, device=full.device)[None].expand(b, t)  # (B, T)
    cos, sin = p.rotary_emb(full, position_ids=position_ids)  # (B, T, head_dim) each

    def qkv(x):  # (B, T, D) -> q (B, H, T, hd), k and v (B, H, T, hd) repeated over the GQA groups
        z = block.input_layernorm(x)  # (B, T, D)
        shape = (b, t, -1, attn.head_dim)
        q = attn.q_proj(z).view(shape).transpose(1, 2)  # (B, H, T, hd)
        k = attn.k_proj(z).view(shape).transpose(1, 2)  # (B, Hkv, T, hd)
        v = attn.v_proj(z).view(shape).transpose(1, 2)  # (B, Hkv, T, hd)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        groups = attn.num_key_value_groups
        return q, repeat_kv(k, groups), repeat_kv(v, groups)

    _, k_full, v_full = qkv(full)
    earlier = torch.ones(t, t, dtype=torch.bool, device=full.device).tril(-1)  # (T, T): key s < query t
    out = {}
    for layer, h in states.hidden.items():
        q, k_own, v_own = qkv(h)  # (B, H, T, hd) each
        scores = (q @ k_full.transpose(-1, -2)) * attn.scaling  # (B, H, T, T): against full-depth keys
        scores = scores.masked_fill(~earlier, float("-inf"))
        own = (q * k_own).sum(-1) * attn.scaling  # (B, H, T): against its own key
        weights = torch.cat([scores, own[..., None]], -1).float().softmax(-1).to(q.dtype)  # (B, H, T, T+1)
        mixed = weights[..., :t] @ v_full + weights[..., t:] * v_own  # (B, H, T, hd)
        x = h + attn.o_proj(mixed.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)
        out[layer] = x + block.mlp(block.post_attention_layernorm(x))  # (B, T, D)
    return out


def _last_block_mamba2(model: nn.Module, states: ExitStates) -> dict[int, torch.Tensor]:
    """The last Mamba-2 block run on h_l[t] from its state after the full-depth inputs up to t-1: per exit (B, T, D).

    In one pass, by the SSD dual (attention-like) form: the state after positions < t read by C_own[t] is
    sum_{s<t} exp(sum_{s<r<t} dt_r A) dt_s (C_own[t] . B_s) x_s over the full-depth inputs; then the token's own
    decay and update, D skip, gated norm, out_proj. Written by hand from the block's modules: transformers' block
    runs one sequence of inputs, not a different last input per position (a per-position loop through it was
    4.6x the lens labels' cost per training step on the embedded Mamba-2)."""
    p = parts(model)
    block = p.layers[p.n_layers - 1]
    mixer = block.mixer
    heads, hd, n, g = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups
    k = mixer.conv_kernel_size
    inner = mixer.intermediate_size
    lo, hi = mixer.time_step_limit
    a_neg = -torch.exp(mixer.A_log.float())  # (H,)

    def project(x):  # block input (B, T, D) -> gate (B, T, inner), xBC (B, conv_dim, T), dt (B, T, H) after softplus
        gate, xbc, dt = mixer.in_proj(block.norm(x.to(block.norm.weight.dtype))).split(
            [inner, mixer.conv_dim, heads], dim=-1)
        dt = torch.nn.functional.softplus(dt.float() + mixer.dt_bias.float()).clamp(lo, hi)  # (B, T, H)
        return gate, xbc.transpose(1, 2), dt

    def split(xbc):  # (B, T, conv_dim) after the activation -> x (B, T, H, P), B and C (B, T, H, N)
        b, t = xbc.shape[:2]
        x, bm, cm = xbc.split([inner, g * n, g * n], dim=-1)
        expand = lambda m: m.view(b, t, g, n).repeat_interleave(heads // g, dim=2)  # (B, T, H, N): per group
        return x.reshape(b, t, heads, hd), expand(bm), expand(cm)

    full = states.last_input  # (B, T, D)
    b, t = full.shape[:2]
    _, xbc_full, dt_full = project(full)  # (B, C, T), (B, T, H)
    w = mixer.conv1d.weight[:, 0]  # (C, K)
    windows = torch.nn.functional.pad(xbc_full, (k - 1, 0)).unfold(-1, k, 1)  # (B, C, T, K): inputs t-K+1 .. t
    conv_full = mixer.act((windows * w[:, None]).sum(-1) + mixer.conv1d.bias[:, None])  # (B, C, T)
    x_full, b_full, _ = split(conv_full.transpose(1, 2))  # (B, T, H, P), (B, T, H, N)
    decay = dt_full * a_neg  # (B, T, H): log decay of each full-depth step
    cum = decay.cumsum(1)  # (B, T, H)
    before = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], 1)  # (B, T, H): cum at t-1 (0 at t = 0)
    earlier = torch.ones(t, t, dtype=torch.bool, device=full.device).tril(-1)  # (T, T): s < t
    decay_ts = (before[:, :, None] - cum[:, None, :]).masked_fill(~earlier[None, :, :, None], float("-inf")).exp()
    # (B, T, S, H): decay from s to t, the same for every exit (computed once)
    weighted = (dt_full[..., None] * x_full.float())  # (B, S, H, P): dt_s x_s
    out = {}
    for layer, h in states.hidden.items():
        gate, xbc_own, dt_own = project(h)  # (B, T, inner), (B, C, T), (B, T, H)
        own_window = torch.cat([windows[..., :-1], xbc_own[..., None]], -1)  # (B, C, T, K): its own last input
        conv_own = mixer.act((own_window * w[:, None]).sum(-1) + mixer.conv1d.bias[:, None])  # (B, C, T)
        x_own, b_own, c_own = split(conv_own.transpose(1, 2))  # (B, T, H, P), (B, T, H, N) x2
        scores = torch.einsum("bthn,bshn->btsh", c_own.float(), b_full.float()) * decay_ts  # (B, T, S, H)
        read = torch.einsum("btsh,bshp->bthp", scores, weighted)  # (B, T, H, P): C_own[t] . state after t-1
        own = (c_own.float() * b_own.float()).sum(-1)  # (B, T, H): C_own[t] . B_own[t]
        y = (torch.exp(dt_own * a_neg)[..., None] * read + (dt_own * own)[..., None] * x_own.float()
             + mixer.D.float()[:, None] * x_own.float())  # (B, T, H, P)
        y = mixer.norm(y.reshape(b, t, -1).to(h.dtype), gate)  # (B, T, inner): gated norm
        residual = h.float() if block.residual_in_fp32 else h
        out[layer] = residual + mixer.out_proj(y.to(mixer.out_proj.weight.dtype))  # (B, T, D)
    return out
