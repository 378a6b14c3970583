"""Exit labels stored once per backbone and emission rule, for every head that trains on them (docs/training.md).

A head job labels each batch from a full-depth pass and the emission rule's logits at every exit: the same labels
in each head job of a backbone, and most of a step's time on the CPU (0.6 of the 0.94 s of the embedded Mamba-2's
step; the heads themselves take 0.004-0.55 s). training/distill.build_label_cache runs that once over the training
and held-out sequences and stores, per exit and token, the two ranks every label rule and k derive from
(labels.label_ranks); a head job given the cache (train_heads --label-cache) then runs only the blocks up to its
deepest exit for the heads' inputs (models/emission.exit_hidden). The labels are those the head job would compute
itself (tests/test_label_cache.py), so are the heads. This module is the cache's file.

<out>/labels.safetensors: train_ids (N, L) and valid_ids (Nv, L) int32, the packed token sequences; train_ranks
(E, N, L, 2) and valid_ranks (E, Nv, L, 2) int16; with answers (decoding/answers.py: the full model's greedy answers,
for heads trained on them too) answers_ids (Na, Lmax) int32 right-padded with 0 and answers_ranks (E, Na, Lmax, 2),
each answer labelled in its own pass at its decode steps (elsewhere RANK_CAP: no label rule exits there); as metadata
the settings it was made with, the backbone's signature and provenance. A head job checks its own sequences against the stored ones (its training set is a
prefix of the cache's when it reads fewer tokens) and refuses a cache made for other settings or exits.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..artifacts import atomic_path
from ..decoding.answers import pad_answers
from ..models.backbone import signature
from .label_sharing import SHARED_SETTINGS
from .labels import labels_from_ranks

CACHE_FILE = "labels.safetensors"


def write_cache(out: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """<out>/labels.safetensors, atomically: the tensors of the module docstring, `meta` as JSON metadata."""
    with atomic_path(Path(out) / CACHE_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"cache": json.dumps(meta, default=str)})


def read_meta(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CACHE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"label cache {str(directory)!r} has no {CACHE_FILE}")
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["cache"])


def _same_file(there: str | None, here: str | None) -> bool:
    return there is not None and here is not None and os.path.abspath(there) == os.path.abspath(here)


def check_settings(meta: dict, directory, wanted: dict, exit_layers: list[int], backbone_config) -> None:
    """Refuse, naming the difference, a cache made for another backbone, other settings or other exits."""
    settings = meta["settings"]
    if meta["backbone"] != signature(backbone_config):
        raise ValueError(f"label cache {str(directory)!r} was made for backbone {meta['backbone']}, not "
                         f"{signature(backbone_config)}")
    diff = [f"{k}: {settings[k]!r} there, {wanted[k]!r} here" for k in SHARED_SETTINGS if settings[k] != wanted[k]]
    if settings["emission"] == "translator" and settings["label_source"] == "emitted" and not _same_file(
            settings["translators"], wanted["translators"]):
        diff.append(f"translators: {settings['translators']!r} there, {wanted['translators']!r} here")
    if wanted.get("answers_weight", 0) > 0 and not _same_file(settings.get("answers"), wanted["answers"]):
        diff.append(f"answers: {settings.get('answers')!r} there, {wanted['answers']!r} here")
    if diff:
        raise ValueError(f"label cache {str(directory)!r} was made with other settings ({'; '.join(diff)})")
    missing = sorted(set(exit_layers) - set(settings["exit_layers"]))
    if missing:
        raise ValueError(f"label cache {str(directory)!r} has no labels at exit layers {missing} "
                         f"(it has {settings['exit_layers']})")


class StoredLabels:
    """A label cache read back for one head job: its exits' labels under its rule and k, by sequence index."""

    def __init__(self, directory: str | os.PathLike, exit_layers: list[int], rule: str, k: int):
        self.meta = read_meta(directory)
        self.directory = directory
        stored = self.meta["settings"]["exit_layers"]
        tensors = load_file(str(Path(directory) / CACHE_FILE))
        rows = [stored.index(layer) for layer in exit_layers]
        self.ids = {split: tensors[f"{split}_ids"].long() for split in ("train", "valid")}  # (N, L)
        self.labels = {split: labels_from_ranks(tensors[f"{split}_ranks"][rows], rule, k)
                       for split in ("train", "valid")}  # (E, N, L)
        self.answer_ids = tensors.get("answers_ids")  # (Na, Lmax) or None
        self.answers = (labels_from_ranks(tensors["answers_ranks"][rows], rule, k)
                        if "answers_ranks" in tensors else None)  # (E, Na, Lmax)

    def answer_labels(self, i: int, length: int) -> torch.Tensor:
        """The labels (E, 1, length) of answer i, `length` tokens long."""
        return self.answers[:, i:i + 1, :length]

    def check_answers(self, answers) -> None:
        """The head job's answers [(ids (1, T), counted)] must be the ones the cache labelled."""
        if self.answer_ids is None:
            raise ValueError(f"label cache {str(self.directory)!r} holds no answers (label_cache --answers)")
        if not torch.equal(pad_answers(answers)[0], self.answer_ids):
            raise ValueError(f"label cache {str(self.directory)!r} holds other answers than this job's")

    def check_sequences(self, train: torch.Tensor, valid: torch.Tensor) -> None:
        """The head job's own sequences must be the cache's (the training ones a prefix of them)."""
        ids = self.ids["train"]
        if len(train) > len(ids) or not torch.equal(train, ids[: len(train)]):
            raise ValueError(f"label cache {str(self.directory)!r} holds other training sequences than this job's "
                             f"({len(ids)} stored, {len(train)} here): another text, tokenizer or token budget")
        if not torch.equal(valid, self.ids["valid"]):
            raise ValueError(f"label cache {str(self.directory)!r} holds other validation sequences than this job's")
