"""Distillation training of exit heads on a frozen backbone (docs/training.md).

One backbone pass per batch: forward hooks on the exit blocks capture h_l for every exit while the model
computes the oracle logits (models/emission.exit_states), so all exits of one head type train from that single
pass. Heads read z = final_norm(h_l); labels come from `labels.exit_labels` (top-k relaxation) applied to the
token each exit would emit under the backbone's emission rule (`emission`: last_block runs the last block on h_l
against the full-depth prefix, translator needs `translators`), or to the logit lens (`label_source: lens`). The `mamba` head sees whole
sequences through its parallel (chunked scan) forward.

Loss: 2-class cross-entropy per exit, combined by `mode`:
  joint_decay  the paper's "linearly decaying weights based on each classifier's position within the network":
               exits sorted from shallow to deep get weights proportional to E, E-1, ..., 1 (normalised to sum
               to 1), i.e. the EARLIEST exit weighs most. Read literally, the weight decays as the position
               grows; the early exits also see the fewest positive labels and gain the most compute when right.
  uniform      equal weights 1/E, one optimizer.
  individual   each exit its own AdamW and its own loss (and its own gradient clipping); still one backbone pass.

Resumable: every `checkpoint_every` steps the heads, optimizer states, RNG states and the step are written
atomically into <out>/checkpoint/state.safetensors (tensors; the rest as JSON in its metadata). The data order
is a pure function of (seed, step), so a run killed at any moment and restarted with the same command ends
with bit-identical weights. The finished heads and metrics are written into <out> file by file, each atomically,
and the checkpoint then removed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from ..artifacts import atomic_path, provenance, write_json
from ..data.schemas import read_corpus
from ..decoding.answers import load_answers, pad_answers, read_answers_meta
from ..models.backbone import (PRESET_PREFIX, architecture, default_device, default_exit_layers, load_backbone,
                               load_config, load_tokenizer, parts, signature)
from ..models.emission import emitted_logits, exit_hidden, exit_states
from ..models.heads import HEAD_TYPES, build_heads, save_heads
from ..choices import DEFAULT_LABEL_RULE, DEFAULT_LABEL_SOURCE, EMISSION_RULES, LABEL_SOURCES, TRAIN_MODES
from ..models.translators import check_emission, load_translators
from .head_specs import EXIT_LAYERS, TRAINING_KEYS
from .label_cache import StoredLabels, check_settings, read_meta, write_cache
from .labels import RANK_CAP, check_label_rule, exit_labels, label_ranks

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
METRICS_FILE = "metrics.json"
# Config keys that may differ between a killed run and its restart (they do not change the result).
RESUME_FREE_KEYS = ("checkpoint_every", "label_cache")


@dataclass
class TrainConfig:
    backbone: str
    head: str
    train_text: str
    valid_text: str
    out: str
    exit_layers: list[int] | None = None  # None: default_exit_layers(n_layers)
    tokenizer: str | None = None  # None: the backbone folder's tokenizer
    label_rule: str = DEFAULT_LABEL_RULE
    k: int = 1
    mode: str = "joint_decay"
    class_balance: bool = False
    balance_batches: int = 8  # training batches used to estimate the positive ratio for class balancing
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_train_tokens: int | None = None
    valid_tokens: int = 65536
    seed: int = 0
    checkpoint_every: int = 100  # 0: no checkpoints
    device: str | None = None
    head_options: dict = field(default_factory=dict)
    name: str | None = None  # the head spec's name (None: the head type), recorded with the heads
    emission: str = "last_block"  # how an exit emits its token (models/translators.EMISSION_RULES)
    translators: str | None = None  # translators folder, needed by the translator emission's labels
    label_source: str = DEFAULT_LABEL_SOURCE  # emitted: labels from the emission rule's token; lens: the logit lens
    label_cache: str | None = None  # labels stored by training/label_cache.py (None: each batch labelled here)
    answers: str | None = None  # answers file (decoding/answers.py) whose decode steps the heads also train on
    answers_weight: float = 0.0  # share of each step's loss on the answers (0: text alone; > 0 needs `answers`)


# ----------------------------------------------------------------------------------------------- data

def check_schedule(cfg, counts: tuple[str, ...], rates: tuple[str, ...] = ("lr",)) -> None:
    """The settings every distillation run shares: the `counts` >= 1, sequences of >= 2 tokens, the `rates` > 0
    (the label cache trains nothing: none)."""
    for name in counts:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {cfg.seq_len}")
    for name in rates:
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")


def check_labelling(cfg) -> None:
    """How a run labels (head training, the label cache): a known emission rule and label source, and the translators
    the translator rule's labels need."""
    if cfg.label_source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {cfg.label_source!r}; known: {', '.join(LABEL_SOURCES)}")
    if cfg.emission not in EMISSION_RULES:
        raise ValueError(f"unknown emission rule {cfg.emission!r}; known: {', '.join(EMISSION_RULES)}")
    if cfg.emission == "translator" and cfg.label_source == "emitted" and cfg.translators is None:
        raise ValueError("labels from the translator emission need the trained translators: pass --translators DIR")
    if cfg.translators is not None and not os.path.isdir(cfg.translators):
        raise FileNotFoundError(f"translators folder {cfg.translators!r} does not exist")


def check_answers(cfg) -> None:
    """The answers side of a fit (translators, heads): a weight in [0, 1), above 0 exactly when an answers file
    (decoding/answers.py) is given."""
    if not 0.0 <= cfg.answers_weight < 1.0:
        raise ValueError(f"answers_weight {cfg.answers_weight} is not in [0, 1): the text keeps a share of the fit")
    if (cfg.answers is not None) != (cfg.answers_weight > 0):
        raise ValueError(f"an answers file and answers_weight > 0 go together (answers {cfg.answers!r}, "
                         f"answers_weight {cfg.answers_weight})")
    if cfg.answers is not None:
        read_answers_meta(cfg.answers)  # there, and an answers file


def _check_text_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is empty")


def read_tokens(path: str, tokenizer, max_tokens: int | None, what: str) -> torch.Tensor:
    """The corpus as one stream <s> doc </s> <s> doc </s> ... (the framing pretraining used), up to `max_tokens`.

    Documents come from the data package's `read_corpus` (.txt: one per non-blank line; .jsonl: "text") and
    are tokenized in batches, stopping once the budget is reached (a large FineWeb sample is not read whole)."""
    _check_text_file(path, what)
    frame = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [],
             [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    ids: list[int] = []
    docs: list[str] = []

    def flush():
        for doc_ids in (tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []):
            ids.extend([*frame[0], *doc_ids, *frame[1]])
        docs.clear()

    for doc in read_corpus(path):
        docs.append(doc)
        if len(docs) == 256:
            flush()
            if max_tokens is not None and len(ids) >= max_tokens:
                break
    flush()
    tokens = torch.tensor(ids[:max_tokens] if max_tokens is not None else ids, dtype=torch.long)  # (N,)
    if tokens.numel() == 0:
        raise ValueError(f"{what} {path!r} contains no documents")
    return tokens


def pack(tokens: torch.Tensor, seq_len: int, path: str, what: str) -> torch.Tensor:
    """(N,) -> (N // seq_len, seq_len); the ragged tail is dropped."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise ValueError(f"{what} {path!r} has {tokens.numel()} tokens, fewer than one sequence of --seq-len {seq_len}")
    return tokens[: n * seq_len].view(n, seq_len)  # (n, L)


def batch_indices(step: int, batch_size: int, n_sequences: int, seed: int) -> torch.Tensor:
    """Sequence indices of training batch `step`: epoch e is a permutation seeded by (seed, e), so the order is
    reproducible and a resumed run needs no data-loader state."""
    flat = torch.arange(step * batch_size, (step + 1) * batch_size)  # (B,) positions in the endless stream
    epochs, offsets = flat // n_sequences, flat % n_sequences  # (B,), (B,)
    out = torch.empty_like(flat)  # (B,)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(n_sequences, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))  # (n,)
        mask = epochs == epoch  # (B,)
        out[mask] = perm[offsets[mask]]
    return out


# ------------------------------------------------------------------------------------------- training

def loss_weights(n_exits: int, mode: str) -> torch.Tensor:
    """Per-exit loss weights (E,), exits ordered from shallow to deep."""
    if mode == "joint_decay":
        w = torch.arange(n_exits, 0, -1, dtype=torch.float32)  # (E,): E, E-1, ..., 1
        return w / w.sum()
    if mode == "uniform":
        return torch.full((n_exits,), 1.0 / n_exits)
    if mode == "individual":
        return torch.ones(n_exits)  # each exit's loss drives only its own optimizer
    raise ValueError(f"unknown training mode {mode!r}; known: {', '.join(TRAIN_MODES)}")


def balanced_class_weights(pos_ratio: torch.Tensor) -> torch.Tensor:
    """(E,) positive ratios -> (E, 2) CE class weights, inverse to class frequency (each class weighs 1/2 overall)."""
    p = pos_ratio.clamp(1e-3, 1 - 1e-3)  # (E,): a class never seen still gets a finite weight
    return torch.stack([0.5 / (1 - p), 0.5 / p], dim=-1)  # (E, 2)


def autocast(device: torch.device):
    """bf16 on GPU (heads keep fp32 master weights); plain fp32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def exit_predictions(model: nn.Module, input_ids: torch.Tensor, exit_layers: list[int], emission: str,
                     label_source: str, translators: nn.Module | None = None, positions: torch.Tensor | None = None):
    """One full-depth pass over input_ids (B, T) -> z (E, B, T, D) = final_norm(h_l) per exit, the intermediate
    logits the labels compare (E, B, T, V): what the exit emits under `emission` (label_source emitted, models/
    emission.py) or the logit lens (label_source lens, the authors' label), and the full model's logits (B, T, V).
    With `positions` (bool (B, T); an answer's decode steps) the logits are (E, P, V) and (P, V) there only."""
    p = parts(model)
    states = exit_states(model, input_ids, exit_layers, positions)  # one full-depth pass
    z = torch.stack([p.final_norm(states.hidden[layer]) for layer in exit_layers])  # (E, B, T, D)
    if label_source == "lens":
        intermediate = p.lm_head(z if positions is None else z[:, positions])  # (E, B, T, V) or (E, P, V)
    else:
        emitted = emitted_logits(model, states, emission, translators, positions)
        intermediate = torch.stack([emitted[layer] for layer in exit_layers])  # (E, B, T, V) or (E, P, V)
    return z, intermediate, states.logits


class HeadTrainer:
    """Frozen backbone + one head per exit; `train_step` and `evaluate` each run the backbone once per batch."""

    def __init__(self, model: nn.Module, heads: nn.ModuleDict, cfg: TrainConfig,
                 class_weights: torch.Tensor | None = None, translators: nn.Module | None = None):
        self.model, self.heads, self.cfg = model.eval().requires_grad_(False), heads, cfg
        self.translators = translators
        self.parts = parts(model)
        self.exit_layers = sorted(int(k) for k in heads)
        self.device = next(model.parameters()).device
        self.heads.to(self.device).train()
        self.weights = loss_weights(len(self.exit_layers), cfg.mode).to(self.device)  # (E,)
        self.class_weights = None if class_weights is None else class_weights.to(self.device)  # (E, 2)
        self.answer_class_weights: torch.Tensor | None = None  # (E, 2), the answers' own (their positive ratio)
        groups = ([list(h.parameters()) for h in self._ordered(heads)] if cfg.mode == "individual"
                  else [list(heads.parameters())])
        self.optimizers = [torch.optim.AdamW(g, lr=cfg.lr, weight_decay=cfg.weight_decay) for g in groups]

    def _ordered(self, heads: nn.ModuleDict) -> list[nn.Module]:
        return [heads[str(layer)] for layer in self.exit_layers]

    @torch.no_grad()
    def backbone_pass(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> z (E, B, T, D) = final_norm(h_l) for every exit, labels (E, B, T), or (E, P) at
        `positions` (bool (B, T)) only.

        Without `labels` the pass labels the batch itself (`exit_predictions`, then the label rule); with them (stored
        by training/label_cache.py, (E, B, T)) only the blocks up to the deepest exit run."""
        with autocast(self.device):
            if labels is not None:
                hidden = exit_hidden(self.model, input_ids, self.exit_layers)  # blocks 0 .. deepest exit
                z = torch.stack([self.parts.final_norm(hidden[layer]) for layer in self.exit_layers])  # (E, B, T, D)
                labels = labels.to(self.device)
                return z, labels if positions is None else labels[:, positions]
            z, intermediate, oracle = exit_predictions(self.model, input_ids, self.exit_layers, self.cfg.emission,
                                                       self.cfg.label_source, self.translators, positions)
            return z, exit_labels(intermediate, oracle, self.cfg.label_rule, self.cfg.k)  # (E, B, T) or (E, P)

    def _exit_losses(self, heads: nn.ModuleDict, z: torch.Tensor, labels: torch.Tensor,
                     balanced: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-exit mean CE (E,) and the head logits (E, B, T, 2)."""
        losses, all_logits = [], []
        for i, head in enumerate(self._ordered(heads)):
            with autocast(self.device):
                logits = head(z[i]).float()  # (B, T, 2)
            weight = self.class_weights[i] if balanced and self.class_weights is not None else None  # (2,)
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels[i].flatten(), weight=weight))
            all_logits.append(logits)
        return torch.stack(losses), torch.stack(all_logits)  # (E,), (E, B, T, 2)

    def answer_positions(self, answers) -> tuple[torch.Tensor, torch.Tensor]:
        """Head logits (E, P, 2) and labels (E, P) at the decode steps of answers [(ids (1, T), counted (1, T),
        stored labels (E, 1, T) or None)], one backbone pass each (unpadded: the labels are those of the label
        cache, bit for bit). The heads read the whole sequence, the prompt too, as the decoder's heads do."""
        logits, gold = [], []
        for ids, counted, stored in answers:
            mask = counted.to(self.device)  # (1, T)
            z, labels = self.backbone_pass(ids.to(self.device), stored, mask)  # (E, 1, T, D), (E, P_i)
            with autocast(self.device):
                heads = self._ordered(self.heads)
                logits.append(torch.stack([head(z[i]).float()[mask] for i, head in enumerate(heads)]))  # (E, P_i, 2)
            gold.append(labels)  # (E, P_i)
        return torch.cat(logits, 1), torch.cat(gold, 1)  # (E, P, 2), (E, P)

    def train_step(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, answers=None) -> torch.Tensor:
        """One optimisation step on a batch (B, T), stored labels (E, B, T) if any, and with cfg.answers_weight > 0
        a batch of answers (answer_positions'); returns the per-exit training losses (E,)."""
        z, labels = self.backbone_pass(input_ids.to(self.device), labels)  # (E, B, T, D), (E, B, T)
        losses, _ = self._exit_losses(self.heads, z, labels, balanced=True)  # (E,)
        if answers:
            logits, gold = self.answer_positions(answers)  # (E, P, 2), (E, P)
            weights = self.answer_class_weights  # (E, 2) or None
            answer_losses = torch.stack([
                F.cross_entropy(logits[e], gold[e], weight=None if weights is None else weights[e])
                for e in range(len(self.exit_layers))])  # (E,)
            losses = (1 - self.cfg.answers_weight) * losses + self.cfg.answers_weight * answer_losses  # (E,)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        # Heads share no parameters, so one backward of the weighted sum gives each exit exactly its own gradient.
        (losses * self.weights).sum().backward()
        for opt in self.optimizers:
            params = [p for g in opt.param_groups for p in g["params"]]
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
            opt.step()
        return losses.detach()

    @torch.no_grad()
    def positive_ratio(self, batches) -> torch.Tensor:
        """Mean exit label per exit (E,) over an iterable of (input_ids (B, T), stored labels (E, B, T) or None)."""
        total = torch.zeros(len(self.exit_layers), device=self.device)  # (E,)
        count = 0
        for input_ids, stored in batches:
            labels = stored if stored is not None else self.backbone_pass(input_ids.to(self.device))[1]  # (E, B, T)
            total += labels.flatten(1).sum(1)  # (E,)
            count += labels[0].numel()
        return (total / count).cpu()

    @torch.no_grad()
    def answer_positive_ratio(self, batches) -> torch.Tensor:
        """Mean exit label per exit (E,) at the decode steps of an iterable of answer batches (answer_positions'):
        stored labels are read as they are, the others labelled by a pass (no head runs)."""
        gold = [stored.to(self.device)[:, counted.to(self.device)] if stored is not None
                else self.backbone_pass(ids.to(self.device), None, counted.to(self.device))[1]
                for batch in batches for ids, counted, stored in batch]  # (E, P_i) each
        return torch.cat(gold, 1).float().mean(1).cpu()

    @torch.no_grad()
    def evaluate(self, sequences: torch.Tensor, head_sets: dict[str, nn.ModuleDict],
                 stored: torch.Tensor | None = None) -> dict[str, dict]:
        """Held-out metrics per head set and exit (see `exit_metrics`) on sequences (N, T), with their stored labels
        (E, N, T) if any. One backbone pass per batch serves every head set."""
        for heads in head_sets.values():
            heads.to(self.device).eval()
        logits = {name: [] for name in head_sets}
        labels = []
        for start in range(0, len(sequences), self.cfg.batch_size):
            rows = slice(start, start + self.cfg.batch_size)
            z, gold = self.backbone_pass(sequences[rows].to(self.device),
                                         None if stored is None else stored[:, rows])  # (E, B, T, D), (E, B, T)
            labels.append(gold.flatten(1).cpu())  # (E, B*T)
            for name, heads in head_sets.items():
                _, head_logits = self._exit_losses(heads, z, gold, balanced=False)  # (E, B, T, 2)
                logits[name].append(head_logits.flatten(1, 2).cpu())  # (E, B*T, 2)
        self.heads.train()
        gold = torch.cat(labels, 1)  # (E, N)
        return {name: {str(layer): exit_metrics(out[e], gold[e]) for e, layer in enumerate(self.exit_layers)}
                for name, out in ((name, torch.cat(chunks, 1)) for name, chunks in logits.items())}


def _auroc(score: torch.Tensor, gold: torch.Tensor) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties given average ranks; None when
    only one class is present. Hand-written: a dozen lines do not justify a scikit-learn dependency."""
    n_pos, n = int(gold.sum()), gold.numel()
    if n_pos in (0, n):
        return None
    values, inverse, counts = score.double().unique(sorted=True, return_inverse=True, return_counts=True)  # (U,)
    first_rank = counts.cumsum(0) - counts + 1  # (U,): 1-based rank of each distinct score's first occurrence
    avg_rank = first_rank + (counts - 1) / 2  # (U,)
    rank_sum = avg_rank[inverse][gold.bool()].sum().item()  # sum over positives
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def exit_metrics(logits: torch.Tensor, gold: torch.Tensor) -> dict:
    """logits (N, 2), gold (N,) -> loss (unweighted CE), accuracy, precision, recall, F1 (positive class = exit,
    decided at p_exit >= 0.5), AUROC of p_exit (threshold-free: the decoder sweeps the threshold), the
    positive-label ratio and the predicted exit ratio."""
    n = gold.numel()
    pred, g = logits.argmax(-1).bool(), gold.bool()  # (N,), (N,)
    tp, fp, fn = (pred & g).sum().item(), (pred & ~g).sum().item(), (~pred & g).sum().item()
    precision = tp / (tp + fp) if tp + fp else 0.0  # no predicted exits: precision 0 (sklearn's zero_division=0)
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"loss": F.cross_entropy(logits, gold).item(), "accuracy": (pred == g).float().mean().item(),
            "precision": precision, "recall": recall, "f1": f1, "auroc": _auroc(logits.softmax(-1)[:, 1], gold),
            "positive_ratio": (tp + fn) / n, "predicted_exit_ratio": (tp + fp) / n, "tokens": n}


# ----------------------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: Path, trainer: HeadTrainer, step: int, state: dict) -> None:
    """Heads, optimizer states, RNG states and step in ONE safetensors file, replaced atomically."""
    tensors = {f"heads.{k}": v.detach().cpu().contiguous() for k, v in trainer.heads.state_dict().items()}
    groups = []
    for i, opt in enumerate(trainer.optimizers):
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


def load_checkpoint(path: Path, trainer: HeadTrainer) -> dict:
    """Restore heads, optimizers and RNG from `path`; return its metadata (step, config, ...)."""
    meta = read_checkpoint_meta(path)
    tensors = load_file(str(path))
    trainer.heads.load_state_dict({k[len("heads."):]: v for k, v in tensors.items() if k.startswith("heads.")})
    for i, opt in enumerate(trainer.optimizers):
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


# ------------------------------------------------------------------------------------------ entry point

def _backbone_config(name: str):
    """The backbone's config without loading weights (cheap validation before any real work)."""
    return load_config(name)


def _load_tokenizer(cfg: TrainConfig, backbone_config):
    source = cfg.tokenizer or cfg.backbone
    if source.startswith(PRESET_PREFIX):
        raise ValueError(f"backbone {cfg.backbone!r} is a random preset without a tokenizer: pass --tokenizer PATH")
    tokenizer = load_tokenizer(source)
    if len(tokenizer) > backbone_config.vocab_size:
        raise ValueError(f"tokenizer {source!r} has {len(tokenizer)} tokens, more than the backbone's "
                         f"vocab_size {backbone_config.vocab_size}")
    return tokenizer


def validate(cfg: TrainConfig):
    """Every check that needs no weights; returns (backbone config, resolved exit layers)."""
    if cfg.head not in HEAD_TYPES or not HEAD_TYPES[cfg.head].trainable:
        trainable = sorted(n for n, c in HEAD_TYPES.items() if c.trainable)
        raise ValueError(f"unknown or untrainable head type {cfg.head!r}; trainable: {', '.join(trainable)}")
    try:  # the options the head's constructor takes
        inspect.signature(HEAD_TYPES[cfg.head]).bind(1, **cfg.head_options)
    except TypeError as e:
        raise ValueError(f"head type {cfg.head!r} with options {cfg.head_options}: {e}") from None
    check_label_rule(cfg.label_rule, cfg.k)
    check_labelling(cfg)
    check_answers(cfg)
    if cfg.mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {cfg.mode!r}; known: {', '.join(TRAIN_MODES)}")
    check_schedule(cfg, ("steps", "batch_size", "balance_batches", "valid_tokens"))
    if cfg.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    if cfg.max_train_tokens is not None and cfg.max_train_tokens < cfg.seq_len:
        raise ValueError(f"max_train_tokens {cfg.max_train_tokens} is less than one sequence of {cfg.seq_len}")
    for path, what in ((cfg.train_text, "training text"), (cfg.valid_text, "validation text")):
        _check_text_file(path, what)
        read_corpus(path)  # checks the format (suffix) now; documents are read later
    if os.path.abspath(cfg.train_text) == os.path.abspath(cfg.valid_text):
        raise ValueError(f"validation text must differ from the training text (both {cfg.train_text!r})")
    config = _backbone_config(cfg.backbone)
    exit_layers = resolve_exit_layers(config, cfg.exit_layers)
    if cfg.label_cache is not None:
        check_settings(read_meta(cfg.label_cache), cfg.label_cache, dataclasses.asdict(cfg), exit_layers, config)
    return config, exit_layers


def resolve_exit_layers(config, requested: list[int] | None) -> list[int]:
    """The exit layers asked for (None: the default 4 in the second half), checked against the backbone."""
    architecture(config)
    n = config.num_hidden_layers
    exit_layers = sorted(requested) if requested else default_exit_layers(n)
    bad = [layer for layer in exit_layers if not 0 <= layer <= n - 2]
    if bad or len(set(exit_layers)) != len(exit_layers):
        raise ValueError(f"exit layers {exit_layers} invalid for a {n}-block backbone: each must be a distinct "
                         f"block index in 0..{n - 2} (the last block always runs)")
    return exit_layers


def write_rule_heads(backbone: str, head: str, out: str, exit_layers: list[int] | None = None,
                     head_options: dict | None = None, name: str | None = None) -> list[int]:
    """A zero-parameter exit rule's heads folder (heads.json only: nothing to train, no weights), atomically;
    returns its exit layers. Only the backbone's config is read. `name`: the head spec's (default: the type)."""
    if head not in HEAD_TYPES or HEAD_TYPES[head].trainable:
        rules = sorted(n for n, c in HEAD_TYPES.items() if not c.trainable)
        raise ValueError(f"{head!r} is not a zero-parameter exit rule; rules: {', '.join(rules)}")
    config = _backbone_config(backbone)
    layers = resolve_exit_layers(config, exit_layers)
    heads = build_heads(head, config.hidden_size, layers, **(head_options or {}))  # checks the options
    settings = {"backbone": backbone, "head": head, "exit_layers": layers, "head_options": head_options or {}}
    spec = {"name": name or head, "type": head, "options": head_options or {}, "training": {EXIT_LAYERS: layers}}
    save_heads(out, heads, config, {"spec": spec, "backbone_id": backbone, "head_type": head, "trained": False,
                                    "provenance": provenance(settings, 0)})
    return layers


# ------------------------------------------------------------------------------------------ label cache

@dataclass
class LabelCacheConfig:
    backbone: str
    train_text: str
    valid_text: str
    out: str
    train_tokens: int  # training tokens labelled: the most any head job reads (its steps x batch_size x seq_len)
    exit_layers: list[int] | None = None  # None: default_exit_layers(n_layers)
    tokenizer: str | None = None  # None: the backbone folder's tokenizer
    emission: str = "last_block"
    translators: str | None = None
    label_source: str = "emitted"
    seq_len: int = 256
    valid_tokens: int = 65536
    batch_size: int = 8  # sequences per backbone pass (labels do not depend on it)
    answers: str | None = None  # answers file (decoding/answers.py) labelled too, for heads trained on answers
    seed: int = 0
    device: str | None = None


def validate_label_cache(cfg: LabelCacheConfig):
    """Every check that needs no weights; returns (backbone config, resolved exit layers)."""
    check_labelling(cfg)
    check_schedule(cfg, ("train_tokens", "valid_tokens", "batch_size"), rates=())
    for path, what in ((cfg.train_text, "training text"), (cfg.valid_text, "validation text")):
        _check_text_file(path, what)
    if cfg.answers is not None:
        read_answers_meta(cfg.answers)
    config = _backbone_config(cfg.backbone)
    return config, resolve_exit_layers(config, cfg.exit_layers)


def build_label_cache(cfg: LabelCacheConfig) -> dict:
    """Label the training and held-out sequences at every exit; write <out>/labels.safetensors atomically."""
    backbone_config, exit_layers = validate_label_cache(cfg)
    cfg = dataclasses.replace(cfg, exit_layers=exit_layers)
    tokenizer = _load_tokenizer(cfg, backbone_config)
    sequences = {
        "train": pack(read_tokens(cfg.train_text, tokenizer, cfg.train_tokens, "training text"), cfg.seq_len,
                      cfg.train_text, "training text"),  # (N, L)
        "valid": pack(read_tokens(cfg.valid_text, tokenizer, cfg.valid_tokens, "validation text"), cfg.seq_len,
                      cfg.valid_text, "validation text"),  # (Nv, L)
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
        ranks = []
        for start in tqdm(range(0, len(ids), cfg.batch_size), desc=f"label {split}", mininterval=1.0):
            with autocast(device):  # as a head job's own labelling pass, so the same labels
                _, intermediate, oracle = exit_predictions(model, ids[start:start + cfg.batch_size].to(device),
                                                           exit_layers, cfg.emission, cfg.label_source, translators)
                ranks.append(label_ranks(intermediate, oracle).cpu())  # (E, B, L, 2)
        tensors[f"{split}_ids"] = ids.to(torch.int32).contiguous()  # (N, L)
        tensors[f"{split}_ranks"] = torch.cat(ranks, 1).contiguous()  # (E, N, L, 2)
    if cfg.answers is not None:  # one pass per answer, unpadded, as the head job's own (answer_positions)
        answers = load_answers(cfg.answers, signature(backbone_config))
        shape = (len(exit_layers), len(answers), max(ids.shape[1] for ids, _ in answers), 2)
        ranks = torch.full(shape, RANK_CAP, dtype=torch.int16)  # (E, Na, Lmax, 2): set at the decode steps only
        for i, (ids, counted) in enumerate(tqdm(answers, desc="label answers", mininterval=1.0)):
            with autocast(device):
                _, intermediate, oracle = exit_predictions(model, ids.to(device), exit_layers, cfg.emission,
                                                           cfg.label_source, translators, counted.to(device))
                ranks[:, i, :ids.shape[1]][:, counted[0]] = label_ranks(intermediate, oracle).cpu()  # (E, P, 2)
        tensors["answers_ranks"] = ranks
        tensors["answers_ids"] = pad_answers(answers)[0]  # (Na, Lmax)
    settings = dataclasses.asdict(cfg)
    write_cache(cfg.out, tensors, {"settings": settings, "backbone": signature(backbone_config),
                                   "provenance": provenance(settings, cfg.seed)})
    splits = [*sequences, *(["answers"] if cfg.answers else [])]
    return {split: tuple(tensors[f"{split}_ranks"].shape) for split in splits}


def _check_resume(meta: dict, cfg: TrainConfig, backbone_config, ckpt: Path) -> None:
    if meta["backbone"] != signature(backbone_config):
        raise ValueError(f"checkpoint {str(ckpt)!r} holds heads built for backbone {meta['backbone']}, not for "
                         f"{cfg.backbone!r} {signature(backbone_config)}; remove it or choose another --out")
    old, new = meta["config"], dataclasses.asdict(cfg)
    diff = sorted(k for k in new if k not in RESUME_FREE_KEYS and old.get(k) != new[k])
    if diff:
        raise ValueError(f"checkpoint {str(ckpt)!r} was written with a different configuration "
                         f"({', '.join(f'{k}: {old.get(k)!r} -> {new[k]!r}' for k in diff)}); "
                         f"rerun the same command to resume, or remove it")


def train_heads(cfg: TrainConfig) -> dict:
    """Train one head type at all exits; write heads + metrics.json to cfg.out atomically; return the metrics."""
    backbone_config, exit_layers = validate(cfg)
    cfg = dataclasses.replace(cfg, exit_layers=exit_layers)
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    meta = read_checkpoint_meta(ckpt) if ckpt.is_file() else None
    if meta is not None:
        _check_resume(meta, cfg, backbone_config, ckpt)
    tokenizer = _load_tokenizer(cfg, backbone_config)
    needed = cfg.steps * cfg.batch_size * cfg.seq_len  # tokens the whole run consumes (one epoch if available)
    budget = min(needed, cfg.max_train_tokens) if cfg.max_train_tokens else needed
    train = pack(read_tokens(cfg.train_text, tokenizer, budget, "training text"), cfg.seq_len, cfg.train_text,
                 "training text")  # (N, L)
    valid = pack(read_tokens(cfg.valid_text, tokenizer, cfg.valid_tokens, "validation text"), cfg.seq_len,
                 cfg.valid_text, "validation text")  # (Nv, L)

    answers = load_answers(cfg.answers, signature(backbone_config)) if cfg.answers_weight > 0 else []
    stored = None
    if cfg.label_cache is not None:
        stored = StoredLabels(cfg.label_cache, exit_layers, cfg.label_rule, cfg.k)
        stored.check_sequences(train, valid)
        if answers:
            stored.check_answers(answers)

    device = torch.device(cfg.device) if cfg.device else default_device()
    model = load_backbone(cfg.backbone, device=device, seed=cfg.seed)
    d = model.config.hidden_size
    heads = build_heads(cfg.head, d, exit_layers, seed=cfg.seed, **cfg.head_options).float()
    initial = build_heads(cfg.head, d, exit_layers, seed=cfg.seed, **cfg.head_options).float()  # baseline
    translators = None
    if cfg.translators is not None:
        translators, _ = load_translators(cfg.translators, model.config, device=device,
                                          dtype=parts(model).final_norm.weight.dtype)
        check_emission(cfg.emission, translators, exit_layers)
    trainer = HeadTrainer(model, heads, cfg, translators=translators)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = batch_indices(step, cfg.batch_size, len(train), cfg.seed)  # (B,)
        return train[rows], None if stored is None else stored.labels["train"][:, rows]  # (B, L), (E, B, L)

    def answer_batch(step: int) -> list:
        """cfg.batch_size answers in their own seeded order: [(ids (1, T), counted (1, T), labels (E, 1, T) or None)]."""
        if not answers:
            return []
        return [(*answers[i], None if stored is None else stored.answer_labels(i, answers[i][0].shape[1]))
                for i in batch_indices(step, cfg.batch_size, len(answers), cfg.seed).tolist()]

    if meta is not None:
        meta = load_checkpoint(ckpt, trainer)
        start, pos_ratio = meta["step"], torch.tensor(meta["train_positive_ratio"])
        answer_ratio = torch.tensor(meta["answers_positive_ratio"]) if answers else None
        print(f"resuming from step {start} ({ckpt})", file=sys.stderr)
    else:
        start = 0
        # The training labels' positive ratio (first training batches, in training order): reported, and
        # used for class balancing.
        pos_ratio = trainer.positive_ratio(batch(s) for s in range(min(cfg.balance_batches, cfg.steps)))  # (E,)
        first = range(min(cfg.balance_batches, cfg.steps))
        answer_ratio = (trainer.answer_positive_ratio(answer_batch(s) for s in first)
                        if answers else None)  # (E,): the answers are balanced on their own ratio
    if cfg.class_balance:
        trainer.class_weights = balanced_class_weights(pos_ratio).to(trainer.device)  # (E, 2)
        if answers:
            trainer.answer_class_weights = balanced_class_weights(answer_ratio).to(trainer.device)  # (E, 2)

    ckpt_state = {"config": dataclasses.asdict(cfg), "backbone": signature(backbone_config),
                  "train_positive_ratio": pos_ratio.tolist(),
                  "answers_positive_ratio": None if answer_ratio is None else answer_ratio.tolist()}
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {cfg.head} heads",
               file=sys.stderr, mininterval=1.0)
    for step in bar:
        losses = trainer.train_step(*batch(step), answer_batch(step))  # (E,)
        bar.set_postfix(loss=f"{losses.mean().item():.4f}", refresh=False)
        done = step + 1
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(ckpt, trainer, done, ckpt_state)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bar.close()

    evaluation = trainer.evaluate(valid, {"trained": heads, "untrained": initial},
                                  None if stored is None else stored.labels["valid"])
    trained_tokens = (cfg.steps - start) * cfg.batch_size * cfg.seq_len
    metrics = {
        "exit_layers": exit_layers,
        "trained": evaluation["trained"],
        "untrained": evaluation["untrained"],
        "train_positive_ratio": dict(zip(map(str, exit_layers), pos_ratio.tolist())),
        "class_weights": None if trainer.class_weights is None else
        dict(zip(map(str, exit_layers), trainer.class_weights.cpu().tolist())),
        "train_sequences": len(train),
        "answers": None if not answers else {
            "file": os.path.abspath(cfg.answers), "weight": cfg.answers_weight, "sequences": len(answers),
            "positions": sum(int(c.sum()) for _, c in answers),
            "train_positive_ratio": dict(zip(map(str, exit_layers), answer_ratio.tolist()))},
        "train_tokens_seen": cfg.steps * cfg.batch_size * cfg.seq_len,
        "epochs": cfg.steps * cfg.batch_size / len(train),
        "valid_tokens": valid.numel(),
        "throughput": {"tokens": trained_tokens, "seconds": seconds,
                       "tokens_per_second": trained_tokens / seconds if seconds > 0 else math.nan,
                       "resumed_from_step": start, "device": str(trainer.device)},
    }
    metadata = {
        # What the pipeline's head spec says, the constructor options apart from the training settings.
        "spec": {"name": cfg.name or cfg.head, "type": cfg.head, "options": cfg.head_options,
                 "training": {**{k: getattr(cfg, k) for k in TRAINING_KEYS}, EXIT_LAYERS: exit_layers}},
        "backbone_id": cfg.backbone, "loss_weights": trainer.weights.cpu().tolist(),
        # The emission rule the labels follow (the decoder must emit by the same rule) and where they came from.
        "emission": cfg.emission, "label_source": cfg.label_source,
        "translators": os.path.abspath(cfg.translators) if cfg.translators else None,
        "data": {"train_text": os.path.abspath(cfg.train_text), "valid_text": os.path.abspath(cfg.valid_text),
                 "tokenizer": cfg.tokenizer or cfg.backbone},
        "seed": cfg.seed, "provenance": provenance(dataclasses.asdict(cfg), cfg.seed),
    }
    # file by file into <out> (not one rename of the folder: it may hold another emission rule's heads), heads.json
    # before metrics.json, then the checkpoint goes
    save_heads(out, heads.cpu(), model.config, metadata)
    write_json(out / METRICS_FILE, {"metrics": metrics, "provenance": metadata["provenance"]})
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return metrics
