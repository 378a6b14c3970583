"""Training tuned-lens translators (models/translators.py) on a frozen backbone, by distillation (docs/training.md).

For every exit layer l, translate(h_l, l) is trained so that LM head(final_norm(translate(h_l, l))) matches the
full model's distribution: the loss is KL(full || translated lens), the tuned lens' own objective (Belrose et al.,
2023), averaged over positions and summed over the exits. One backbone pass per batch serves every exit (forward
hooks, as in head training); the batches are the heads' (same tokens, same seeded order, text.batch_indices).
AdamW; the translators start at the identity (the logit lens), so step 0 is the lens, or (init least_squares) at
the ridge regression of the final hidden state on h_l over the first `init_batches` batches (the "linear shortcut"
of Din et al., 2023): one backbone pass per batch and a d x d solve, a warm start worth many KL steps where a step
costs seconds (on SmolLM2-135M, 1 CPU core: a KL step on 4 x 128 tokens and 5 exits took ~10 s).

Answers (optional, `answers` and `answers_weight` > 0): the full model's own greedy answers to held-out task prompts
(decoding/answers.py's file), the tokens an exit really emits at evaluation. Their positions (a generated token read,
the next one emitted) join the fit: the least-squares start and every KL step weigh them `answers_weight` and the
text 1 - `answers_weight`, each side averaged over its own positions. Their states are computed once (a few thousand positions); each KL step draws
batch_size x seq_len of them. On SmolLM2-135M a translator fitted on text alone agrees with the full model far less
on its answers than on text (docs/results/real-small.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..artifacts import provenance
from ..choices import TRANSLATOR_INITS
from ..data.formats import read_corpus
from ..decoding.answers import load_answers
from ..defaults import SEED, TRANSLATORS
from ..models.backbone import default_device, load_backbone, load_config, parts, resolve_exit_layers, signature
from ..models.emission import exit_hidden
from ..models.translators import Translators, save_translators
from .text import batch_indices, check_answers, check_schedule, check_text_file, load_text_tokenizer, read_sequences


@dataclass
class TranslatorConfig:
    backbone: str
    train_text: str
    out: str
    exit_layers: list[int] | None = None  # None: default_exit_layers(n_layers), as the heads'
    tokenizer: str | None = None  # None: the backbone folder's tokenizer
    steps: int = TRANSLATORS["steps"]
    batch_size: int = TRANSLATORS["batch_size"]
    seq_len: int = TRANSLATORS["seq_len"]
    lr: float = TRANSLATORS["lr"]
    init: str = TRANSLATORS["init"]  # identity (the tuned lens' zero init) or least_squares (the module docstring)
    init_batches: int = TRANSLATORS["init_batches"]  # batches the least-squares start is fitted on
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_train_tokens: int | None = None
    answers: str | None = None  # answers file (decoding/answers.py) fitted beside the text
    answers_weight: float = 0.0  # share of the fit on answer positions (0: text alone; > 0 needs `answers`)
    seed: int = SEED
    device: str | None = None


RIDGE = 1e-3  # least-squares ridge, relative to the mean diagonal of X^T X: keeps the solve well posed


def validate(cfg: TranslatorConfig):
    """Every check that needs no weights; returns (backbone config, resolved exit layers)."""
    if cfg.init not in TRANSLATOR_INITS:
        raise ValueError(f"unknown translator init {cfg.init!r}; known: {', '.join(TRANSLATOR_INITS)}")
    check_schedule(cfg, ("steps", "batch_size", "init_batches"))
    check_answers(cfg.answers, cfg.answers_weight)
    if cfg.max_train_tokens is not None and cfg.max_train_tokens < cfg.seq_len:
        raise ValueError(f"max_train_tokens {cfg.max_train_tokens} is less than one sequence of {cfg.seq_len}")
    check_text_file(cfg.train_text, "training text")
    read_corpus(cfg.train_text)  # checks the format now; documents are read later
    config = load_config(cfg.backbone)
    return config, resolve_exit_layers(config, cfg.exit_layers)


def kl_full_to_translated(model: nn.Module, translators: Translators, input_ids: torch.Tensor) -> torch.Tensor:
    """Per exit (E,): mean over positions of KL(full || LM head(final_norm(translate(h_l, l)))); the backbone runs
    once without gradients, the translators with."""
    p = parts(model)
    layers = translators.exit_layers
    captured: dict[int, torch.Tensor] = {}
    hooks = [p.layers[l].register_forward_hook(
        lambda _m, _a, out, l=l: captured.__setitem__(l, out[0] if isinstance(out, tuple) else out)) for l in layers]
    try:
        with torch.no_grad():
            full = model(input_ids=input_ids, use_cache=False).logits.float().log_softmax(-1)  # (B, T, V)
    finally:
        for hook in hooks:
            hook.remove()
    return _kl_per_exit(p, translators, captured, full)


def _kl_per_exit(p, translators: Translators, hidden: dict[int, torch.Tensor], full: torch.Tensor) -> torch.Tensor:
    """Per exit (E,): mean over positions of KL(full || LM head(final_norm(translate(h_l, l)))), from h_l (..., D)
    and the full model's log-probabilities full (..., V)."""
    losses = []
    for l in translators.exit_layers:
        z = p.final_norm(translators(hidden[l], l))  # (..., D)
        translated = p.lm_head(z.to(p.lm_head.weight.dtype)).float().log_softmax(-1)  # (..., V)
        losses.append(F.kl_div(translated.flatten(0, -2), full.flatten(0, -2), log_target=True, reduction="batchmean"))
    return torch.stack(losses)  # (E,)


def _accumulate(gram: dict, cross: dict, hidden: dict[int, torch.Tensor], final: torch.Tensor) -> None:
    """Add one set of positions to the normal equations: hidden[l] (N, D) and the final hidden state (N, D)."""
    target = final.double().cpu()  # (N, D)
    for l in gram:
        x = hidden[l].double().cpu()  # (N, D)
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (N, D+1)
        gram[l] += xa.T @ xa
        cross[l] += xa.T @ (target - x)


def kl_at_states(model: nn.Module, translators: Translators, hidden: dict[int, torch.Tensor]) -> torch.Tensor:
    """Per exit (E,): mean KL(full || translated lens) over positions given by their states (answer_states: h_l
    (N, D) per exit, the final hidden state (N, D) under n_layers - 1), without running the backbone."""
    p = parts(model)
    with torch.no_grad():
        final = p.final_norm(hidden[p.n_layers - 1])  # (N, D)
        full = p.lm_head(final.to(p.lm_head.weight.dtype)).float().log_softmax(-1)  # (N, V)
    return _kl_per_exit(p, translators, hidden, full)


@torch.no_grad()
def answer_states(model: nn.Module, answers, exit_layers: list[int]) -> dict[int, torch.Tensor]:
    """h_l (N, D) at the decode steps of greedy answers [(ids (1, T), counted (1, T))] for every exit layer, and the
    final hidden state (N, D) there under n_layers - 1: what the answers' side of the fit reads."""
    keep = [*exit_layers, model.config.num_hidden_layers - 1]
    states = [exit_hidden(model, ids, keep) for ids, _ in answers]  # no LM head over the prompts
    return {l: torch.cat([s[l][counted] for s, (_, counted) in zip(states, answers)]) for l in keep}


@torch.no_grad()
def least_squares_start(model: nn.Module, translators: Translators, batches,
                        answers: dict[int, torch.Tensor] | None = None, answers_weight: float = 0.0) -> None:
    """Set each translator to the ridge regression of the final hidden state (the last block's output, before the
    final norm) on h_l, in the residual form h + A h + b, accumulated in float64 over `batches` of (B, T) ids; with
    `answers` (answer_states) the two sides' mean normal equations are mixed 1 - answers_weight : answers_weight."""
    n = model.config.num_hidden_layers
    layers = translators.exit_layers
    d = translators.hidden_size
    zeros = lambda *shape: {l: torch.zeros(*shape, dtype=torch.float64) for l in layers}  # noqa: E731
    gram, cross = zeros(d + 1, d + 1), zeros(d + 1, d)  # (D+1, D+1): [h, 1]^T [h, 1]; (D+1, D): [h, 1]^T (h_n - h)
    count = 0
    for input_ids in batches:
        states = exit_hidden(model, input_ids, [*layers, n - 1])  # the blocks alone: the fit needs no logits
        _accumulate(gram, cross, {l: states[l].flatten(0, 1) for l in layers}, states[n - 1].flatten(0, 1))
        count += input_ids.numel()
    if answers is not None and answers_weight > 0:
        gram_a, cross_a = zeros(d + 1, d + 1), zeros(d + 1, d)
        _accumulate(gram_a, cross_a, answers, answers[n - 1])
        count_a = len(answers[n - 1])
        for l in layers:
            gram[l] = (1 - answers_weight) / count * gram[l] + answers_weight / count_a * gram_a[l]
            cross[l] = (1 - answers_weight) / count * cross[l] + answers_weight / count_a * cross_a[l]
    for l in layers:
        ridge = RIDGE * gram[l].diagonal().mean() * torch.eye(d + 1, dtype=torch.float64)  # (D+1, D+1)
        w = torch.linalg.solve(gram[l] + ridge, cross[l])  # (D+1, D)
        linear = translators.linears[str(l)]
        linear.weight.copy_(w[:-1].T.to(linear.weight))  # (D, D)
        linear.bias.copy_(w[-1].to(linear.bias))  # (D,)


def fit_translators(model: nn.Module, train: torch.Tensor, exit_layers: list[int], cfg: TranslatorConfig,
                    progress: bool = True, answers=None) -> tuple[Translators, dict]:
    """Train one translator per exit layer on packed sequences `train` (N, L), and on greedy `answers` (see the module
    docstring) where cfg.answers_weight > 0; returns them and the run's record (per-exit KL at the first and last
    steps, seconds, tokens)."""
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    translators = Translators(model.config.hidden_size, exit_layers).to(device).train()
    weight = cfg.answers_weight if answers else 0.0
    start = time.perf_counter()
    states = answer_states(model, answers, exit_layers) if weight > 0 else None  # {l: (N_a, D)}
    draw = torch.Generator().manual_seed(cfg.seed)  # the answer positions each KL step reads

    def batch(step: int) -> torch.Tensor:
        return train[batch_indices(step, cfg.batch_size, len(train), cfg.seed)].to(device)  # (B, L)

    if cfg.init == "least_squares":
        least_squares_start(model, translators, (batch(s) for s in range(cfg.init_batches)), states, weight)
    init_seconds = time.perf_counter() - start
    opt = torch.optim.AdamW(translators.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    first = last = None
    bar = tqdm(range(cfg.steps), desc="train translators", file=sys.stderr, mininterval=1.0, disable=not progress)
    for step in bar:
        losses = kl_full_to_translated(model, translators, batch(step))  # (E,)
        if states is not None:
            n_answers = len(states[exit_layers[0]])
            picked = torch.randint(n_answers, (cfg.batch_size * cfg.seq_len,), generator=draw).to(device)  # (P,)
            losses = (1 - weight) * losses + weight * kl_at_states(
                model, translators, {l: h[picked] for l, h in states.items()})  # (E,)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()  # translators share nothing: each exit gets its own gradient
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(translators.parameters(), cfg.grad_clip)
        opt.step()
        last = losses.detach().cpu()
        first = last if first is None else first
        bar.set_postfix(kl=f"{last.mean().item():.3f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    record = {"train_kl_first_step": dict(zip(map(str, exit_layers), first.tolist())),
              "train_kl_last_step": dict(zip(map(str, exit_layers), last.tolist())),
              "seconds": seconds, "init_seconds": init_seconds, "tokens": tokens,
              "answer_positions": len(states[exit_layers[0]]) if states is not None else 0,
              "tokens_per_second": tokens / seconds if seconds else math.nan,
              "device": str(device), "train_sequences": len(train)}
    return translators.eval(), record


def train_translators(cfg: TranslatorConfig) -> dict:
    """Train the translators of one backbone and save them to cfg.out (save_translators, atomically); with
    cfg.answers_weight > 0, also on the full model's greedy answers in cfg.answers."""
    backbone_config, exit_layers = validate(cfg)
    answers = load_answers(cfg.answers, signature(backbone_config)) if cfg.answers_weight > 0 else None
    cfg = dataclasses.replace(cfg, exit_layers=exit_layers)
    tokenizer = load_text_tokenizer(cfg.backbone, cfg.tokenizer, backbone_config)
    needed = max(cfg.steps, cfg.init_batches if cfg.init == "least_squares" else 0) * cfg.batch_size * cfg.seq_len
    budget = min(needed, cfg.max_train_tokens) if cfg.max_train_tokens else needed
    train = read_sequences(cfg.train_text, tokenizer, budget, cfg.seq_len, "training text")  # (N, L)
    device = torch.device(cfg.device) if cfg.device else default_device()
    model = load_backbone(cfg.backbone, device=device, seed=cfg.seed)
    translators, record = fit_translators(model, train, exit_layers, cfg,
                                          answers=[(ids.to(device), c.to(device)) for ids, c in answers or []])
    record["answers"] = len(answers or [])
    settings = {k: getattr(cfg, k) for k in ("steps", "batch_size", "seq_len", "lr", "init", "init_batches",
                                             "weight_decay", "grad_clip", "answers", "answers_weight")}
    save_translators(cfg.out, translators.cpu(), model.config, {
        "training": {**settings, "objective": "KL(full || translated lens)", "optimizer": "AdamW"},
        "run": record, "backbone_id": cfg.backbone, "seed": cfg.seed,
        "data": {"train_text": os.path.abspath(cfg.train_text), "tokenizer": cfg.tokenizer or cfg.backbone},
        "provenance": provenance(dataclasses.asdict(cfg), cfg.seed)})
    return record
