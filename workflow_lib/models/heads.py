"""Exit classifiers ("heads"): a registry by name, the paper's three heads, CALM's two zero-parameter confidence
measures (untrained heads), and a test-only forced head.

Every head reads z = final_norm(h_l), the backbone's own final norm applied to the hidden state after
block l (the caller applies the norm once and shares z with the intermediate LM prediction), and
returns 2 logits; p_exit = softmax(logits)[..., 1].

Two forms per head:
  forward(z)                 z: (B, T, D) -> (B, T, 2)   whole sequences (training, prefill)
  step(z, state, z_in=None)  z: (B, D)    -> (B, 2), state   one generated token
Stateless heads ignore the state; the `mamba` head carries conv + SSM state across tokens, one row per batch row:
in a batch, `step_rows` steps only the rows that reach the head's layer and `keep_rows` drops finished rows.

What a head reads beyond z, the decoder hands it: z_in = final_norm(input of block l) to a head with
`reads_block_input` (the `saturation` head), and the backbone's parts once through `attach` (the `softmax` head
keeps a reference to the LM head).

A new head type is one class decorated with @register_head("name") plus one config entry.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import DynamicCache, Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

from ..artifacts import atomic_path
from .backbone import signature
from .mamba2_step import advance_state

HEAD_TYPES: dict[str, type["ExitHead"]] = {}


def register_head(name: str):
    def wrap(cls):
        if name in HEAD_TYPES:
            raise ValueError(f"head type {name!r} registered twice")
        cls.head_type = name
        HEAD_TYPES[name] = cls
        return cls
    return wrap


class ExitHead(nn.Module):
    head_type: str = ""
    trainable: bool = True
    reads_block_input: bool = False  # step() also gets z_in = final_norm(h_{l-1}), the exit block's normed input

    def __init__(self, hidden_size: int, **options: Any):
        super().__init__()
        self.hidden_size = hidden_size
        self.options = options

    def head_config(self) -> dict:
        return {"head_type": self.head_type, "hidden_size": self.hidden_size, **self.options}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attach(self, backbone_parts) -> None:
        """Called by the decoder with the backbone's parts (models.backbone.BackboneParts) before any step."""

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        return None

    def prefill(self, z: torch.Tensor, state: Any, attention_mask: torch.Tensor | None = None) -> Any:
        """Consume the prompt's normed hidden states z: (B, T, D); return the state after it.

        attention_mask (B, T): 0 at left padding, which must not reach the state (None: no padding).
        """
        return state

    def step(self, z: torch.Tensor, state: Any, z_in: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        return self.forward(z[:, None, :])[:, 0, :], state  # (B, 2)

    def step_rows(self, z: torch.Tensor, state: Any, rows: torch.Tensor | None,
                  z_in: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        """`step` for the batch rows `rows` (R,) only, z, z_in: (R, D); the other rows' state is left as it is."""
        return self.step(z, state, z_in)

    def keep_rows(self, state: Any, keep: torch.Tensor) -> Any:
        """The state of the batch rows `keep` (K,) only, in that order (finished rows leave the batch)."""
        return state

    def macs_per_token(self) -> int:
        """Multiply-accumulates of one `step` (for compute accounting)."""
        return sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))


def stateful(head: ExitHead) -> bool:
    """Whether the head carries a recurrent state that must see the prompt (the `mamba` head)."""
    return type(head).prefill is not ExitHead.prefill


@register_head("calm")
class CalmHead(ExitHead):
    """CALM's classifier: one linear layer d -> 2."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size)
        self.proj = nn.Linear(hidden_size, 2)

    def forward(self, z):
        return self.proj(z)  # (B, T, 2)


@register_head("ffn")
class FfnHead(ExitHead):
    """Transformer-style FFN classifier: d -> 4d, GELU, 4d -> 2."""

    def __init__(self, hidden_size: int, expansion: int = 4):
        super().__init__(hidden_size, expansion=expansion)
        self.up = nn.Linear(hidden_size, expansion * hidden_size)
        self.act = nn.GELU()
        self.down = nn.Linear(expansion * hidden_size, 2)

    def forward(self, z):
        return self.down(self.act(self.up(z)))  # (B, T, 4d) -> (B, T, 2)


@register_head("mamba")
class MambaHead(ExitHead):
    """One Mamba-2 block (in_proj, causal conv1d, selective SSM, gated norm) whose out_proj gives 2 values.

    No residual connection (the residual would be d-dimensional). transformers' own `Mamba2Mixer` does the
    work, so the fused mamba-ssm / causal-conv1d kernels are used on GPU when installed; only out_proj differs.
    On CPU the single-token step runs through `mamba2_step`: 0.22 vs 0.49 ms per step at hidden 192 through
    transformers' fallback (0.98 vs 1.34 ms at 1024).
    """

    def __init__(self, hidden_size: int, state_size: int = 16, head_dim: int = 32, expand: int = 2,
                 conv_kernel: int = 4, chunk_size: int = 64):
        super().__init__(hidden_size, state_size=state_size, head_dim=head_dim, expand=expand,
                         conv_kernel=conv_kernel, chunk_size=chunk_size)
        intermediate = expand * hidden_size
        if intermediate % head_dim:
            raise ValueError(f"mamba head: expand*hidden_size={intermediate} is not a multiple of head_dim={head_dim}")
        self.mixer_config = Mamba2Config(
            hidden_size=hidden_size, num_hidden_layers=1, state_size=state_size, expand=expand, head_dim=head_dim,
            num_heads=intermediate // head_dim, n_groups=1, conv_kernel=conv_kernel, chunk_size=chunk_size,
            use_bias=False, use_conv_bias=True, vocab_size=1, pad_token_id=None, bos_token_id=None, eos_token_id=None,
        )
        self.mixer = Mamba2Mixer(self.mixer_config, layer_idx=0)
        self.mixer.out_proj = nn.Linear(intermediate, 2)

    def forward(self, z):
        return self.mixer(z)  # (B, T, D) -> (B, T, 2), parallel chunked scan

    def init_state(self, batch_size, device, dtype):
        return DynamicCache(config=self.mixer_config)

    def prefill(self, z, state, attention_mask=None):
        self.mixer(z, cache=state, attention_mask=attention_mask)  # (B, T, D): fills conv and SSM state
        return state

    def step_rows(self, z, state, rows, z_in=None):
        if rows is None:
            return self.step(z, state)
        layer = state.layers[0]
        conv, ssm = layer.conv_states[0], layer.recurrent_states[0]  # (B, conv_dim, K), (B, H, P, N)
        layer.conv_states[0], layer.recurrent_states[0] = conv[rows], ssm[rows]  # these rows as a batch of their own
        try:
            logits, _ = self.step(z, state)  # (R, 2); advances the gathered states in place
            conv.index_copy_(0, rows, layer.conv_states[0])
            ssm.index_copy_(0, rows, layer.recurrent_states[0])
        finally:
            layer.conv_states[0], layer.recurrent_states[0] = conv, ssm
        return logits, state

    def keep_rows(self, state, keep):
        state.reorder_cache(keep)
        return state

    def step(self, z, state, z_in=None):
        conv = state.get_conv_state(0)
        if z.is_cuda or conv is None:  # the mixer's own step: fused kernels on GPU; a fresh state fills itself
            return self.mixer(z[:, None, :], cache=state)[:, 0, :], state  # (B, 2)
        return self._step_torch(z, conv, state.get_recurrent_state(0)), state

    def _step_torch(self, z, conv, ssm):
        """The mixer's single-token step for CPU (see mamba2_step); the tests check it against the mixer's own."""
        m = self.mixer
        gate, xbc, dt = m.in_proj(z).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)  # (B, .)
        x, C = advance_state(m, conv, ssm, xbc, dt)  # (B, H, P), (B, H, N)
        y = torch.einsum("bhpn,bhn->bhp", ssm, C.to(ssm.dtype)) + m.D[:, None] * x  # (B, H, P): readout + D skip
        y = m.norm(y.reshape(z.shape[0], -1), gate)  # (B, inner): gated RMSNorm
        return m.out_proj(y.to(z.dtype))  # (B, 2)

    def macs_per_token(self) -> int:
        c = self.mixer_config
        inner = c.expand * c.hidden_size
        conv_dim = inner + 2 * c.n_groups * c.state_size
        ssm = 3 * inner * c.state_size  # state decay+update and the readout, per channel and state element
        return super().macs_per_token() + conv_dim * c.conv_kernel + ssm


class UntrainedHead(ExitHead):
    """An untrained head (CALM's confidence measures): p_exit computed from hidden states, no weights, no
    training. Its 2 logits are [log(1 - p), log(p)], whose softmax gives p back (to rounding), so the decoder runs it
    like any head. Computed in fp32 whatever the model's dtype: a bf16 log(p) would move p by a few tenths of a
    percent."""

    trainable = False

    def p_exit(self, z: torch.Tensor, z_in: torch.Tensor | None) -> torch.Tensor:
        """z, z_in: (..., D) in fp32 -> (...,), clamped to [0, 1] by the caller."""
        raise NotImplementedError

    def forward(self, z, z_in=None):
        p = self.p_exit(z.float(), None if z_in is None else z_in.float()).clamp(0, 1)  # (...,)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=-1)  # (..., 2); softmax: (1 - p, p)

    def step(self, z, state, z_in=None):
        return self.forward(z, z_in), state  # (B, 2)


@register_head("softmax")
class SoftmaxHead(UntrainedHead):
    """CALM's softmax response: p_exit = top-1 minus top-2 probability of the intermediate prediction
    softmax(lm_head(z)). It costs one LM-head product per evaluated exit (hidden x vocab MACs, 0.6 of a block at
    Mistral-7B's 32768 x 4096), which `macs_per_token` reports for the exact CRF.

    It reads the distribution the exit would emit where h alone gives it: under the `translator` emission rule the
    decoder hands it z = final_norm(translate(h_l)) (decoding/core.py), under `lens` z is already the emitted
    input; under `last_block` the emission is the last block run on h_l, which is the emission itself and needs the
    cache, so the head keeps the logit lens there."""

    reads_emitted_distribution = True

    def attach(self, backbone_parts):
        # A plain reference, not a submodule: the weights stay the backbone's (neither saved with the heads nor
        # moved or cast by the heads' .to()).
        object.__setattr__(self, "lm_head", backbone_parts.lm_head)

    def _lm_head(self) -> nn.Module:
        if "lm_head" not in self.__dict__:
            raise RuntimeError("the softmax head reads the backbone's LM head: call attach(parts) first "
                               "(ExitDecoder does)")
        return self.__dict__["lm_head"]

    def p_exit(self, z, z_in):
        lm_head = self._lm_head()
        # F.linear, not lm_head(...): the same product, without firing hooks placed on the model's own output
        probs = F.linear(z.to(lm_head.weight.dtype), lm_head.weight, lm_head.bias).float().softmax(-1)  # (..., V)
        top2 = probs.topk(2, dim=-1).values  # (..., 2)
        return top2[..., 0] - top2[..., 1]  # (...,)

    def macs_per_token(self) -> int:
        return self._lm_head().weight.numel()  # (V, D): one multiply-accumulate per weight


@register_head("saturation")
class SaturationHead(UntrainedHead):
    """CALM's state saturation: p_exit = cosine similarity of z = final_norm(h_l) and z_in = final_norm(h_{l-1}),
    the exit block's normed input, i.e. the previous block's output (a negative cosine counts as 0).

    The previous block, not the previous exit: CALM compares consecutive layers; the head is then defined at every
    exit, the first included, and does not change when other exits are added or moved; and it needs no state between
    exits, so a batch row needs nothing kept beyond its step. Both sides go through the final norm, like every head's
    input."""

    reads_block_input = True

    def p_exit(self, z, z_in):
        if z_in is None:
            raise ValueError("the saturation head compares z with z_in, the exit block's normed input; none was given")
        return F.cosine_similarity(z, z_in, dim=-1)  # (...,)

    def macs_per_token(self) -> int:
        return 3 * self.hidden_size  # z . z_in and the two squared norms


@register_head("forced")
class ForcedHead(ExitHead):
    """Test-only: always (or never) exits, so that missing-state policies can be tested exactly."""

    trainable = False

    def __init__(self, hidden_size: int, exit: bool = True):
        super().__init__(hidden_size, exit=exit)
        self.register_buffer("logits", torch.tensor([0.0, 1e4] if exit else [1e4, 0.0]), persistent=False)

    def forward(self, z):
        return self.logits.to(z.dtype).expand(*z.shape[:-1], 2)  # (B, T, 2)

    def macs_per_token(self) -> int:
        return 0


def build_head(head_type: str, hidden_size: int, **options: Any) -> ExitHead:
    if head_type not in HEAD_TYPES:
        raise ValueError(f"unknown head type {head_type!r}; known: {', '.join(sorted(HEAD_TYPES))}")
    return HEAD_TYPES[head_type](hidden_size, **options)


def build_heads(head_type: str, hidden_size: int, exit_layers: list[int], seed: int = 0,
                **options: Any) -> nn.ModuleDict:
    """One head per exit layer, keyed by the layer index as a string (nn.ModuleDict needs str keys)."""
    torch.manual_seed(seed)
    return nn.ModuleDict({str(layer): build_head(head_type, hidden_size, **options) for layer in exit_layers})


HEADS_WEIGHTS = "heads.safetensors"
HEADS_CONFIG = "heads.json"


def save_heads(directory: str | os.PathLike, heads: nn.ModuleDict, backbone_config, metadata: dict | None = None) -> None:
    """Write heads.safetensors (each exit's own weights, keyed 'layer.param'; none for an untrained head) and
    heads.json into `directory`, each file atomically, heads.json last (it marks the folder complete). The folder
    itself is not replaced: in the pipeline it also holds the heads of other emission rules (emission~RULE/)."""
    first = next(iter(heads.values()))
    tensors = {f"{layer}.{name}": p.detach().cpu().contiguous()
               for layer, head in heads.items() for name, p in head.state_dict().items()}
    config = {
        "head": first.head_config(),
        "exit_layers": sorted(int(k) for k in heads),
        "backbone": signature(backbone_config),
        **(metadata or {}),
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tensors:
        with atomic_path(directory / HEADS_WEIGHTS) as tmp:
            save_file(tensors, str(tmp))
    else:
        (directory / HEADS_WEIGHTS).unlink(missing_ok=True)  # weights of an earlier trained head of this name
    with atomic_path(directory / HEADS_CONFIG) as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def load_heads(directory: str | os.PathLike, backbone_config=None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[nn.ModuleDict, dict]:
    """Load heads saved by `save_heads`; refuse them if they were built for another backbone."""
    directory = Path(directory)
    if not (directory / HEADS_CONFIG).is_file():
        raise FileNotFoundError(f"heads folder {str(directory)!r} has no {HEADS_CONFIG}")
    config = json.loads((directory / HEADS_CONFIG).read_text())
    if backbone_config is not None and config["backbone"] != signature(backbone_config):
        raise ValueError(
            f"heads in {str(directory)!r} were built for backbone {config['backbone']}, "
            f"not for the loaded one {signature(backbone_config)}"
        )
    options = dict(config["head"])
    head_type, hidden_size = options.pop("head_type"), options.pop("hidden_size")
    heads = nn.ModuleDict({str(layer): build_head(head_type, hidden_size, **options) for layer in config["exit_layers"]})
    if not any(head.state_dict() for head in heads.values()):  # an untrained head: heads.json is all there is
        return heads.to(device=device, dtype=dtype).eval(), config
    if not (directory / HEADS_WEIGHTS).is_file():
        raise FileNotFoundError(f"heads folder {str(directory)!r} has no {HEADS_WEIGHTS}")
    tensors = load_file(str(directory / HEADS_WEIGHTS))
    for layer, head in heads.items():
        prefix = f"{layer}."
        head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return heads.to(device=device, dtype=dtype).eval(), config
