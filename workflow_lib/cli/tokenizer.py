"""Entry point: train the byte-level BPE tokenizer on a corpus and save it as a transformers tokenizer folder.

    python -m workflow_lib.cli.tokenizer --corpus results/world/corpus_train.jsonl --out-dir results/tokenizer
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from workflow_lib.artifacts import provenance
from workflow_lib.data.formats import read_corpus
from workflow_lib.data.tokenizer import save_tokenizer, train_tokenizer
from workflow_lib.defaults import TOKENIZER


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.tokenizer", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", required=True, help="training corpus (.jsonl {'text'} lines or .txt, one doc a line)")
    p.add_argument("--out-dir", required=True, help="tokenizer folder (replaced atomically)")
    p.add_argument("--vocab-size", type=int, default=TOKENIZER["vocab_size"])
    p.add_argument("--min-frequency", type=int, default=2, help="merges need a pair seen at least this often")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    docs = list(read_corpus(args.corpus))  # checks the file before training
    tokenizer = train_tokenizer(docs, args.vocab_size, args.min_frequency)
    config = {**vars(args), "corpus_sha256": hashlib.sha256(Path(args.corpus).read_bytes()).hexdigest(),
              "n_docs": len(docs), "n_tokens": sum(len(tokenizer(d)["input_ids"]) for d in docs)}
    save_tokenizer(tokenizer, args.out_dir, provenance(config))
    print(f"tokenizer: vocab {len(tokenizer)}, {config['n_tokens']:,} tokens in {len(docs)} docs -> {args.out_dir}")


if __name__ == "__main__":
    main()
