"""Tokens per second of head training: all exits of a head type in one backbone pass vs one pass per exit (issue 6).

Both variants use the project's own trainer (`workflow_lib.training.distill.HeadTrainer.train_step`: frozen
backbone pass with the exit blocks captured, labels, head losses, backward, optimizer step):
  one_pass   one trainer holding the heads of every exit: one backbone pass per batch
  per_exit   one trainer per exit, each with a single head: E backbone passes per batch (the naive loop)
A training step of either variant trains every exit on the same batch; tokens/s = batch tokens / step time.
Rounds are interleaved; medians over rounds with quartiles; speedup paired per round.

  python benchmarks/head_training.py                       # tiny random backbones on CPU, heads calm, ffn, mamba
  python benchmarks/head_training.py --preset mistral-7b-v0.3 --device cuda --batch-size 4 --seq-len 512
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from timing import add_common_args, interleaved, print_table, save, setup, spread, timed

from workflow_lib.models.backbone import PRESETS, build_backbone, default_exit_layers, preset_config
from workflow_lib.models.heads import HEAD_TYPES, build_heads
from workflow_lib.training.distill import HeadTrainer, TrainConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=sorted(PRESETS),
                   help="backbone preset, random weights (repeatable; default: tiny-mistral and tiny-mamba2)")
    p.add_argument("--heads", default=",".join(n for n, c in sorted(HEAD_TYPES.items()) if c.trainable),
                   help="comma-separated head types (default: every trainable type)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    add_common_args(p, out="results/benchmarks/head_training.json")
    return p.parse_args()


def trainer(model: nn.Module, heads: nn.ModuleDict, head_type: str, seed: int) -> HeadTrainer:
    # Paths are unused by train_step; the loss mode and optimizer are the trainer's defaults.
    cfg = TrainConfig(backbone="", head=head_type, train_text="", valid_text="", out="", seed=seed)
    return HeadTrainer(model, heads, cfg)


def main() -> None:
    args = parse_args()
    head_types = args.heads.split(",")
    unknown = [h for h in head_types if h not in HEAD_TYPES or not HEAD_TYPES[h].trainable]
    if unknown:
        raise SystemExit(f"error: {unknown} are not trainable head types; choose from "
                         f"{', '.join(n for n, c in HEAD_TYPES.items() if c.trainable)}")
    device, dtype = setup(args)
    rows = []
    for preset in args.preset or ["tiny-mistral", "tiny-mamba2"]:
        config = preset_config(preset)
        model = build_backbone(config, seed=args.seed, device=device, dtype=dtype)
        layers = default_exit_layers(config.num_hidden_layers)
        gen = torch.Generator().manual_seed(args.seed)
        batch = torch.randint(3, config.vocab_size, (args.batch_size, args.seq_len), generator=gen).to(device)  # (B, T)
        tokens = batch.numel()
        for head_type in head_types:
            def make(exits: list[int]) -> HeadTrainer:
                return trainer(model, build_heads(head_type, config.hidden_size, exits, seed=args.seed), head_type,
                               args.seed)
            one, per = make(layers), [make([e]) for e in layers]

            def one_pass() -> float:
                return tokens / timed(lambda: one.train_step(batch), device)[0]

            def per_exit() -> float:
                return tokens / timed(lambda: [t.train_step(batch) for t in per], device)[0]

            print(f"{preset} / {head_type}: {len(layers)} exits, batch {args.batch_size}x{args.seq_len}", flush=True)
            samples = interleaved({"one_pass": one_pass, "per_exit": per_exit}, args.repeats, args.warmup)
            ratio = spread([a / b for a, b in zip(samples["one_pass"], samples["per_exit"])])  # paired per round
            for variant, tps in samples.items():
                s = spread(tps)
                rows.append({"backbone": preset, "head": head_type, "variant": variant, "exits": len(layers),
                             "tokens_per_s": s["median"], "tokens_per_s_q1": s["q1"], "tokens_per_s_q3": s["q3"],
                             "speedup_vs_per_exit": ratio["median"] if variant == "one_pass" else 1.0})
        del model
    print_table(rows, ["backbone", "head", "variant", "exits", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3",
                       "speedup_vs_per_exit"])
    save(args.out, "head_training", args, rows)


if __name__ == "__main__":
    main()
