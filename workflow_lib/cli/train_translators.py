"""Train tuned-lens translators at every exit of a frozen backbone (docs/training.md, "Translators").

  python -m workflow_lib.cli.train_translators --backbone results/backbones/tiny-mistral --tokenizer results/tokenizer \
      --train-text corpus_train.jsonl --exit-layers 2,3,4 --out results/translators/tiny-mistral

With --answers (python -m workflow_lib.cli.answers: the full model's greedy answers to held-out task prompts) and
--answers-weight, the translators are also fitted on the answers' decode steps.

Writes <out>/translators.safetensors + translators.json (load with workflow_lib.models.translators.load_translators;
the json records the training settings, the per-exit training KL at the first and last steps, the time taken and
the provenance). The text is read as head training reads it (training/text.py: .txt a document per line, .jsonl
"text"). Every default is the pipeline's (translators in schemas/config.schema.yaml; workflow_lib/defaults.py).
"""
from __future__ import annotations

import argparse
import json
import sys

from ..arguments import layer_list, paired_default, set_threads
from ..choices import TRANSLATOR_INITS
from ..defaults import SEED, TRANSLATORS
from ..training.translators import TranslatorConfig, train_translators


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.train_translators", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME")
    p.add_argument("--tokenizer", help="tokenizer folder or hub id (default: the backbone's; required for presets)")
    p.add_argument("--train-text", required=True, help="training corpus: .txt (a document per line) or .jsonl ('text')")
    p.add_argument("--exit-layers", type=layer_list, help="0-based block indices (default: 4 in the second half)")
    p.add_argument("--out", required=True, help="output folder (translators.safetensors, translators.json)")
    for name in ("steps", "batch_size", "seq_len", "lr"):
        p.add_argument(f"--{name.replace('_', '-')}", type=type(TRANSLATORS[name]), default=TRANSLATORS[name],
                       help=f"(default {TRANSLATORS[name]})")
    p.add_argument("--init", choices=TRANSLATOR_INITS, default=TRANSLATORS["init"],
                   help="identity (the tuned lens' zero init) or least_squares (ridge fit of the final hidden state)")
    p.add_argument("--init-batches", type=int, default=TRANSLATORS["init_batches"],
                   help=f"batches the least-squares start is fitted on (default {TRANSLATORS['init_batches']})")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--max-train-tokens", type=int, help="cap on training tokens read (default: steps*batch*seq_len)")
    p.add_argument("--answers", help="answers file (python -m workflow_lib.cli.answers) whose decode steps join the fit")
    p.add_argument("--answers-weight", type=float,
                   help="share of the fit on the answers' positions, in [0, 1) (default: "
                        f"{TRANSLATORS['answers_weight']} with --answers, else 0: text alone)")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    return p


def parse_args(argv=None) -> TranslatorConfig:
    p = build_parser()
    a = p.parse_args(argv)
    set_threads(p, a.threads)
    return TranslatorConfig(
        backbone=a.backbone, train_text=a.train_text, out=a.out, exit_layers=a.exit_layers, tokenizer=a.tokenizer,
        steps=a.steps, batch_size=a.batch_size, seq_len=a.seq_len, lr=a.lr, init=a.init, init_batches=a.init_batches,
        weight_decay=a.weight_decay, grad_clip=a.grad_clip, max_train_tokens=a.max_train_tokens, answers=a.answers,
        answers_weight=paired_default(a.answers_weight, a.answers, TRANSLATORS["answers_weight"], 0.0), seed=a.seed,
        device=a.device)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    try:
        record = train_translators(cfg)
    except (ValueError, FileNotFoundError) as e:  # bad input: one clear line, nothing written
        sys.exit(f"train_translators: error: {e}")
    print(json.dumps({"train_kl_last_step": {k: round(v, 4) for k, v in record["train_kl_last_step"].items()},
                      "seconds": round(record["seconds"], 1)}))


if __name__ == "__main__":
    main()
