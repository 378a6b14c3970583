"""Missing-state policies: what the blocks skipped by an early exit store for this position (DESIGN.md §4).

After a token exits at block e, blocks e+1 .. n-2 never see it (block n-1, the last, runs anyway), yet later
tokens read their caches. A policy writes the skipped blocks' state for this position from the exit hidden
state h_e (B=1, T=1, D):

  mistral  recompute  K, V from each skipped block's own input norm + k_proj/v_proj + rotary (CALM's propagation)
           copy       the K, V the exit block computed for this position (the paper's proposal)
           copy_prev  each skipped block's own previous-position K, V again (the authors' code)
  mamba2   recompute  each skipped block's conv and SSM states advanced with h_e (norm, in_proj without the gate
                      columns, conv update, SSM update; no gate, no out_proj): transformers' step functions
                      on CUDA (fused kernels when installed), models/mamba2_step.py on CPU
           skip       states untouched

These are the fast paths; `policies_reference.py` holds a minimal, literal version of each and the tests
check that both write the same cache. Every policy works in place on transformers' own `DynamicCache`
(one `update` per skipped block for attention, in-place state updates for Mamba), with no host sync.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import transformers.models.mamba2.modeling_mamba2 as hf_mamba2
from torch import nn
from transformers import Cache
from transformers.models.mistral.modeling_mistral import rotate_half

from workflow_lib.models.mamba2_step import advance_state

POLICIES: dict[str, tuple[str, ...]] = {"mistral": ("recompute", "copy", "copy_prev"), "mamba2": ("recompute", "skip")}
DEFAULT_POLICY: dict[str, str] = {"mistral": "recompute", "mamba2": "recompute"}

# fill(layers, cache, h_exit (1,1,D), exit_layer, skipped block indices, position_embeddings or None)
FillFn = Callable[[nn.ModuleList, Cache, torch.Tensor, int, Sequence[int], tuple | None], None]


def resolve_policy(arch: str, policy: str | None) -> str:
    """The policy name to use on this architecture (its default for None); a one-line error otherwise."""
    if arch not in POLICIES:
        raise ValueError(f"no missing-state policies for architecture {arch!r}")
    if policy is None:
        return DEFAULT_POLICY[arch]
    if policy not in POLICIES[arch]:
        raise ValueError(f"policy {policy!r} does not apply to {arch} backbones; choose one of {', '.join(POLICIES[arch])}")
    return policy


def _rms_normalized(h: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalised h without the weight, exactly as transformers' RMSNorms compute it before the weight.

    Every skipped block's input norm only differs by its weight, so this is computed once per exit.
    """
    hf = h.float()  # (1, 1, D)
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)  # (1, 1, D)


def mistral_recompute(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    if not skipped:
        return
    normed = _rms_normalized(h, layers[skipped[0]].input_layernorm.variance_epsilon)  # (1, 1, D)
    cos, sin = position_embeddings  # (1, 1, head_dim) each
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, 1, head_dim): broadcast over KV heads
    for j in skipped:
        attn = layers[j].self_attn
        x = layers[j].input_layernorm.weight * normed  # (1, 1, D): this block's own input norm
        k = attn.k_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
        v = attn.v_proj(x).view(1, 1, -1, attn.head_dim).transpose(1, 2)  # (1, kv_heads, 1, head_dim)
        k = k * cos + rotate_half(k) * sin  # (1, kv_heads, 1, head_dim): rotary at this position
        cache.update(k, v, j)


def mistral_copy(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    src = cache.layers[exit_layer]
    k, v = src.keys[:, :, -1:], src.values[:, :, -1:]  # (1, kv_heads, 1, head_dim): exit block's K, V here
    for j in skipped:
        cache.update(k, v, j)


def mistral_copy_prev(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    for j in skipped:
        own = cache.layers[j]
        cache.update(own.keys[:, :, -1:], own.values[:, :, -1:], j)  # (1, kv_heads, 1, head_dim) each


def mamba2_recompute(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    if not skipped:
        return
    normed = _rms_normalized(h.to(layers[skipped[0]].norm.weight.dtype), layers[skipped[0]].norm.variance_epsilon)
    for j in skipped:
        mixer = layers[j].mixer
        state = cache.layers[j]
        inner = mixer.intermediate_size
        x = layers[j].norm.weight * normed  # (1, 1, D): this block's own input norm
        # in_proj without the gate rows: the gate only feeds the output, which nobody reads
        w = mixer.in_proj.weight[inner:]  # (conv_dim + heads, D)
        b = None if mixer.in_proj.bias is None else mixer.in_proj.bias[inner:]
        xbc, dt = F.linear(x, w, b).split([mixer.conv_dim, mixer.num_heads], dim=-1)  # (1,1,conv_dim), (1,1,heads)
        if xbc.is_cuda:
            _mamba2_state_step_kernels(mixer, state, xbc, dt)
        else:
            advance_state(mixer, state.conv_states[0], state.recurrent_states[0], xbc[:, 0], dt[:, 0])


def _mamba2_state_step_kernels(mixer, state, xbc, dt) -> None:
    """The mixer's own single-step functions: the fused causal-conv1d / mamba-ssm kernels when installed."""
    inner = mixer.intermediate_size
    xbc = hf_mamba2.causal_conv1d_update(xbc.transpose(1, 2), state.conv_states[0], mixer.conv1d.weight.squeeze(1),
                                         mixer.conv1d.bias, activation=mixer.activation)  # (1, conv_dim, 1)
    groups_state = mixer.n_groups * mixer.ssm_state_size
    xs, B, C = xbc[:, :, 0].split([inner, groups_state, groups_state], dim=-1)  # (1, inner), (1, G*N), (1, G*N)
    A = -torch.exp(mixer.A_log.float())  # (heads,)
    hf_mamba2.mamba2_selective_state_update(
        state.recurrent_states[0],  # (1, heads, head_dim, N), updated in place
        xs.view(1, mixer.num_heads, mixer.head_dim),  # (1, heads, head_dim)
        dt.view(1, mixer.num_heads, 1).expand(-1, -1, mixer.head_dim),  # (1, heads, head_dim)
        A[:, None, None].expand(-1, mixer.head_dim, mixer.ssm_state_size),  # (heads, head_dim, N)
        B.view(1, mixer.n_groups, mixer.ssm_state_size),  # (1, G, N)
        C.view(1, mixer.n_groups, mixer.ssm_state_size),  # (1, G, N)
        mixer.D[:, None].expand(-1, mixer.head_dim),  # (heads, head_dim)
        z=None, dt_bias=mixer.dt_bias[:, None].expand(-1, mixer.head_dim), dt_softplus=True,
    )


def mamba2_skip(layers, cache, h, exit_layer, skipped, position_embeddings) -> None:
    return None


FILL: dict[tuple[str, str], FillFn] = {
    ("mistral", "recompute"): mistral_recompute,
    ("mistral", "copy"): mistral_copy,
    ("mistral", "copy_prev"): mistral_copy_prev,
    ("mamba2", "recompute"): mamba2_recompute,
    ("mamba2", "skip"): mamba2_skip,
}
