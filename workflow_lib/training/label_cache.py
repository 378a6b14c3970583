"""Exit labels stored once per backbone and emission rule, for every head that trains on them (docs/training.md).

A head job labels each batch from a full-depth pass and the emission rule's logits at every exit: the same labels
in each head job of a backbone, and most of a step's time on the CPU (0.6 of the 0.94 s of the embedded Mamba-2's
step; the heads themselves take 0.004-0.55 s). `build_label_cache` runs that once over the training and held-out
sequences and stores, per exit and token, the two ranks every label rule and k derive from (labels.label_ranks); a
head job given the cache (train_heads --label-cache) then runs only the blocks up to its deepest exit for the heads'
inputs (models/emission.exit_hidden). The labels are those the head job would compute itself
(tests/test_label_cache.py), so are the heads. This module is the cache: its builder, its file and its reader.

<out>/labels.safetensors: train_ids (N, L) and valid_ids (Nv, L) int32, the packed token sequences; train_ranks
(E, N, L, 2) and valid_ranks (E, Nv, L, 2) int16; with answers (decoding/answers.py: the full model's greedy answers,
for heads trained on them too) answers_ids (Na, Lmax) int32 right-padded with 0 and answers_ranks (E, Na, Lmax, 2),
each answer labelled in its own pass at its decode steps (elsewhere RANK_CAP: no label rule exits there); as metadata
the settings it was made with, the backbone's signature and provenance. A head job checks its own sequences against the stored ones (its training set is a
prefix of the cache's when it reads fewer tokens) and refuses a cache made for other settings or exits.

With `store_inputs` the cache also holds the heads' inputs from the same pass, z = final_norm(h_l) in float32:
train_inputs (E, N, L, D), valid_inputs (E, Nv, L, D) and answers_inputs (E, P, D) at the answers' decode steps (in
answer order). A head job then runs no backbone pass at all for them: on the real-small setup every head job ran the
same blocks over the same text and answers again, most of its time. The answers' prompts are not stored (a head with
a recurrent state reads them: its job runs its own passes over the answers). Exits x tokens x hidden x 4 bytes: 463 MB
on SmolLM2's 30,720 + 13,312 tokens at 4 exits, far too much at the paper's scale, hence a setting.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..artifacts import atomic_path, provenance
from ..choices import DEFAULT_EMISSION
from ..decoding.answers import load_answers, pad_answers, read_answers_meta
from ..defaults import HEAD_TRAINING, SEED, VALID_TOKENS
from ..models.backbone import default_device, load_backbone, load_config, parts, resolve_exit_layers, signature
from ..models.translators import check_emission, load_translators
from .label_sharing import SHARED_SETTINGS
from .labels import RANK_CAP, autocast, check_labelling, exit_predictions, label_ranks, labels_from_ranks
from .text import check_schedule, check_text_file, load_text_tokenizer, read_sequences

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
        # the heads' inputs, when stored: (E, N, L, D) per split, (E, P, D) at the answers' decode steps
        self.inputs = {split: tensors[f"{split}_inputs"][rows] for split in ("train", "valid", "answers")
                       if f"{split}_inputs" in tensors}
        self.answer_offsets = None  # start of each answer's decode steps in inputs["answers"] (check_answers sets it)

    def answer_labels(self, i: int, length: int) -> torch.Tensor:
        """The labels (E, 1, length) of answer i, `length` tokens long."""
        return self.answers[:, i:i + 1, :length]

    def check_answers(self, answers) -> None:
        """The head job's answers [(ids (1, T), counted)] must be the ones the cache labelled."""
        if self.answer_ids is None:
            raise ValueError(f"label cache {str(self.directory)!r} holds no answers (label_cache --answers)")
        if not torch.equal(pad_answers(answers)[0], self.answer_ids):
            raise ValueError(f"label cache {str(self.directory)!r} holds other answers than this job's")
        counts = torch.tensor([int(counted.sum()) for _, counted in answers])  # (Na,)
        self.answer_offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # (Na + 1,)

    def answer_inputs(self, i: int) -> torch.Tensor | None:
        """The heads' inputs (E, P_i, D) at answer i's decode steps, None when the cache holds none."""
        if "answers" not in self.inputs:
            return None
        return self.inputs["answers"][:, self.answer_offsets[i]:self.answer_offsets[i + 1]]

    def check_sequences(self, train: torch.Tensor, valid: torch.Tensor) -> None:
        """The head job's own sequences must be the cache's (the training ones a prefix of them)."""
        ids = self.ids["train"]
        if len(train) > len(ids) or not torch.equal(train, ids[: len(train)]):
            raise ValueError(f"label cache {str(self.directory)!r} holds other training sequences than this job's "
                             f"({len(ids)} stored, {len(train)} here): another text, tokenizer or token budget")
        if not torch.equal(valid, self.ids["valid"]):
            raise ValueError(f"label cache {str(self.directory)!r} holds other validation sequences than this job's")


@dataclass
class LabelCacheConfig:
    backbone: str
    train_text: str
    valid_text: str
    out: str
    train_tokens: int  # training tokens labelled: the most any head job reads (its steps x batch_size x seq_len)
    exit_layers: list[int] | None = None  # None: default_exit_layers(n_layers)
    tokenizer: str | None = None  # None: the backbone folder's tokenizer
    emission: str = DEFAULT_EMISSION
    translators: str | None = None
    label_source: str = HEAD_TRAINING["label_source"]
    seq_len: int = HEAD_TRAINING["seq_len"]
    valid_tokens: int = VALID_TOKENS
    batch_size: int = HEAD_TRAINING["batch_size"]  # sequences per backbone pass (labels do not depend on it)
    answers: str | None = None  # answers file (decoding/answers.py) labelled too, for heads trained on answers
    store_inputs: bool = HEAD_TRAINING["store_inputs"]  # the heads' inputs z too (the module docstring)
    seed: int = SEED
    device: str | None = None


def validate_label_cache(cfg: LabelCacheConfig):
    """Every check that needs no weights; returns (backbone config, resolved exit layers)."""
    check_labelling(cfg.emission, cfg.label_source, cfg.translators)
    check_schedule(cfg, ("train_tokens", "valid_tokens", "batch_size"), rates=())
    for path, what in ((cfg.train_text, "training text"), (cfg.valid_text, "validation text")):
        check_text_file(path, what)
    if cfg.answers is not None:
        read_answers_meta(cfg.answers)
    config = load_config(cfg.backbone)
    return config, resolve_exit_layers(config, cfg.exit_layers)


def build_label_cache(cfg: LabelCacheConfig) -> dict:
    """Label the training and held-out sequences at every exit; write <out>/labels.safetensors atomically."""
    backbone_config, exit_layers = validate_label_cache(cfg)
    cfg = dataclasses.replace(cfg, exit_layers=exit_layers)
    tokenizer = load_text_tokenizer(cfg.backbone, cfg.tokenizer, backbone_config)
    sequences = {
        "train": read_sequences(cfg.train_text, tokenizer, cfg.train_tokens, cfg.seq_len, "training text"),  # (N, L)
        "valid": read_sequences(cfg.valid_text, tokenizer, cfg.valid_tokens, cfg.seq_len, "validation text"),  # (Nv, L)
    }
    device = torch.device(cfg.device) if cfg.device else default_device()
    model = load_backbone(cfg.backbone, device=device, seed=cfg.seed).eval().requires_grad_(False)
    translators = None
    if cfg.translators is not None:
        translators, _ = load_translators(cfg.translators, model.config, device=device,
                                          dtype=parts(model).final_norm.weight.dtype)
        check_emission(cfg.emission, translators, exit_layers)
    tensors = {}
    for split, ids in sequences.items():
        ranks, inputs = [], []
        for start in tqdm(range(0, len(ids), cfg.batch_size), desc=f"label {split}", mininterval=1.0):
            with autocast(device):  # as a head job's own labelling pass, so the same labels
                z, intermediate, full = exit_predictions(model, ids[start:start + cfg.batch_size].to(device),
                                                         exit_layers, cfg.emission, cfg.label_source, translators)
                ranks.append(label_ranks(intermediate, full).cpu())  # (E, B, L, 2)
                if cfg.store_inputs:
                    inputs.append(z.float().cpu())  # (E, B, L, D)
        tensors[f"{split}_ids"] = ids.to(torch.int32).contiguous()  # (N, L)
        tensors[f"{split}_ranks"] = torch.cat(ranks, 1).contiguous()  # (E, N, L, 2)
        if cfg.store_inputs:
            tensors[f"{split}_inputs"] = torch.cat(inputs, 1).contiguous()  # (E, N, L, D)
    if cfg.answers is not None:  # one pass per answer, unpadded, as the head job's own (answer_positions)
        answers = load_answers(cfg.answers, signature(backbone_config))
        shape = (len(exit_layers), len(answers), max(ids.shape[1] for ids, _ in answers), 2)
        ranks = torch.full(shape, RANK_CAP, dtype=torch.int16)  # (E, Na, Lmax, 2): set at the decode steps only
        inputs = []
        for i, (ids, counted) in enumerate(tqdm(answers, desc="label answers", mininterval=1.0)):
            with autocast(device):
                z, intermediate, full = exit_predictions(model, ids.to(device), exit_layers, cfg.emission,
                                                         cfg.label_source, translators, counted.to(device))
                ranks[:, i, :ids.shape[1]][:, counted[0]] = label_ranks(intermediate, full).cpu()  # (E, P, 2)
                if cfg.store_inputs:
                    inputs.append(z[:, 0, counted[0].to(z.device)].float().cpu())  # (E, P_i, D)
        tensors["answers_ranks"] = ranks
        tensors["answers_ids"] = pad_answers(answers)[0]  # (Na, Lmax)
        if cfg.store_inputs:
            tensors["answers_inputs"] = torch.cat(inputs, 1).contiguous()  # (E, P, D)
    settings = dataclasses.asdict(cfg)
    write_cache(cfg.out, tensors, {"settings": settings, "backbone": signature(backbone_config),
                                   "provenance": provenance(settings, cfg.seed)})
    splits = [*sequences, *(["answers"] if cfg.answers else [])]
    return {split: tuple(tensors[f"{split}_ranks"].shape) for split in splits}
