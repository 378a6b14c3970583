"""Missing-state policies: what the blocks skipped by an early exit store for this position (docs/policies.md).

After a token exits at block e, blocks e+1 .. n-2 never see it (under the emission rule last_block block n-1, the
last, runs anyway; under lens / translator it is skipped too and filled like the others), yet later tokens read
their caches. A policy writes the skipped blocks' state for this position from the exit hidden
state h_e (R, 1, D) of the R batch rows that exit at this step (R = 1 at batch size 1):

  transformer (Mistral, Llama, Qwen2)
           recompute  K, V from each skipped block's own input norm + k_proj/v_proj + rotary (CALM's propagation),
                      all skipped blocks at once on stacked weights (`StackedKV`)
           copy       the K, V the exit block computed for this position (the paper's proposal)
           copy_prev  each skipped block's own previous-position K, V again (the authors' code)
  mamba2   recompute  each skipped block's conv and SSM states advanced with h_e (norm, in_proj without the gate
                      columns, conv update, SSM update; no gate, no out_proj): transformers' step functions
                      on CUDA (fused kernels when installed), models/mamba2_step.py on CPU
           skip       states untouched

These are the fast paths, which a decoder gets from `make_fill`; `tests/policies_reference.py` holds a minimal,
literal version of each and the tests check that both write the same cache. Every policy works in place on
transformers' own `DynamicCache` (one `update` per skipped block for attention, in-place state updates for
Mamba), with no host sync. In a batch, `rows` names the rows that exit (the cache holds every row) and an attention
policy hands each skipped block's K, V for those rows to `write(j, k, v)`, which the batched decoder merges with
the rows still climbing (decoding/step.py); without them the policy appends to the cache itself (the reference
decoder in tests/, batch 1).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
import transformers.models.mamba2.modeling_mamba2 as hf_mamba2
from torch import nn
from transformers import Cache
from transformers.models.mistral.modeling_mistral import rotate_half

from workflow_lib.choices import DEFAULT_POLICY, POLICIES
from workflow_lib.models.backbone import ARCHITECTURES, family
from workflow_lib.models.mamba2_step import advance_state

# keyed by backbone family (models/backbone.py): every Llama-layout transformer shares the transformer policies

# fill(layers, cache, h_exit (R,1,D), exit_layer, skipped block indices, position_embeddings (R,1,hd) or None,
#      rows=None, write=None): rows (R,) are the batch rows h_exit belongs to (None: all of them); write(j, k, v) stores
#      block j's K, V (R, kv_heads, 1, head_dim) for this position (None: append to the cache, batch size 1)
FillFn = Callable[..., None]
WriteFn = Callable[[int, torch.Tensor, torch.Tensor], None]


def _writer(cache: Cache, write: WriteFn | None) -> WriteFn:
    return write if write is not None else (lambda j, k, v: cache.update(k, v, j))


def _last(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """The cached position before this step's, for `rows`: (R, kv_heads, 1, head_dim)."""
    return t[:, :, -1:] if rows is None else t[rows, :, -1:]


def resolve_policy(arch: str, policy: str | None) -> str:
    """The policy name to use on this architecture (its default for None); a one-line error otherwise."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"no missing-state policies for architecture {arch!r}")
    known = POLICIES[family(arch)]
    if policy is None:
        return DEFAULT_POLICY[family(arch)]
    if policy not in known:
        raise ValueError(f"policy {policy!r} does not apply to {arch} backbones; choose one of {', '.join(known)}")
    return policy


def _rms_normalized(h: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalised h without the weight, exactly as transformers' RMSNorms compute it before the weight.

    Every skipped block's input norm only differs by its weight, so this is computed once per exit.
    """
    hf = h.float()  # (R, 1, D)
    return (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(h.dtype)  # (R, 1, D)


class StackedKV:
    """`recompute` for the attention family with the K/V weights (and biases, Qwen2) of every block an exit can skip
    stacked once.

    Per skipped block the work is tiny (two (kv_dim x D) GEMVs, a rotary) and, done block by block, dispatch-
    bound: on the tiny preset 0.18 ms for 3 blocks against 0.03 ms for `copy`. Stacked, every skipped block's
    norm weight, K/V projection and rotary is one op over all of them (one bmm), whatever the exit; only the
    cache writes stay per block. Costs one copy of those blocks' k_proj/v_proj weights (7B shapes, exits from
    block 16: 14 x 2 x 1024 x 4096 bf16 = 235 MB). The blocks a fill may skip must be a suffix of `blocks`.
    """

    def __init__(self, layers: nn.ModuleList, blocks: Sequence[int]):
        self.row = {j: r for r, j in enumerate(blocks)}
        if not blocks:  # exits only where nothing is left to skip
            return
        attn = layers[blocks[0]].self_attn
        self.heads, self.head_dim = attn.k_proj.out_features // attn.head_dim, attn.head_dim
        self.eps = layers[blocks[0]].input_layernorm.variance_epsilon
        with torch.no_grad():
            self.norm_w = torch.stack([layers[j].input_layernorm.weight for j in blocks])[:, None]  # (S, 1, D)
            self.kv_w = torch.stack([torch.cat([layers[j].self_attn.k_proj.weight, layers[j].self_attn.v_proj.weight])
                                     for j in blocks])  # (S, 2 * kv_dim, D)
            biased = layers[blocks[0]].self_attn.k_proj.bias is not None  # Qwen2: q/k/v biases
            self.kv_b = torch.stack([torch.cat([layers[j].self_attn.k_proj.bias, layers[j].self_attn.v_proj.bias])
                                     for j in blocks])[:, None] if biased else None  # (S, 1, 2 * kv_dim)

    def __call__(self, layers, cache, h, exit_layer, skipped, position_embeddings, rows=None, write=None) -> None:
        if not skipped:
            return
        first = self.row[skipped[0]]
        if len(skipped) != len(self.row) - first:
            raise ValueError(f"skipped blocks {list(skipped)} are not a suffix of the stacked blocks {list(self.row)}")
        s, r = len(skipped), h.shape[0]
        x = self.norm_w[first:] * _rms_normalized(h, self.eps)[:, 0]  # (S', R, D): each block's own input norm
        kv = (torch.bmm(x, self.kv_w[first:].transpose(1, 2)) if self.kv_b is None
              else torch.baddbmm(self.kv_b[first:], x, self.kv_w[first:].transpose(1, 2)))  # (S', R, 2 * kv_dim)
        kv = kv.view(s, r, 2 * self.heads, 1, self.head_dim)  # (S', R, 2 * kv_heads, 1, head_dim)
        k, v = kv[:, :, :self.heads], kv[:, :, self.heads:]  # (S', R, kv_heads, 1, head_dim) each
        cos, sin = position_embeddings  # (R, 1, head_dim) each
        cos, sin = cos[:, None], sin[:, None]  # (R, 1, 1, head_dim): broadcast over blocks and KV heads
        k = k * cos + rotate_half(k) * sin  # (S', R, kv_heads, 1, head_dim): rotary at each row's position
        write = _writer(cache, write)
        for i, j in enumerate(skipped):
            write(j, k[i], v[i])  # (R, kv_heads, 1, head_dim) each


def attention_copy(layers, cache, h, exit_layer, skipped, position_embeddings, rows=None, write=None) -> None:
    src = cache.layers[exit_layer]
    k, v = _last(src.keys, rows), _last(src.values, rows)  # (R, kv_heads, 1, head_dim): exit block's K, V here
    write = _writer(cache, write)
    for j in skipped:
        write(j, k, v)


def attention_copy_prev(layers, cache, h, exit_layer, skipped, position_embeddings, rows=None, write=None) -> None:
    write = _writer(cache, write)
    for j in skipped:
        own = cache.layers[j]
        write(j, _last(own.keys, rows), _last(own.values, rows))  # (R, kv_heads, 1, head_dim) each


def mamba2_recompute(layers, cache, h, exit_layer, skipped, position_embeddings, rows=None, write=None) -> None:
    if not skipped:
        return
    normed = _rms_normalized(h.to(layers[skipped[0]].norm.weight.dtype), layers[skipped[0]].norm.variance_epsilon)
    for j in skipped:
        mixer = layers[j].mixer
        state = cache.layers[j]
        inner = mixer.intermediate_size
        x = layers[j].norm.weight * normed  # (R, 1, D): this block's own input norm
        # in_proj without the gate rows: the gate only feeds the output, which nobody reads
        w = mixer.in_proj.weight[inner:]  # (conv_dim + heads, D)
        b = None if mixer.in_proj.bias is None else mixer.in_proj.bias[inner:]
        xbc, dt = F.linear(x, w, b).split([mixer.conv_dim, mixer.num_heads], dim=-1)  # (R,1,conv_dim), (R,1,heads)
        conv, ssm = state.conv_states[0], state.recurrent_states[0]  # (B, conv_dim, K), (B, heads, head_dim, N)
        if rows is not None:  # the exiting rows' states, advanced as a batch of their own and written back
            conv, ssm = conv[rows], ssm[rows]
        if xbc.is_cuda:
            mamba2_state_step_kernels(mixer, conv, ssm, xbc, dt)
        else:
            advance_state(mixer, conv, ssm, xbc[:, 0], dt[:, 0])
        if rows is not None:
            state.conv_states[0].index_copy_(0, rows, conv)
            state.recurrent_states[0].index_copy_(0, rows, ssm)


def mamba2_state_step_kernels(mixer, conv, ssm, xbc, dt) -> None:
    """The mixer's own single-step functions: the fused causal-conv1d / mamba-ssm kernels when installed.

    conv (R, conv_dim, K) and ssm (R, heads, head_dim, N) are updated in place; xbc (R, 1, conv_dim), dt (R, 1, heads).
    """
    inner, r = mixer.intermediate_size, xbc.shape[0]
    xbc = hf_mamba2.causal_conv1d_update(xbc.transpose(1, 2), conv, mixer.conv1d.weight.squeeze(1),
                                         mixer.conv1d.bias, activation=mixer.activation)  # (R, conv_dim, 1)
    groups_state = mixer.n_groups * mixer.ssm_state_size
    xs, B, C = xbc[:, :, 0].split([inner, groups_state, groups_state], dim=-1)  # (R, inner), (R, G*N), (R, G*N)
    A = -torch.exp(mixer.A_log.float())  # (heads,)
    hf_mamba2.mamba2_selective_state_update(
        ssm,  # (R, heads, head_dim, N), updated in place
        xs.view(r, mixer.num_heads, mixer.head_dim),  # (R, heads, head_dim)
        dt.view(r, mixer.num_heads, 1).expand(-1, -1, mixer.head_dim),  # (R, heads, head_dim)
        A[:, None, None].expand(-1, mixer.head_dim, mixer.ssm_state_size),  # (heads, head_dim, N)
        B.view(r, mixer.n_groups, mixer.ssm_state_size),  # (R, G, N)
        C.view(r, mixer.n_groups, mixer.ssm_state_size),  # (R, G, N)
        mixer.D[:, None].expand(-1, mixer.head_dim),  # (heads, head_dim)
        z=None, dt_bias=mixer.dt_bias[:, None].expand(-1, mixer.head_dim), dt_softplus=True,
    )


def mamba2_skip(layers, cache, h, exit_layer, skipped, position_embeddings, rows=None, write=None) -> None:
    return None


def _as_is(fill: FillFn) -> Callable[[nn.ModuleList, Sequence[int]], FillFn]:
    """A factory for a policy with nothing to prepare."""
    return lambda layers, blocks: fill


# Each policy is built once per decoder from the layers and the blocks its exits can skip.
_FACTORIES: dict[tuple[str, str], Callable[[nn.ModuleList, Sequence[int]], FillFn]] = {
    ("transformer", "recompute"): StackedKV,
    ("transformer", "copy"): _as_is(attention_copy),
    ("transformer", "copy_prev"): _as_is(attention_copy_prev),
    ("mamba2", "recompute"): _as_is(mamba2_recompute),
    ("mamba2", "skip"): _as_is(mamba2_skip),
}


def make_fill(arch: str, policy: str, layers: nn.ModuleList, blocks: Sequence[int]) -> FillFn:
    """The fill function of `policy` for a decoder whose exits can skip `blocks` (ascending; a skip is a suffix)."""
    return _FACTORIES[(family(arch), resolve_policy(arch, policy))](layers, blocks)
