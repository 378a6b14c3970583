"""A byte-level BPE tokenizer trained on a corpus with the `tokenizers` library, saved as a transformers folder.

Special tokens take the ids the tiny backbone presets expect: <pad>=0, <s>=1 (bos), </s>=2 (eos). Encoding
with special tokens prepends <s> (as Mistral's tokenizer does); pretraining wraps every document in <s>...</s>.
BPE training has no randomness: the same corpus and vocabulary size give byte-identical files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from workflow_lib.artifacts import atomic_path

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2


def train_tokenizer(docs: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {len(alphabet) + len(SPECIAL_TOKENS)} (bytes + special tokens), "
                         f"got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   model_max_length=2048, clean_up_tokenization_spaces=False)


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, out_dir: str | os.PathLike, record: dict | None = None) -> None:
    """`save_pretrained` into `out_dir` (+ `record` as provenance.json), atomically: complete or absent."""
    with atomic_path(Path(out_dir)) as tmp:
        tokenizer.save_pretrained(str(tmp))
        if record is not None:
            (tmp / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
