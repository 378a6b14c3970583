"""The full model's greedy answers to prompts, the sequences that exits are fitted and measured on, and their file.

Here rather than in models/ because models/ must not import decoding/. Our batched decoder with exits off gives
every row exactly its batch-1 answer, the tokens of transformers' `generate(do_sample=False)` at batch size 1
(decoding/decoder.py; tests/test_translators.py checks it), several times faster than `generate` one prompt at a time.

answers.safetensors (cli/answers.py writes it once per backbone; the translators, the label cache and the heads read
it): ids (N, Lmax) int32, each answer's prompt then answer, right-padded with 0; counted (N, Lmax) bool, its decode
steps; lengths (N,) int64; as metadata the settings, the backbone's signature and the provenance.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..artifacts import atomic_path
from .decoder import ExitDecoder

Answers = list[tuple[torch.Tensor, torch.Tensor]]  # per answer: ids (1, T), counted (1, T)


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                   progress: bool = True) -> Answers:
    """The full model's greedy answer to each prompt, in the prompts' order: per prompt the sequence (1, T + G) on
    the model's device, prompt then answer (the stopping EOS kept, as `generate` keeps it), and a bool mask
    (1, T + G) of its decode steps, the positions that read a generated token and emit the next one (where an exit
    decides; the first answer token comes from the prompt's full-depth pass). Prompts are decoded `batch_size` at a
    time, sorted by length so that a batch pads little (a progress bar per prompt unless `progress` is False)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    device = next(model.parameters()).device
    ids = [tokenizer(text, return_tensors="pt").input_ids[0].tolist() for text in prompts]  # (T,) per prompt
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    decoder = ExitDecoder(model)  # no heads: exits off, plain greedy decoding
    answers: list = [None] * len(ids)
    with tqdm(total=len(ids), desc="greedy answers", unit="prompt", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            results = decoder.generate_batch([ids[i] for i in chunk], max_new_tokens=max_new_tokens)
            bar.update(len(chunk))
            for i, result in zip(chunk, results):
                seq = torch.tensor([ids[i] + result.token_ids], device=device)  # (1, T + G)
                counted = torch.zeros_like(seq, dtype=torch.bool)  # (1, T + G)
                counted[:, len(ids[i]):seq.shape[1] - 1] = True
                answers[i] = (seq, counted)
    return answers


def pad_answers(answers: Answers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """answers -> ids (N, Lmax) int32 right-padded with 0, counted (N, Lmax) bool, lengths (N,) int64."""
    lengths = torch.tensor([ids.shape[1] for ids, _ in answers])  # (N,)
    ids = torch.zeros(len(answers), int(lengths.max()), dtype=torch.int32)  # (N, Lmax)
    counted = torch.zeros(ids.shape, dtype=torch.bool)  # (N, Lmax)
    for i, (seq, mask) in enumerate(answers):
        ids[i, :seq.shape[1]], counted[i, :seq.shape[1]] = seq[0].cpu(), mask[0].cpu()
    return ids, counted, lengths


def save_answers(path: str | os.PathLike, answers: Answers, meta: dict) -> None:
    """Write `answers` (greedy_answers') to `path` atomically, `meta` as JSON metadata (see the module docstring)."""
    ids, counted, lengths = pad_answers(answers)
    with atomic_path(path) as tmp:
        save_file({"ids": ids, "counted": counted, "lengths": lengths}, str(tmp),
                  metadata={"answers": json.dumps(meta, default=str)})


def read_answers_meta(path: str | os.PathLike) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"answers file {str(path)!r} does not exist")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if "answers" not in metadata:
        raise ValueError(f"{str(path)!r} is not an answers file (python -m workflow_lib.cli.answers writes them)")
    return json.loads(metadata["answers"])


def load_answers(path: str | os.PathLike, backbone_signature: dict | None = None) -> Answers:
    """The answers stored at `path`, unpadded, as greedy_answers returns them; refused if made on another backbone."""
    meta = read_answers_meta(path)
    if backbone_signature is not None and meta["backbone"] != backbone_signature:
        raise ValueError(f"answers {str(path)!r} were generated by backbone {meta['backbone']}, not "
                         f"{backbone_signature}")
    tensors = load_file(str(path))
    return [(tensors["ids"][i, :n].long()[None], tensors["counted"][i, :n][None])
            for i, n in enumerate(tensors["lengths"].tolist())]
