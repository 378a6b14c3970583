"""Entry point: pretrain a tiny Mistral or Mamba-2 from scratch on the synthetic world's corpus.

    python -m workflow_lib.cli.pretrain --arch mamba2 --world results/world --tokenizer results/tokenizer \\
        --out-dir results/backbones/tiny-mamba2

Writes a `save_pretrained` folder (safetensors + config + the tokenizer, loadable with
workflow_lib.models.backbone.load_backbone and AutoTokenizer) with metrics.json inside: held-out and seen
TriviaQA exact match, per-layer agreement of the intermediate prediction with the final one, the loss
curve, wall time, and provenance. Seeded: the same flags give the same weights (for a fixed thread count).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from workflow_lib.artifacts import atomic_path, provenance
from workflow_lib.data.formats import read_corpus, read_triviaqa
from workflow_lib.choices import PRETRAIN_ARCHS
from workflow_lib.defaults import PRETRAIN
from workflow_lib.models.backbone import default_exit_layers
from workflow_lib.training.pretrain import (PretrainConfig, answer_token_accuracy, build_model, layer_agreement,
                                            token_stream, train, triviaqa_exact_match)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--world", help="world folder; supplies the defaults of --corpus, --valid-corpus, --eval-file, "
                                   "--seen-file")
    p.add_argument("--corpus", help="training corpus (default: WORLD/corpus_train.jsonl)")
    p.add_argument("--valid-corpus", help="held-out text for per-layer agreement (default: WORLD/corpus_valid.jsonl)")
    p.add_argument("--eval-file", help="held-out TriviaQA questions (default: WORLD/triviaqa.jsonl)")
    p.add_argument("--seen-file", help="TriviaQA questions on seen facts, also the few-shot pool "
                                       "(default: WORLD/triviaqa_train.jsonl)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (python -m workflow_lib.cli.tokenizer)")
    p.add_argument("--out-dir", required=True, help="model folder (replaced atomically)")
    p.add_argument("--n-shot", type=int, default=2, help="few-shot examples in the EM gate (paper: 2)")
    p.add_argument("--eval-limit", type=int, default=PRETRAIN["eval_limit"],
                   help="evaluate at most this many questions per set (0: all)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        kw = {"choices": list(PRETRAIN_ARCHS)} if f.name == "arch" else {}
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name), help=f"(default: {getattr(defaults, f.name)})", **kw)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name, default in [("corpus", "corpus_train.jsonl"), ("valid_corpus", "corpus_valid.jsonl"),
                          ("eval_file", "triviaqa.jsonl"), ("seen_file", "triviaqa_train.jsonl")]:
        if getattr(args, name) is None:
            if args.world is None:
                p.error(f"--{name.replace('_', '-')} or --world is required")
            setattr(args, name, str(Path(args.world) / default))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    if args.threads:
        torch.set_num_threads(args.threads)
    # Every input is read and checked before training starts.
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    train_docs, valid_docs = list(read_corpus(args.corpus)), list(read_corpus(args.valid_corpus))
    held_out, seen = read_triviaqa(args.eval_file), read_triviaqa(args.seen_file)
    if args.eval_limit:
        held_out, seen = held_out[: args.eval_limit], seen[: args.eval_limit]
    stream = token_stream(train_docs, tokenizer)  # (N,)
    valid_stream = token_stream(valid_docs, tokenizer)  # (M,)

    started = time.perf_counter()
    model = build_model(config, len(tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{config.arch}: {n_params / 1e6:.2f}M parameters, {stream.numel():,} training tokens, "
          f"{config.steps} steps x {config.batch_size} x {config.seq_len}", flush=True)
    curve = train(model, stream, config,
                  progress=lambda s, loss, t: print(f"step {s}: loss {loss:.3f} ({t:.0f}s)", flush=True))
    eval_started = time.perf_counter()
    em_held = triviaqa_exact_match(model, tokenizer, held_out, seen, args.n_shot, config.seed)
    em_held_0 = triviaqa_exact_match(model, tokenizer, held_out, seen, 0, config.seed)
    em_seen = triviaqa_exact_match(model, tokenizer, seen, seen, args.n_shot, config.seed)
    agreement = layer_agreement(model, valid_stream, config.seq_len)
    answer_acc = answer_token_accuracy(model, tokenizer, held_out)
    n_layers = config.num_layers
    metrics = {
        "arch": config.arch,
        "parameters": n_params,
        "train_tokens": stream.numel(),
        "heldout_em": em_held["exact_match"],
        "heldout_em_0shot": em_held_0["exact_match"],
        "seen_em": em_seen["exact_match"],
        "n_shot": args.n_shot,
        "n_heldout": em_held["n"],
        "n_seen": em_seen["n"],
        "exit_layers": default_exit_layers(n_layers),
        "layer_agreement_with_final": agreement["agreement_with_final"],
        "layer_next_token_accuracy": agreement["next_token_accuracy"],
        "layer_heldout_answer_token_accuracy": answer_acc,
        "agreement_positions": agreement["positions"],
        "training": curve,
        "eval_seconds": time.perf_counter() - eval_started,
        "wall_seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
        "heldout_predictions_sample": em_held["predictions"][:20],
        "inputs": {k: getattr(args, k) for k in ("corpus", "valid_corpus", "eval_file", "seen_file", "tokenizer")},
        "provenance": provenance(dataclasses.asdict(config), config.seed),
    }
    with atomic_path(args.out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
    first = metrics["exit_layers"][0]
    print(f"{config.arch}: held-out EM {metrics['heldout_em']:.3f} ({args.n_shot}-shot), "
          f"{metrics['heldout_em_0shot']:.3f} (0-shot), seen EM {metrics['seen_em']:.3f}; agreement with final "
          f"{metrics['layer_agreement_with_final']} (first exit: block {first}); "
          f"wall {metrics['wall_seconds']:.0f}s -> {args.out_dir}", flush=True)
    return metrics


if __name__ == "__main__":
    main()
