"""A draft vocabulary for speculative decoding: the tokens a backbone emits most, whose LM-head rows alone the drafts
read (docs/speculative.md). On SmolLM2-135M the LM head is 28.3 M of a decode step's MACs, 8 blocks' worth; the
verification still reads the whole head, so a draft outside the vocabulary is only a rejected draft.

  python -m workflow_lib.cli.draft_vocab --answers results/answers/smollm2/answers.safetensors \
      --text results/data/corpus_train.jsonl --tokenizer results/backbones/smollm2 --size 4096 \
      --out results/draft_vocab/smollm2/draft_vocab.json

The tokens, in this order until --size: every token the full model emitted in its greedy answers (most frequent
first), the tokens of those answers' prompts (answers copy from them), then the text's most frequent tokens; and the
tokenizer's EOS. Writes {"token_ids": [...], "coverage": ...} with the share of the answers' emitted tokens and of
the text's tokens the vocabulary holds, and provenance.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..arguments import set_threads

DEFAULT_SIZE = 4096  # a seventh of SmolLM2's 49,152 rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.draft_vocab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", required=True, help="the backbone's greedy answers (cli/answers.py)")
    p.add_argument("--text", required=True, help="a corpus (.txt / .jsonl) whose frequent tokens fill the rest")
    p.add_argument("--tokenizer", required=True, help="the backbone's tokenizer: its folder, hub id or GGUF name")
    p.add_argument("--text-tokens", type=int, default=200_000, help="corpus tokens counted (default 200,000)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"tokens in the vocabulary (default {DEFAULT_SIZE})")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--out", required=True, help="the vocabulary file (.json)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    set_threads(p, a.threads)
    for name in ("size", "text_tokens"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not a.out.endswith(".json"):
        p.error(f"--out must name a .json file, got {a.out!r}")
    return a


def draft_vocabulary(emitted: list[int], prompts: list[int], text: list[int], size: int,
                     eos: int | None) -> list[int]:
    """`size` token ids: the emitted tokens by frequency, then the prompts', then the text's (ties by id), with EOS."""
    from collections import Counter

    chosen: dict[int, None] = {} if eos is None else {eos: None}
    for source in (emitted, prompts, text):
        for token, _ in sorted(Counter(source).items(), key=lambda kv: (-kv[1], kv[0])):
            if len(chosen) >= size:
                return sorted(chosen)
            chosen.setdefault(token, None)
    return sorted(chosen)


def main(argv=None) -> None:
    a = parse_args(argv)
    from ..artifacts import provenance, write_json
    from ..data.formats import DataFormatError, read_corpus
    from ..decoding.answers import load_answers
    from ..models.backbone import load_tokenizer

    try:
        tokenizer = load_tokenizer(a.tokenizer)
        answers = load_answers(a.answers)
        text: list[int] = []
        for doc in read_corpus(a.text):
            text.extend(tokenizer(doc).input_ids)
            if len(text) >= a.text_tokens:
                break
    except (ValueError, FileNotFoundError, OSError, DataFormatError) as e:
        sys.exit(f"draft_vocab: error: {e}")
    text = text[:a.text_tokens]
    emitted, prompts = [], []
    for ids, counted in answers:  # (1, T) each: a decode step at t emits the token at t + 1
        ids, counted = ids[0].tolist(), counted[0].tolist()
        first = counted.index(True) if True in counted else len(ids) - 1
        prompts.extend(ids[:first])
        emitted.extend(ids[first:])  # the first answer token (from the prompt's pass) and every decoded one
    vocab = draft_vocabulary(emitted, prompts, text, a.size, tokenizer.eos_token_id)
    held = set(vocab)
    coverage = {"answers": sum(t in held for t in emitted) / max(len(emitted), 1),
                "text": sum(t in held for t in text) / max(len(text), 1)}
    settings = {"answers": a.answers, "text": a.text, "tokenizer": a.tokenizer, "text_tokens": a.text_tokens,
                "size": a.size}
    write_json(a.out, {"token_ids": vocab, "size": len(vocab), "vocab_size": len(tokenizer), "coverage": coverage,
                       **provenance(settings, 0)})
    print(json.dumps({"size": len(vocab), "coverage": coverage}))


if __name__ == "__main__":
    main()
