"""What the config's backbones are, known before any job: where each comes from and, where that tells it, its depth."""
from __future__ import annotations

import json
import os

from ..models.gguf_file import gguf_header, is_gguf
from ..choices import PRETRAIN_ARCHS
from ..models.names import is_local, resolve_model
from .config import ConfigError

PRETRAIN = "pretrain"  # model: pretrain, a tiny backbone trained here on the world's corpus


def is_gguf_model(model: str) -> bool:
    """A GGUF checkpoint, converted once into a save_pretrained folder (rule convert_backbone)."""
    return model.startswith("package:") or is_gguf(model)


def backbone_depth(name: str, spec: dict, embedded: bool) -> int | None:
    """The number of blocks of backbone `name`, read without torch: trained here, a GGUF file (its header), or a local
    save_pretrained folder (its config.json); None for a hub id (its jobs check it once it loads). Refuses a backbone
    whose arch is not what its file holds, or that cannot be made here."""
    model, arch = spec["model"], spec["arch"]
    where = f"backbones.{name}"
    if model == PRETRAIN:
        if not embedded:
            raise ConfigError(f"{where}.model", "'pretrain' needs the synthetic world (world: ...)")
        if arch not in PRETRAIN_ARCHS:
            raise ConfigError(f"{where}.arch", f"{arch!r} cannot be pretrained here (model: pretrain takes "
                                               f"{', '.join(PRETRAIN_ARCHS)})")
        return spec["pretrain"]["num_layers"]
    if is_gguf_model(model):
        try:
            header = gguf_header(resolve_model(model))
        except ValueError as e:
            raise ConfigError(f"{where}.model", str(e)) from None
        held = header["general.architecture"]
        if held != arch:
            raise ConfigError(f"{where}.arch", f"{arch!r} but {model} holds a {held!r} model")
        return header.get(f"{held}.block_count")
    if is_local(model):
        try:
            with open(os.path.join(model, "config.json")) as f:
                model_config = json.load(f)
        except OSError as e:
            raise ConfigError(f"{where}.model", f"no save_pretrained folder there ({e})") from None
        if model_config.get("model_type") != arch:
            raise ConfigError(f"{where}.arch", f"{arch!r} but {model} holds a {model_config.get('model_type')!r} model")
        return model_config.get("num_hidden_layers")
    return None
