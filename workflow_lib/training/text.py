"""What a distillation fit reads (head training, the label cache, translators, the agreement table): documents of a
corpus as one token stream packed into sequences, drawn in a seeded order; and the checks on a fit's text, its
schedule and the full model's answers beside the text.
"""
from __future__ import annotations

import os

import torch

from ..data.formats import read_corpus
from ..decoding.answers import read_answers_meta
from ..models.backbone import PRESET_PREFIX, load_tokenizer


def check_text_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path!r} is empty")


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


def check_answers(answers: str | None, answers_weight: float) -> None:
    """The answers side of a fit (translators, heads): a weight in [0, 1), above 0 exactly when an answers file
    (decoding/answers.py) is given."""
    if not 0.0 <= answers_weight < 1.0:
        raise ValueError(f"answers_weight {answers_weight} is not in [0, 1): the text keeps a share of the fit")
    if (answers is not None) != (answers_weight > 0):
        raise ValueError(f"an answers file and answers_weight > 0 go together (answers {answers!r}, "
                         f"answers_weight {answers_weight})")
    if answers is not None:
        read_answers_meta(answers)  # there, and an answers file


def load_text_tokenizer(backbone: str, tokenizer: str | None, backbone_config):
    """The tokenizer the text is read with: `tokenizer`, else the backbone's own; refused when a random preset has
    none or its vocabulary outgrows the backbone's."""
    source = tokenizer or backbone
    if source.startswith(PRESET_PREFIX):
        raise ValueError(f"backbone {backbone!r} is a random preset without a tokenizer: pass --tokenizer PATH")
    loaded = load_tokenizer(source)
    if len(loaded) > backbone_config.vocab_size:
        raise ValueError(f"tokenizer {source!r} has {len(loaded)} tokens, more than the backbone's "
                         f"vocab_size {backbone_config.vocab_size}")
    return loaded


def read_tokens(path: str, tokenizer, max_tokens: int | None, what: str) -> torch.Tensor:
    """The corpus as one stream <s> doc </s> <s> doc </s> ... (the framing pretraining used), up to `max_tokens`.

    Documents come from the data package's `read_corpus` (.txt: one per non-blank line; .jsonl: "text") and
    are tokenized in batches, stopping once the budget is reached (a large FineWeb sample is not read whole)."""
    check_text_file(path, what)
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


def read_sequences(path: str, tokenizer, max_tokens: int | None, seq_len: int, what: str) -> torch.Tensor:
    """read_tokens, then pack: the corpus as (N, seq_len) sequences."""
    return pack(read_tokens(path, tokenizer, max_tokens, what), seq_len, path, what)  # (N, L)


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
