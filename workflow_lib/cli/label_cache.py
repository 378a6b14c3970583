"""Label the head-distillation text once per backbone and emission rule, for every head that trains on it
(docs/training.md, "Stored labels").

  python -m workflow_lib.cli.label_cache --backbone results/backbones/tiny-mistral --tokenizer results/tokenizer \
      --train-text corpus_train.jsonl --valid-text corpus_valid.jsonl --train-tokens 614400 \
      --out results/labels/tiny-mistral/emission~last_block

Writes <out>/labels.safetensors (training/label_cache.py): per exit and token of the packed training and held-out
sequences, the ranks every label rule and k derive from. `train_heads --label-cache <out>` then trains on them
with the same settings (emission rule, label source, sequence length, exits among these), running only the blocks up
to its deepest exit.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..arguments import layer_list, set_threads
from ..choices import DEFAULT_EMISSION, EMISSION_RULES, LABEL_SOURCES
from ..defaults import HEAD_TRAINING, SEED, VALID_TOKENS
from ..training.label_cache import LabelCacheConfig, build_label_cache


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.label_cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's; required for presets)")
    p.add_argument("--exit-layers", type=layer_list, help="0-based block indices (default: 4 in the second half)")
    p.add_argument("--train-text", required=True, help="training corpus: .txt (a document per line) or .jsonl ('text')")
    p.add_argument("--valid-text", required=True, help="held-out text (train_heads' --valid-text)")
    p.add_argument("--train-tokens", type=int, required=True,
                   help="training tokens labelled: the most a head job reads (its steps x batch size x seq len)")
    p.add_argument("--valid-tokens", type=int, default=VALID_TOKENS,
                   help=f"held-out tokens (train_heads' --valid-tokens; default {VALID_TOKENS})")
    p.add_argument("--out", required=True, help="output folder (labels.safetensors)")
    p.add_argument("--emission", choices=EMISSION_RULES, default=DEFAULT_EMISSION,
                   help="how an exit emits its token (the decoder's rule): the labels follow it (default: last_block)")
    p.add_argument("--translators", help="translators folder (train_translators), needed by --emission translator")
    p.add_argument("--label-source", choices=LABEL_SOURCES, default=HEAD_TRAINING["label_source"],
                   help="emitted: the token the exit emits under --emission; lens: the logit lens (train_heads')")
    p.add_argument("--answers", help="answers file (python -m workflow_lib.cli.answers) labelled too, for heads "
                                     "trained on answers (train_heads --answers)")
    p.add_argument("--seq-len", type=int, default=HEAD_TRAINING["seq_len"],
                   help=f"train_heads' --seq-len (default {HEAD_TRAINING['seq_len']})")
    p.add_argument("--batch-size", type=int, default=HEAD_TRAINING["batch_size"],
                   help=f"sequences per backbone pass (default {HEAD_TRAINING['batch_size']})")
    p.add_argument("--store-inputs", action="store_true", default=HEAD_TRAINING["store_inputs"],
                   help="also store the heads' inputs final_norm(h_l) at every exit (float32): head jobs then run no "
                        "backbone pass, except over the answers for a head with a recurrent state")
    p.add_argument("--seed", type=int, default=SEED, help="the backbone's seed (random presets only)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    return p


def parse_args(argv=None) -> LabelCacheConfig:
    p = build_parser()
    a = p.parse_args(argv)
    set_threads(p, a.threads)
    return LabelCacheConfig(
        backbone=a.backbone, train_text=a.train_text, valid_text=a.valid_text, out=a.out, train_tokens=a.train_tokens,
        exit_layers=a.exit_layers, tokenizer=a.tokenizer, emission=a.emission, translators=a.translators,
        label_source=a.label_source, seq_len=a.seq_len, valid_tokens=a.valid_tokens, batch_size=a.batch_size,
        answers=a.answers, store_inputs=a.store_inputs,
        seed=a.seed, device=a.device)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    try:
        shapes = build_label_cache(cfg)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, nothing written
        sys.exit(f"label_cache: error: {e}")
    print(json.dumps({"ranks": shapes}))


if __name__ == "__main__":
    main()
