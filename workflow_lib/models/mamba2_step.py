"""One token through a Mamba-2 mixer's conv window and SSM state, in place, in plain torch (for CPU).

Hand-written because transformers' pure-torch single-step fallbacks (`causal_conv1d_update`,
`selective_state_update`) also compute the block's output and first broadcast dt and A to
(heads, head_dim, N): on CPU, where no fused kernel exists, a recomputed block then cost 56% of a full block's
time against 36% of its multiply-accumulates (benchmarks/realised_speedup.py). On CUDA the callers keep
transformers' functions, which dispatch to the mamba-ssm / causal-conv1d kernels when installed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def advance_state(mixer: nn.Module, conv: torch.Tensor, ssm: torch.Tensor, xbc: torch.Tensor,
                  dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Advance `conv` (B, conv_dim, K) and `ssm` (B, H, P, N) by one token, in place.

    xbc (B, conv_dim) and dt (B, H) are the token's in_proj outputs (the gate rows are not needed). Returns the
    SSM input x (B, H, P) and the readout C (B, H, N) for a caller that wants the block's output.
    """
    heads, p, n, g = mixer.num_heads, mixer.head_dim, mixer.ssm_state_size, mixer.n_groups
    b = xbc.shape[0]
    conv.copy_(torch.roll(conv, shifts=-1, dims=-1))
    conv[:, :, -1] = xbc  # the window now ends at this token
    xbc = mixer.act(torch.einsum("bck,ck->bc", conv, mixer.conv1d.weight[:, 0]) + mixer.conv1d.bias)  # (B, conv_dim)
    x, B, C = xbc.split([mixer.intermediate_size, g * n, g * n], dim=-1)  # (B, inner), (B, G*N), (B, G*N)
    x = x.view(b, heads, p)  # (B, H, P)
    dt = F.softplus(dt + mixer.dt_bias)  # (B, H)
    decay = torch.exp(dt * -torch.exp(mixer.A_log.float()))  # (B, H)
    B = B.view(b, g, 1, n).repeat_interleave(heads // g, dim=1)  # (B, H, 1, N): B shared within a group
    ssm.mul_(decay[:, :, None, None]).add_((dt[:, :, None] * x)[..., None] * B)  # (B, H, P, N)
    return x, C.view(b, g, n).repeat_interleave(heads // g, dim=1)  # (B, H, P), (B, H, N)
