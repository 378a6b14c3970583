"""Resumable head training: heads, optimizer states, RNG states and the step in ONE safetensors file (tensors; the
rest as JSON in its metadata), replaced atomically every `checkpoint_every` steps. The data order is a pure function
of (seed, step), so a run killed at any moment and restarted with the same command ends with bit-identical weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..artifacts import atomic_path

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
# Config keys that may differ between a killed run and its restart (they do not change the result).
RESUME_FREE_KEYS = ("checkpoint_every", "label_cache")


def save_checkpoint(path: Path, heads: nn.Module, optimizers: list[torch.optim.Optimizer], step: int,
                    state: dict) -> None:
    """Heads, optimizer states, RNG states, step and `state` (JSON) in one file, replaced atomically."""
    tensors = {f"heads.{k}": v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    groups = []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                tensors[f"optim{i}.{pid}.{key}"] = value.detach().cpu().contiguous()
        groups.append(sd["param_groups"])
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for j, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda{j}"] = s
    meta = {"step": step, "param_groups": groups, **state}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(meta, default=str)})


def read_checkpoint_meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"])


def load_checkpoint(path: Path, heads: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict:
    """Restore heads, optimizers and RNG from `path`; return its metadata (step, config, ...)."""
    meta = read_checkpoint_meta(path)
    tensors = load_file(str(path))
    heads.load_state_dict({k[len("heads."):]: v for k, v in tensors.items() if k.startswith("heads.")})
    for i, opt in enumerate(optimizers):
        prefix = f"optim{i}."
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            if name.startswith(prefix):
                pid, key = name[len(prefix):].split(".", 1)
                state.setdefault(int(pid), {})[key] = value
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"][i]})
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda{j}"] for j in range(torch.cuda.device_count())
                                      if f"rng.cuda{j}" in tensors])
    return meta


def check_resume(meta: dict, config: dict, backbone: str, backbone_signature: dict, path: Path) -> None:
    """A checkpoint resumes only the run that wrote it: the same backbone and, but for RESUME_FREE_KEYS, the same
    configuration (`config`, the run's settings as a dict)."""
    if meta["backbone"] != backbone_signature:
        raise ValueError(f"checkpoint {str(path)!r} holds heads built for backbone {meta['backbone']}, not for "
                         f"{backbone!r} {backbone_signature}; remove it or choose another --out")
    old = meta["config"]
    diff = sorted(k for k in config if k not in RESUME_FREE_KEYS and old.get(k) != config[k])
    if diff:
        raise ValueError(f"checkpoint {str(path)!r} was written with a different configuration "
                         f"({', '.join(f'{k}: {old.get(k)!r} -> {config[k]!r}' for k in diff)}); "
                         f"rerun the same command to resume, or remove it")
