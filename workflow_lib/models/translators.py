"""Tuned-lens translators (Belrose et al., 2023): per exit layer an affine map of h_l into the final layer's basis.

    translate(h, l) = h + A_l h + b_l        A_l, b_l zero-initialised: the identity, i.e. the logit lens, at step 0

The emitted distribution at an exit under the `translator` emission rule is LM head(final_norm(translate(h_l, l))).
The residual form with a zero init is the tuned lens' own (its `TunedLens.layer_translators`). The `tuned-lens`
package (0.2.0, 2023) installs beside our pins only with --no-deps (it requires wandb, torchdata, plotly and
accelerate), saves with pickled torch.save and trains through its own CLI: so the translator module, its
safetensors files and its training are written here, in the same form.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..artifacts import atomic_path
from ..choices import EMISSION_RULES
from .backbone import signature

# How an exit turns its hidden state h_l into the emitted token (per backbone; docs/policies.md):
#   last_block  the paper's Algorithm 1: the last block runs on h_l, then final norm and LM head
#   lens        final norm and LM head on h_l (the logit lens); the last block is skipped like the others
#   translator  final norm and LM head on translate(h_l, l) (the tuned lens); the last block is skipped too
# (the names: choices.EMISSION_RULES)

def check_emission(rule: str, translators: "Translators | None", exit_layers: list[int]) -> None:
    """A clear error for an unknown rule, or the translator rule without a translator for every exit layer."""
    if rule not in EMISSION_RULES:
        raise ValueError(f"unknown emission rule {rule!r}; choose one of {', '.join(EMISSION_RULES)}")
    if rule != "translator":
        return
    if translators is None:
        raise ValueError("the 'translator' emission rule needs translators, trained ones (--translators DIR)")
    missing = sorted(set(exit_layers) - set(translators.exit_layers))
    if missing:
        raise ValueError(f"translators have no translator for exit layer(s) {missing} "
                         f"(they cover {translators.exit_layers})")


TRANSLATORS_WEIGHTS = "translators.safetensors"
TRANSLATORS_CONFIG = "translators.json"


class Translators(nn.Module):
    """One d x d affine translator per exit layer, keyed by the layer index as a string."""

    def __init__(self, hidden_size: int, exit_layers: list[int]):
        super().__init__()
        self.hidden_size = hidden_size
        self.linears = nn.ModuleDict({str(layer): nn.Linear(hidden_size, hidden_size) for layer in exit_layers})
        for linear in self.linears.values():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    @property
    def exit_layers(self) -> list[int]:
        return sorted(int(k) for k in self.linears)

    def forward(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """h: (..., D) hidden state after block `layer` -> (..., D) in the final layer's basis."""
        linear = self.linears[str(layer)]
        return h + linear(h.to(linear.weight.dtype)).to(h.dtype)  # (..., D)

    def macs_per_token(self) -> int:
        """One translation: a d x d product (the bias add is not a multiply-accumulate)."""
        return self.hidden_size * self.hidden_size


def save_translators(directory: str | os.PathLike, translators: Translators, backbone_config,
                     metadata: dict | None = None) -> None:
    """Write translators.safetensors (keyed 'layer.weight' / 'layer.bias') and translators.json, atomically."""
    tensors = {f"{layer}.{name}": p.detach().cpu().contiguous()
               for layer, linear in translators.linears.items() for name, p in linear.state_dict().items()}
    config = {"hidden_size": translators.hidden_size, "exit_layers": translators.exit_layers,
              "backbone": signature(backbone_config), **(metadata or {})}
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / TRANSLATORS_WEIGHTS))
        (tmp / TRANSLATORS_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")


def load_translators(directory: str | os.PathLike, backbone_config=None, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[Translators, dict]:
    """Load translators saved by `save_translators`; refuse them if they were trained for another backbone."""
    directory = Path(directory)
    for name in (TRANSLATORS_CONFIG, TRANSLATORS_WEIGHTS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"translators folder {str(directory)!r} has no {name}")
    config = json.loads((directory / TRANSLATORS_CONFIG).read_text())
    if backbone_config is not None and config["backbone"] != signature(backbone_config):
        raise ValueError(f"translators in {str(directory)!r} were trained for backbone {config['backbone']}, "
                         f"not for the loaded one {signature(backbone_config)}")
    translators = Translators(config["hidden_size"], config["exit_layers"])
    tensors = load_file(str(directory / TRANSLATORS_WEIGHTS))
    for layer, linear in translators.linears.items():
        linear.load_state_dict({k[len(layer) + 1:]: v for k, v in tensors.items() if k.startswith(f"{layer}.")})
    return translators.to(device=device, dtype=dtype).eval(), config
