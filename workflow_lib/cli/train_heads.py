"""Train exit heads of one type at all exits of a frozen backbone (knowledge distillation, docs/training.md).

  python -m workflow_lib.cli.train_heads --backbone results/backbones/tiny-mistral --head mamba \
      --head-options '{"state_size": 64}' --name mamba_s64 \
      --train-text corpus_train.txt --valid-text corpus_valid.txt --out results/heads/tiny-mistral/mamba_s64

Writes <out>/heads.safetensors + heads.json (load with workflow_lib.models.heads.load_heads; its "spec" records
the name, the type, the constructor options and the training settings, each apart) and
<out>/metrics.json (per-exit held-out loss/accuracy/precision/recall/F1/positive ratio, trained and untrained).
Rerunning the same command after a crash resumes from <out>/checkpoint.

An untrained head (--head softmax or saturation: zero parameters) has nothing to train: <out> gets heads.json only
(its "spec": name, type, options, exit layers), from the backbone's config, and no text is read (--train-text /
--valid-text are not needed).

Every default is the pipeline's (head_training in schemas/config.schema.yaml; workflow_lib/defaults.py).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..arguments import layer_list, paired_default, set_threads
from ..choices import DEFAULT_EMISSION, EMISSION_RULES, LABEL_RULES, LABEL_SOURCES, TRAIN_MODES
from ..defaults import HEAD_TRAINING, SEED, VALID_TOKENS
from ..models.heads import HEAD_TYPES
from ..training.distill import TrainConfig, train_heads, write_untrained_heads


def trainable(head: str) -> bool:
    """Whether a head type has parameters to train (an unknown one counts as trainable: train_heads refuses it)."""
    return head not in HEAD_TYPES or HEAD_TYPES[head].trainable


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.train_heads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's; required for presets)")
    p.add_argument("--head", required=True, help="head type: calm, ffn, mamba (trained); softmax, saturation "
                                                 "(untrained heads: heads.json only)")
    p.add_argument("--head-options", type=json.loads, default={}, help='JSON dict of head options, e.g. \'{"state_size": 32}\'')
    p.add_argument("--name", help="the head spec's name, recorded with the heads (default: the head type)")
    p.add_argument("--exit-layers", type=layer_list, help="0-based block indices, e.g. 3,4,5,6 (default: 4 in the second half)")
    p.add_argument("--train-text", help="training corpus: .txt (a document per line) or .jsonl ('text')")
    p.add_argument("--valid-text", help="held-out text for metrics (never the test data)")
    p.add_argument("--out", required=True, help="output folder (heads, metrics.json; checkpoint/ while running)")
    p.add_argument("--label-rule", choices=LABEL_RULES, default=HEAD_TRAINING["label_rule"],
                   help="top-k relaxation direction (default: the paper's wording)")
    p.add_argument("--emission", choices=EMISSION_RULES, default=DEFAULT_EMISSION,
                   help="how an exit emits its token (the decoder's rule): labels follow it (default: last_block)")
    p.add_argument("--translators", help="translators folder (train_translators), needed by --emission translator")
    p.add_argument("--label-source", choices=LABEL_SOURCES, default=HEAD_TRAINING["label_source"],
                   help="emitted: label the token the exit emits under --emission; lens: the logit lens LM "
                        "head(final_norm(h_l)) whatever the rule (the authors' label, the paper's ablation)")
    p.add_argument("--label-cache", help="labels stored by label_cache under these settings (default: each batch is "
                                          "labelled here, from a full-depth pass)")
    p.add_argument("--answers", help="answers file (python -m workflow_lib.cli.answers): the heads also train on its "
                                     "decode steps, where exits decide (needs --answers-weight)")
    p.add_argument("--answers-weight", type=float,
                   help="share of each step's loss on a batch of answers, in [0, 1) (default: "
                        f"{HEAD_TRAINING['answers_weight']} with --answers, else 0: text alone)")
    p.add_argument("--k", type=int, default=HEAD_TRAINING["k"], help="top-k relaxation (k=1: CALM's consistency oracle)")
    p.add_argument("--mode", choices=TRAIN_MODES, default=HEAD_TRAINING["mode"],
                   help="joint_decay: weights E..1 from the earliest exit (paper); uniform; individual optimizers")
    p.add_argument("--class-balance", action="store_true", help="weight CE by inverse class frequency per exit")
    p.add_argument("--balance-batches", type=int, default=8, help="training batches that estimate the positive ratio")
    for name in ("steps", "batch_size", "seq_len", "lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(HEAD_TRAINING[name]), default=HEAD_TRAINING[name],
                       help=f"(default {HEAD_TRAINING[name]})")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm per optimizer (0: off)")
    p.add_argument("--max-train-tokens", type=int, help="cap on training tokens read (default: steps*batch*seq_len; epochs repeat when the run needs more)")
    p.add_argument("--valid-tokens", type=int, default=VALID_TOKENS, help=f"held-out tokens evaluated (default {VALID_TOKENS})")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: none)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's); give each concurrent job its "
                                               "share of the cores, oversubscribed cores make every job slower")
    return p


def parse_args(argv=None) -> TrainConfig:
    p = build_parser()
    a = p.parse_args(argv)
    if trainable(a.head) and (a.train_text is None or a.valid_text is None):
        p.error("--train-text and --valid-text are required to train a head (an untrained head reads neither)")
    set_threads(p, a.threads)
    return TrainConfig(
        backbone=a.backbone, head=a.head, train_text=a.train_text, valid_text=a.valid_text, out=a.out,
        exit_layers=a.exit_layers, tokenizer=a.tokenizer, label_rule=a.label_rule, k=a.k, mode=a.mode,
        class_balance=a.class_balance, balance_batches=a.balance_batches, steps=a.steps, batch_size=a.batch_size,
        seq_len=a.seq_len, lr=a.lr, weight_decay=a.weight_decay, grad_clip=a.grad_clip,
        max_train_tokens=a.max_train_tokens, valid_tokens=a.valid_tokens, seed=a.seed,
        checkpoint_every=a.checkpoint_every, device=a.device, head_options=a.head_options, name=a.name,
        emission=a.emission, translators=a.translators, label_source=a.label_source, label_cache=a.label_cache,
        answers=a.answers,
        answers_weight=paired_default(a.answers_weight, a.answers, HEAD_TRAINING["answers_weight"], 0.0),
    )


def main(argv=None) -> None:
    cfg = parse_args(argv)
    try:
        if not trainable(cfg.head):
            layers = write_untrained_heads(cfg.backbone, cfg.head, cfg.out, cfg.exit_layers, cfg.head_options, cfg.name)
            print(json.dumps({"head": cfg.head, "exit_layers": layers, "trained": False}))
            return
        metrics = train_heads(cfg)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, nothing written
        sys.exit(f"train_heads: error: {e}")
    summary = {layer: {"f1": round(m["f1"], 4), "untrained_f1": round(metrics["untrained"][layer]["f1"], 4),
                       "positive_ratio": round(m["positive_ratio"], 4)} for layer, m in metrics["trained"].items()}
    print(json.dumps({"held_out": summary, "tokens_per_second": round(metrics["throughput"]["tokens_per_second"], 1)}),
          file=sys.stdout)


if __name__ == "__main__":
    main()
