"""Backbone names: `preset:NAME` (random weights), a local `save_pretrained` folder, or a hub id. Told apart
here without torch, so entry points check them before their expensive imports."""
from __future__ import annotations

import os

PRESET_PREFIX = "preset:"


def is_local(name: str) -> bool:
    """Whether a backbone name is a local folder rather than a hub id ('org/name' has a '/' too): it is a folder,
    or it is spelled as a path that no hub id can be (absolute, ./ or ../, more than one '/')."""
    return os.path.isdir(name) or os.path.isabs(name) or name.startswith(".") or name.count("/") > 1


def check_local(name: str) -> None:
    """A clear error for a local backbone folder that is not there (a hub id is checked when it loads)."""
    if is_local(name) and not os.path.isdir(name):
        raise FileNotFoundError(f"backbone folder {name!r} does not exist")
