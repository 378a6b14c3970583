"""The full model's greedy answers to prompts, the sequences that exits are fitted and measured on.

Here rather than in models/ because models/ must not import decoding/. Our batched decoder with exits off gives
every row exactly its batch-1 answer, the tokens of transformers' `generate(do_sample=False)` at batch size 1
(decoding/batch.py; tests/test_translators.py checks it), several times faster than `generate` one prompt at a time.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from .decoder import ExitDecoder


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                   progress: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
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
