"""Minimal reference versions of the missing-state policies, written from docs/policies.md for readability.

Each does the literal thing with the block's own modules (attention family) or the Mamba-2 recurrence written out in
plain torch (Mamba), one skipped block at a time. Tests check that `policies.make_fill` writes the same cache.
Keyed by backbone family, as `policies.POLICIES`.
Same signature as the fast path: fill(layers, cache, h_exit (1,1,D), exit_layer, skipped, position_embeddings);
`skipped` holds the last block too under the lens / translator emission rules.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb


def _append(cache, j, k, v) -> None:
    layer = cache.layers[j]
    layer.keys = torch.cat([layer.keys, k], dim=-2)  # (1, kv_heads, L+1, head_dim)
    layer.values = torch.cat([layer.values, v], dim=-2)  # (1, kv_heads, L+1, head_dim)


def attention_recompute(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    cos, sin = position_embeddings  # (1, 1, head_dim)
    for j in skipped:
        attn = layers[j].self_attn
        x = layers[j].input_layernorm(h)  # (1, 1, D)
        k = attn.k_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
        v = attn.v_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
        _, k = apply_rotary_pos_emb(k, k, cos, sin)  # (1, kv_heads, 1, head_dim)
        _append(cache, j, k, v)


def attention_copy(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    for j in skipped:
        _append(cache, j, cache.layers[exit_layer].keys[:, :, -1:], cache.layers[exit_layer].values[:, :, -1:])


def attention_copy_prev(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    for j in skipped:
        _append(cache, j, cache.layers[j].keys[:, :, -1:], cache.layers[j].values[:, :, -1:])


def mamba2_recompute(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    for j in skipped:
        m = layers[j].mixer
        x = layers[j].norm(h.to(layers[j].norm.weight.dtype))[:, 0]  # (1, D)
        _gate, xbc, dt = m.in_proj(x).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
        # causal conv1d, one step: shift the window left, append this position, convolve, SiLU
        conv = cache.layers[j].conv_states[0]  # (1, conv_dim, K)
        conv.copy_(torch.cat([conv[:, :, 1:], xbc[:, :, None]], dim=-1))  # (1, conv_dim, K)
        xbc = F.silu((conv * m.conv1d.weight[:, 0]).sum(-1) + m.conv1d.bias)  # (1, conv_dim)
        gn = m.n_groups * m.ssm_state_size
        xs, B, C = xbc.split([m.intermediate_size, gn, gn], dim=-1)
        # selective SSM, one step: s <- exp(dt*A) s + dt * B x^T (B, C shared within a group of heads)
        dt = F.softplus(dt + m.dt_bias)  # (1, heads)
        A = -torch.exp(m.A_log.float())  # (heads,)
        xs = xs.view(1, m.num_heads, m.head_dim)  # (1, heads, head_dim)
        B = B.view(1, m.n_groups, 1, m.ssm_state_size).repeat_interleave(m.num_heads // m.n_groups, dim=1)  # (1, H, 1, N)
        s = cache.layers[j].recurrent_states[0]  # (1, heads, head_dim, N)
        s.copy_(s * torch.exp(dt * A)[:, :, None, None] + dt[:, :, None, None] * B * xs[..., None])


def mamba2_skip(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    return None


FILL = {
    ("transformer", "recompute"): attention_recompute,
    ("transformer", "copy"): attention_copy,
    ("transformer", "copy_prev"): attention_copy_prev,
    ("mamba2", "recompute"): mamba2_recompute,
    ("mamba2", "skip"): mamba2_skip,
}
