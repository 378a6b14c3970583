"""Atomic output writing and provenance records shared by every entry point.

Every result file is written to a temporary sibling and renamed into place, so a job killed at any
moment leaves either the previous file or nothing, never a half-written one that Snakemake or the
next stage would accept.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

TRACKED_PACKAGES = (
    "torch", "transformers", "tokenizers", "safetensors", "datasets", "lm_eval",
    "snakemake", "pandas", "matplotlib", "mamba_ssm", "causal_conv1d",
)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    Works for files and folders alike (whatever the block creates at the yielded path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with '+dirty' when it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


@functools.cache  # installed versions do not change under a running job; each of its points records them
def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(config: dict | None = None, seed: int | None = None) -> dict[str, Any]:
    """What is recorded next to every result: config, seed, package versions and git commit."""
    return {"config": config, "seed": seed, "packages": dict(package_versions()), "git_commit": git_commit()}
