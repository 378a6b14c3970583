"""Distillation training of exit heads on a frozen backbone (docs/training.md): the trainer and `train_heads`.

One backbone pass per batch: forward hooks on the exit blocks capture h_l for every exit while the model
computes the full model's logits (labels.exit_predictions), so all exits of one head type train from that single
pass. Heads read z = final_norm(h_l); labels come from `labels.exit_labels` (top-k relaxation) applied to the
token each exit would emit under the backbone's emission rule (`emission`: last_block runs the last block on h_l
against the full-depth prefix, translator needs `translators`), or to the logit lens (`label_source: lens`); with a
label cache (label_cache.py) they are read instead and only the blocks up to the deepest exit run. The `mamba` head
sees whole sequences through its parallel (chunked scan) forward.

Loss: 2-class cross-entropy per exit, combined by `mode` (losses.loss_weights):
  joint_decay  the paper's "linearly decaying weights based on each classifier's position within the network":
               exits sorted from shallow to deep get weights proportional to E, E-1, ..., 1 (normalised to sum
               to 1), i.e. the EARLIEST exit weighs most. Read literally, the weight decays as the position
               grows; the early exits also see the fewest positive labels and gain the most compute when right.
  uniform      equal weights 1/E, one optimizer.
  individual   each exit its own AdamW and its own loss (and its own gradient clipping); still one backbone pass.

Resumable (checkpoints.py): a run killed at any moment and restarted with the same command ends with bit-identical
weights. The finished heads and metrics (metrics.py) are written into <out> file by file, each atomically, and the
checkpoint then removed. An untrained head type (softmax, saturation: zero parameters) gets its heads.json from
`write_untrained_heads` instead.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..artifacts import provenance, write_json
from ..choices import DEFAULT_EMISSION, TRAIN_MODES
from ..data.formats import read_corpus
from ..decoding.answers import load_answers
from ..defaults import HEAD_TRAINING, SEED, VALID_TOKENS
from ..models.backbone import default_device, load_backbone, load_config, parts, resolve_exit_layers, signature
from ..models.emission import exit_hidden
from ..models.heads import HEAD_TYPES, build_heads, save_heads, stateful
from ..models.translators import check_emission, load_translators
from .checkpoints import (CHECKPOINT_DIR, CHECKPOINT_FILE, check_resume, load_checkpoint, read_checkpoint_meta,
                          save_checkpoint)
from .head_specs import EXIT_LAYERS, TRAINING_KEYS
from .label_cache import StoredLabels, check_settings, read_meta
from .labels import autocast, check_label_rule, check_labelling, exit_labels, exit_predictions
from .losses import balanced_class_weights, loss_weights
from .metrics import exit_metrics
from .text import batch_indices, check_answers, check_schedule, check_text_file, load_text_tokenizer, read_sequences

METRICS_FILE = "metrics.json"


@dataclass
class TrainConfig:
    backbone: str
    head: str
    train_text: str
    valid_text: str
    out: str
    exit_layers: list[int] | None = None  # None: default_exit_layers(n_layers)
    tokenizer: str | None = None  # None: the backbone folder's tokenizer
    label_rule: str = HEAD_TRAINING["label_rule"]
    k: int = HEAD_TRAINING["k"]
    mode: str = HEAD_TRAINING["mode"]
    class_balance: bool = HEAD_TRAINING["class_balance"]
    balance_batches: int = 8  # training batches used to estimate the positive ratio for class balancing
    steps: int = HEAD_TRAINING["steps"]
    batch_size: int = HEAD_TRAINING["batch_size"]
    seq_len: int = HEAD_TRAINING["seq_len"]
    lr: float = HEAD_TRAINING["lr"]
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_train_tokens: int | None = None
    valid_tokens: int = VALID_TOKENS
    seed: int = SEED
    checkpoint_every: int = 100  # 0: no checkpoints
    device: str | None = None
    head_options: dict = field(default_factory=dict)
    name: str | None = None  # the head spec's name (None: the head type), recorded with the heads
    emission: str = DEFAULT_EMISSION  # how an exit emits its token (choices.EMISSION_RULES)
    translators: str | None = None  # translators folder, needed by the translator emission's labels
    label_source: str = HEAD_TRAINING["label_source"]  # emitted: the emission rule's token; lens: the logit lens
    label_cache: str | None = None  # labels stored by training/label_cache.py (None: each batch labelled here)
    answers: str | None = None  # answers file (decoding/answers.py) whose decode steps the heads also train on
    answers_weight: float = 0.0  # share of each step's loss on the answers (0: text alone; > 0 needs `answers`)


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
        self.recurrent = any(stateful(h) for h in heads.values())  # its heads read whole sequences, prompts too
        groups = ([list(h.parameters()) for h in self._ordered(heads)] if cfg.mode == "individual"
                  else [list(heads.parameters())])
        self.optimizers = [torch.optim.AdamW(g, lr=cfg.lr, weight_decay=cfg.weight_decay) for g in groups]

    def _ordered(self, heads: nn.ModuleDict) -> list[nn.Module]:
        return [heads[str(layer)] for layer in self.exit_layers]

    @torch.no_grad()
    def backbone_pass(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None,
                      inputs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, T) -> z (E, B, T, D) = final_norm(h_l) for every exit, labels (E, B, T), or (E, P) at
        `positions` (bool (B, T)) only.

        Without `labels` the pass labels the batch itself (`exit_predictions`, then the label rule); with them (stored
        by training/label_cache.py, (E, B, T)) only the blocks up to the deepest exit run, and none with the stored
        `inputs` z (E, B, T, D) too."""
        if inputs is not None:
            return inputs.to(self.device), labels.to(self.device)
        with autocast(self.device):
            if labels is not None:
                hidden = exit_hidden(self.model, input_ids, self.exit_layers)  # blocks 0 .. deepest exit
                z = torch.stack([self.parts.final_norm(hidden[layer]) for layer in self.exit_layers])  # (E, B, T, D)
                labels = labels.to(self.device)
                return z, labels if positions is None else labels[:, positions]
            z, intermediate, full = exit_predictions(self.model, input_ids, self.exit_layers, self.cfg.emission,
                                                     self.cfg.label_source, self.translators, positions)
            return z, exit_labels(intermediate, full, self.cfg.label_rule, self.cfg.k)  # (E, B, T) or (E, P)

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
        stored labels (E, 1, T) or None, stored inputs (E, P_i, D) or None)], one backbone pass each (unpadded: the
        labels are those of the label cache, bit for bit) unless the inputs are stored. A head with a recurrent state
        reads the whole sequence, the prompt too, as the decoder's heads do; the others read the decode steps only,
        stored or not (the same rows either way, so the same bits)."""
        logits, gold = [], []
        heads = self._ordered(self.heads)
        for ids, counted, stored, inputs in answers:
            mask = counted.to(self.device)  # (1, T)
            if inputs is not None and not self.recurrent:
                z, labels = inputs.to(self.device), stored.to(self.device)[:, mask]  # (E, P_i, D), (E, P_i)
            else:
                z, labels = self.backbone_pass(ids.to(self.device), stored, mask)  # (E, 1, T, D), (E, P_i)
                z = z if self.recurrent else z[:, mask]  # (E, P_i, D)
            with autocast(self.device):
                out = [head(z[i]).float() for i, head in enumerate(heads)]  # (1, T, 2) or (P_i, 2) each
                logits.append(torch.stack([o[mask] if self.recurrent else o for o in out]))  # (E, P_i, 2)
            gold.append(labels)  # (E, P_i)
        return torch.cat(logits, 1), torch.cat(gold, 1)  # (E, P, 2), (E, P)

    def train_step(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                   inputs: torch.Tensor | None = None, answers=None) -> torch.Tensor:
        """One optimisation step on a batch (B, T), stored labels (E, B, T) and inputs (E, B, T, D) if any, and with
        cfg.answers_weight > 0 a batch of answers (answer_positions'); returns the per-exit training losses (E,)."""
        z, labels = self.backbone_pass(input_ids.to(self.device), labels, inputs=inputs)  # (E, B, T, D), (E, B, T)
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
        for input_ids, stored, _ in batches:
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
                for batch in batches for ids, counted, stored, _ in batch]  # (E, P_i) each
        return torch.cat(gold, 1).float().mean(1).cpu()

    @torch.no_grad()
    def evaluate(self, sequences: torch.Tensor, head_sets: dict[str, nn.ModuleDict],
                 stored: torch.Tensor | None = None, inputs: torch.Tensor | None = None) -> dict[str, dict]:
        """Held-out metrics per head set and exit (see `exit_metrics`) on sequences (N, T), with their stored labels
        (E, N, T) and inputs (E, N, T, D) if any. One backbone pass per batch (or none) serves every head set."""
        for heads in head_sets.values():
            heads.to(self.device).eval()
        logits = {name: [] for name in head_sets}
        labels = []
        for start in range(0, len(sequences), self.cfg.batch_size):
            rows = slice(start, start + self.cfg.batch_size)
            z, gold = self.backbone_pass(sequences[rows].to(self.device), None if stored is None else stored[:, rows],
                                         inputs=None if inputs is None else inputs[:, rows])  # (E, B, T, D), (E, B, T)
            labels.append(gold.flatten(1).cpu())  # (E, B*T)
            for name, heads in head_sets.items():
                _, head_logits = self._exit_losses(heads, z, gold, balanced=False)  # (E, B, T, 2)
                logits[name].append(head_logits.flatten(1, 2).cpu())  # (E, B*T, 2)
        self.heads.train()
        gold = torch.cat(labels, 1)  # (E, N)
        return {name: {str(layer): exit_metrics(out[e], gold[e]) for e, layer in enumerate(self.exit_layers)}
                for name, out in ((name, torch.cat(chunks, 1)) for name, chunks in logits.items())}


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
    check_labelling(cfg.emission, cfg.label_source, cfg.translators)
    check_answers(cfg.answers, cfg.answers_weight)
    if cfg.mode not in TRAIN_MODES:
        raise ValueError(f"unknown training mode {cfg.mode!r}; known: {', '.join(TRAIN_MODES)}")
    check_schedule(cfg, ("steps", "batch_size", "balance_batches", "valid_tokens"))
    if cfg.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {cfg.checkpoint_every}")
    if cfg.max_train_tokens is not None and cfg.max_train_tokens < cfg.seq_len:
        raise ValueError(f"max_train_tokens {cfg.max_train_tokens} is less than one sequence of {cfg.seq_len}")
    for path, what in ((cfg.train_text, "training text"), (cfg.valid_text, "validation text")):
        check_text_file(path, what)
        read_corpus(path)  # checks the format (suffix) now; documents are read later
    if os.path.abspath(cfg.train_text) == os.path.abspath(cfg.valid_text):
        raise ValueError(f"validation text must differ from the training text (both {cfg.train_text!r})")
    config = load_config(cfg.backbone)
    exit_layers = resolve_exit_layers(config, cfg.exit_layers)
    if cfg.label_cache is not None:
        check_settings(read_meta(cfg.label_cache), cfg.label_cache, dataclasses.asdict(cfg), exit_layers, config)
    return config, exit_layers


def write_untrained_heads(backbone: str, head: str, out: str, exit_layers: list[int] | None = None,
                          head_options: dict | None = None, name: str | None = None) -> list[int]:
    """An untrained head's folder (a zero-parameter type: heads.json only, nothing to train, no weights), atomically;
    returns its exit layers. Only the backbone's config is read. `name`: the head spec's (default: the type)."""
    if head not in HEAD_TYPES or HEAD_TYPES[head].trainable:
        untrained = sorted(n for n, c in HEAD_TYPES.items() if not c.trainable)
        raise ValueError(f"{head!r} is not an untrained head type; untrained: {', '.join(untrained)}")
    config = load_config(backbone)
    layers = resolve_exit_layers(config, exit_layers)
    heads = build_heads(head, config.hidden_size, layers, **(head_options or {}))  # checks the options
    settings = {"backbone": backbone, "head": head, "exit_layers": layers, "head_options": head_options or {}}
    spec = {"name": name or head, "type": head, "options": head_options or {}, "training": {EXIT_LAYERS: layers}}
    save_heads(out, heads, config, {"spec": spec, "backbone_id": backbone, "head_type": head, "trained": False,
                                    "provenance": provenance(settings, 0)})
    return layers


def train_heads(cfg: TrainConfig) -> dict:
    """Train one head type at all exits; write heads + metrics.json to cfg.out atomically; return the metrics."""
    backbone_config, exit_layers = validate(cfg)
    cfg = dataclasses.replace(cfg, exit_layers=exit_layers)
    out = Path(cfg.out)
    ckpt = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    meta = read_checkpoint_meta(ckpt) if ckpt.is_file() else None
    if meta is not None:
        check_resume(meta, dataclasses.asdict(cfg), cfg.backbone, signature(backbone_config), ckpt)
    tokenizer = load_text_tokenizer(cfg.backbone, cfg.tokenizer, backbone_config)
    needed = cfg.steps * cfg.batch_size * cfg.seq_len  # tokens the whole run consumes (one epoch if available)
    budget = min(needed, cfg.max_train_tokens) if cfg.max_train_tokens else needed
    train = read_sequences(cfg.train_text, tokenizer, budget, cfg.seq_len, "training text")  # (N, L)
    valid = read_sequences(cfg.valid_text, tokenizer, cfg.valid_tokens, cfg.seq_len, "validation text")  # (Nv, L)

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

    inputs = {} if stored is None else stored.inputs  # the heads' inputs, when the cache holds them

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        rows = batch_indices(step, cfg.batch_size, len(train), cfg.seed)  # (B,)
        return (train[rows], None if stored is None else stored.labels["train"][:, rows],  # (B, L), (E, B, L)
                inputs["train"][:, rows] if "train" in inputs else None)  # (E, B, L, D)

    def answer_batch(step: int) -> list:
        """cfg.batch_size answers in their own seeded order: [(ids (1, T), counted (1, T), labels (E, 1, T) or None,
        inputs (E, P_i, D) or None)]."""
        if not answers:
            return []
        return [(*answers[i], None if stored is None else stored.answer_labels(i, answers[i][0].shape[1]),
                 None if stored is None else stored.answer_inputs(i))
                for i in batch_indices(step, cfg.batch_size, len(answers), cfg.seed).tolist()]

    if meta is not None:
        meta = load_checkpoint(ckpt, trainer.heads, trainer.optimizers)
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
        losses = trainer.train_step(*batch(step), answers=answer_batch(step))  # (E,)
        bar.set_postfix(loss=f"{losses.mean().item():.4f}", refresh=False)
        done = step + 1
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            save_checkpoint(ckpt, trainer.heads, trainer.optimizers, done, ckpt_state)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    bar.close()

    evaluation = trainer.evaluate(valid, {"trained": heads, "untrained": initial},
                                  None if stored is None else stored.labels["valid"], inputs.get("valid"))
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
        "stored_inputs": sorted(inputs),  # the splits whose heads' inputs came from the label cache, no backbone pass
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
