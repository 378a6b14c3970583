"""Pretraining a tiny backbone from scratch on the synthetic world's corpus, and its quality gates.

nanoGPT-style: one config, documents packed into one token stream (<s> doc </s> ...), random windows,
AdamW with linear warmup and cosine decay, a fixed number of steps (a wall-clock budget only as a safety
stop). The quality gates are the ones the embedded pipeline needs: exact match on held-out TriviaQA
questions (greedy, lm-eval's prompt and answer normalisation) and how often the intermediate prediction
lm_head(final_norm(h_l)) agrees with the final one (early exits need it to be often, not always, right).
"""
from __future__ import annotations

import math
import random
import re
import string
import time
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from workflow_lib.choices import DEFAULT_PRETRAIN_ARCH, PRETRAIN_ARCHS
from workflow_lib.data.world import triviaqa_prompt
from workflow_lib.defaults import PRETRAIN, SEED
from workflow_lib.models.backbone import build_backbone, parts, preset_config


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = DEFAULT_PRETRAIN_ARCH  # 'mistral' | 'llama' | 'mamba2': the tiny-<arch> preset, trained from scratch
    hidden_size: int = PRETRAIN["hidden_size"]
    num_layers: int = PRETRAIN["num_layers"]
    state_size: int = PRETRAIN["state_size"]  # Mamba-2 only: SSM state per head (the preset's 64: a CPU step ~40% slower)
    # Mamba-2 only: length of the SSD scan's chunks (the preset's 64). The same function in another rounding order:
    # at seq_len 256 on one CPU thread a step costs 0.83 s at 32, 1.21 s at 64, 2.69 s at 256 (not bit-identical).
    chunk_size: int = 64
    seq_len: int = PRETRAIN["seq_len"]
    batch_size: int = PRETRAIN["batch_size"]
    steps: int = PRETRAIN["steps"]
    lr: float = PRETRAIN["lr"]
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = SEED
    time_budget_s: float = PRETRAIN["time_budget_s"]  # > 0: stop early when reached (a safety net; steps: reproducible)

    def __post_init__(self):
        if self.arch not in PRETRAIN_ARCHS:
            raise ValueError(f"arch must be one of {', '.join(PRETRAIN_ARCHS)}, got {self.arch!r}")
        if min(self.hidden_size, self.num_layers, self.seq_len, self.batch_size, self.steps, self.chunk_size) < 1:
            raise ValueError("hidden_size, num_layers, seq_len, batch_size, steps and chunk_size must all be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def token_stream(docs: list[str], tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """All documents as one stream: <s> doc </s> <s> doc </s> ... -> (N,) int64."""
    ids: list[int] = []
    for doc_ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += [tokenizer.bos_token_id, *doc_ids, tokenizer.eos_token_id]
    return torch.tensor(ids, dtype=torch.long)  # (N,)


def build_model(config: PretrainConfig, vocab_size: int) -> nn.Module:
    model_config = preset_config(f"tiny-{config.arch}", vocab_size=vocab_size, hidden_size=config.hidden_size,
                                 num_hidden_layers=config.num_layers)
    if config.arch == "mamba2":
        model_config.state_size = config.state_size
        model_config.chunk_size = config.chunk_size
    return build_backbone(model_config, seed=config.seed, device="cpu", dtype=torch.float32)


def lr_at(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    ratio = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * ratio


def train(model: nn.Module, stream: torch.Tensor, config: PretrainConfig, log_every: int = 50,
          progress=None) -> dict:
    """Train in place; returns the loss curve summary. Seeded: same config + stream -> same losses."""
    if stream.numel() <= config.seq_len + 1:
        raise ValueError(f"corpus too small: {stream.numel()} tokens for seq_len {config.seq_len}")
    gen = torch.Generator().manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    model.train()
    offsets = torch.arange(config.seq_len + 1)  # (L+1,)
    losses: list[float] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config)
        starts = torch.randint(0, stream.numel() - config.seq_len - 1, (config.batch_size,), generator=gen)  # (B,)
        batch = stream[starts[:, None] + offsets]  # (B, L+1)
        logits = model(input_ids=batch[:, :-1]).logits  # (B, L, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        losses.append(loss.item())
        if progress is not None and (step + 1) % log_every == 0:
            progress(step + 1, sum(losses[-log_every:]) / log_every, time.perf_counter() - start)
        if config.time_budget_s and time.perf_counter() - start > config.time_budget_s:
            break
    model.eval()
    n = len(losses)
    tail = max(1, n // 10)
    return {
        "steps_done": n,
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,  # all threads; with one thread, the quiet-machine time
        "loss_first": losses[0],
        "loss_last10pct": sum(losses[-tail:]) / tail,
        "loss_curve": {str(s): sum(losses[max(0, s - log_every):s]) / len(losses[max(0, s - log_every):s])
                       for s in range(log_every, n + 1, log_every)},
        "tokens_seen": n * config.batch_size * config.seq_len,
    }


# ---------------------------------------------------------------- quality gates


def normalize_answer(text: str) -> str:
    """lm-eval triviaqa's scoring: cut at the first stop string, strip, lower case, no punctuation."""
    text = re.split(r"[\n.,]", text, maxsplit=1)[0].strip().lower()
    return text.translate(str.maketrans("", "", string.punctuation)).strip()


def few_shot_prefix(shots: list[dict], rng: random.Random, n_shot: int) -> str:
    """lm-eval's few-shot layout: solved examples separated by a blank line, then the question."""
    chosen = rng.sample(shots, n_shot) if n_shot else []
    return "".join(f"{triviaqa_prompt(r['question'])} {r['answer']['aliases'][0]}\n\n" for r in chosen)


@torch.no_grad()
def triviaqa_exact_match(model: nn.Module, tokenizer: PreTrainedTokenizerBase, records: list[dict],
                         shots: list[dict] | None = None, n_shot: int = 0, seed: int = 0,
                         max_new_tokens: int = 12) -> dict:
    """Greedy exact match on TriviaQA records (lm-eval `triviaqa` prompt, stop strings and normalisation).

    Few-shot examples are drawn from `shots` with a seeded RNG, one draw per question.
    """
    if n_shot and (not shots or len(shots) < n_shot):
        raise ValueError(f"{n_shot}-shot evaluation needs at least {n_shot} shot records")
    rng = random.Random(seed)
    hits, predictions = 0, []
    for record in records:
        prompt = few_shot_prefix(shots or [], rng, n_shot) + triviaqa_prompt(record["question"])
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # (1, T)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, stop_strings=["\n", ".", ","], tokenizer=tokenizer,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)  # (1, T+G)
        text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        gold = {normalize_answer(a) for a in record["answer"]["aliases"]}
        hit = normalize_answer(text) in gold
        hits += hit
        predictions.append({"question": record["question"], "prediction": text, "correct": bool(hit)})
    return {"exact_match": hits / len(records), "n": len(records), "predictions": predictions}


@torch.no_grad()
def layer_predictions(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Argmax of lm_head(final_norm(h_l)) after every block l -> (n_layers, B, T); the last row is the model's."""
    p = parts(model)
    hidden: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, i, o: hidden.append(o[0] if isinstance(o, tuple) else o))
             for layer in p.layers]
    try:
        model(input_ids=input_ids)
    finally:
        for h in hooks:
            h.remove()
    return torch.stack([p.lm_head(p.final_norm(h)).argmax(-1) for h in hidden])  # (n_layers, B, T)


@torch.no_grad()
def layer_agreement(model: nn.Module, stream: torch.Tensor, seq_len: int, max_windows: int = 64) -> dict:
    """Per block: share of positions whose intermediate top-1 equals the final top-1, and next-token accuracy."""
    n = min(max_windows, (stream.numel() - 1) // seq_len)
    if n < 1:
        raise ValueError(f"validation text too small: {stream.numel()} tokens for seq_len {seq_len}")
    windows = stream[: n * seq_len + 1]
    inputs = windows[:-1].view(n, seq_len)  # (n, L)
    targets = windows[1:].view(n, seq_len)  # (n, L)
    preds = torch.cat([layer_predictions(model, inputs[i:i + 8]) for i in range(0, n, 8)], dim=1)  # (layers, n, L)
    return {
        "agreement_with_final": [round(x, 4) for x in (preds == preds[-1]).float().mean((1, 2)).tolist()],
        "next_token_accuracy": [round(x, 4) for x in (preds == targets).float().mean((1, 2)).tolist()],
        "positions": n * seq_len,
    }


@torch.no_grad()
def answer_token_accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase, records: list[dict]) -> list[float]:
    """Per block: teacher-forced accuracy of the intermediate prediction on the gold answer tokens."""
    hits, total = None, 0
    for record in records:
        prompt = tokenizer(triviaqa_prompt(record["question"]))["input_ids"]
        answer = tokenizer(" " + record["answer"]["value"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + answer])  # (1, T)
        preds = layer_predictions(model, ids)[:, 0, len(prompt) - 1:-1]  # (layers, A) predictions of answer tokens
        correct = (preds == torch.tensor(answer)).sum(1)  # (layers,)
        hits = correct if hits is None else hits + correct
        total += len(answer)
    return [round(x, 4) for x in (hits.float() / total).tolist()]
