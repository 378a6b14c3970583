"""Batched early-exit decoding: generated tokens/s at several batch sizes, and identity with batch size 1 (issue 11).

The same prompts (lengths drawn between --min-len and --max-len, so batches carry left padding) are decoded at
batch size 1 with `ExitDecoder.generate` (the reference) and in batches of each --batch-sizes with
`generate_batch`, for exits disabled and for each --thresholds with heads. Heads: trained ones (--heads DIR with
--backbone PATH), else random `calm` heads at the backbone's default exit layers (random weights, presets), whose
p_exit spreads around 0.5 so rows of one batch disagree. No EOS: every prompt generates --new-tokens.

Reported per (variant, batch size): wall seconds for all prompts (prefill + decode), generated tokens/s (and over
the decode steps alone), speedup over batch 1 (paired per round), the exact CRF over all decode steps, and how many prompts gave exactly the batch-1
tokens and exit layers (a difference comes from floating-point differences between batched and single-row
products flipping a near-tied decision; tests/test_batch.py identifies those). --compare-rows adds, for each
threshold, the blocks after an exit run on every row instead of the climbing rows only (`climbing_only=False`).

  CPU, tiny random backbones:   python benchmarks/batched_throughput.py --threads 1
  CPU, trained pipeline heads:  python benchmarks/batched_throughput.py --backbone results/backbones/mistral \\
                                    --heads results/heads/mistral/head~calm --threads 1
  GPU, 7B shapes in bf16:       python benchmarks/batched_throughput.py --preset mistral-7b-v0.3 --device cuda
"""
from __future__ import annotations

import argparse
import statistics

import torch

from timing import add_common_args, print_table, save, setup, spread, timed

from workflow_lib.decoding.accounting import crf_exact
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import PRESETS, build_backbone, default_exit_layers, load_backbone, preset_config
from workflow_lib.models.heads import build_heads, load_heads


COLUMNS = ["backbone", "variant", "rows", "batch", "seconds", "tok_per_s", "decode_tok_per_s", "speedup", "speedup_q1",
           "speedup_q3", "crf_exact", "identical"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", action="append", choices=sorted(PRESETS),
                     help="random-weight backbone preset (repeatable; default: tiny-mistral and tiny-mamba2)")
    src.add_argument("--backbone", help="a trained backbone folder (with --heads)")
    p.add_argument("--heads", help="trained heads folder for --backbone")
    p.add_argument("--hidden-size", type=int, default=192, help="tiny presets' hidden size (default 192, as the "
                                                                "embedded default's backbones)")
    p.add_argument("--layers", type=int, default=6, help="tiny presets' blocks (default 6)")
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32); 1 is the reference")
    p.add_argument("--prompts", type=int, default=32, help="prompts decoded per variant and batch size (default 32)")
    p.add_argument("--min-len", type=int, default=40)
    p.add_argument("--max-len", type=int, default=120)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--thresholds", default="0.3,0.5,0.7", help="comma-separated thresholds with heads "
                                                               "(default 0.3,0.5,0.7)")
    p.add_argument("--compare-rows", action="store_true",
                   help="also run the blocks after an exit on every row (climbing_only=False) to compare")
    add_common_args(p, out="results/benchmarks/batched_throughput.json")
    args = p.parse_args()
    if args.backbone and not args.heads:
        p.error("--backbone needs --heads")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if 1 not in args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("--batch-sizes must include 1 (the reference) and be >= 1")
    args.thresholds = [float(t) for t in args.thresholds.split(",") if t]
    return args


def backbones(args, device, dtype):
    """(name, model, heads) per backbone under test."""
    if args.backbone:
        model = load_backbone(args.backbone, device=device, dtype=dtype)
        heads, _ = load_heads(args.heads, backbone_config=model.config, device=device, dtype=dtype)
        yield args.backbone, model, heads
        return
    for name in args.preset or ["tiny-mistral", "tiny-mamba2"]:
        tiny = name.startswith("tiny-")
        config = preset_config(name, **({"hidden_size": args.hidden_size, "num_hidden_layers": args.layers} if tiny else {}))
        model = build_backbone(config, seed=args.seed, device=device, dtype=dtype)
        heads = build_heads("calm", config.hidden_size, default_exit_layers(config.num_hidden_layers), seed=args.seed)
        yield name, model, heads.to(device=device, dtype=dtype)


def main() -> None:
    args = parse_args()
    device, dtype = setup(args)
    rows = []
    for name, model, heads in backbones(args, device, dtype):
        gen = torch.Generator().manual_seed(args.seed)
        vocab = model.config.vocab_size
        lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=gen).tolist()
        prompts = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in lengths]
        variants = [("exits off", ExitDecoder(model))] + [
            (f"threshold {t:g}", ExitDecoder(model, heads, threshold=t)) for t in args.thresholds]
        for label, decoder in variants:
            modes = [True, False] if args.compare_rows and decoder.exits_enabled else [True]
            def run(b, climbing_only=True):
                if b == 1:
                    return [decoder.generate(torch.tensor([q]), max_new_tokens=args.new_tokens, eos_token_id=[])
                            for q in prompts]
                return [r for s in range(0, len(prompts), b)
                        for r in decoder.generate_batch(prompts[s:s + b], max_new_tokens=args.new_tokens,
                                                        eos_token_id=[], climbing_only=climbing_only)]
            for b in args.batch_sizes[1:] if args.warmup else []:  # untimed, at the timed shapes' batch sizes
                for mode in modes:
                    decoder.generate_batch(prompts[:b], max_new_tokens=4, eos_token_id=[], climbing_only=mode)
            runs = [(1, True)] + [(b, mode) for b in args.batch_sizes if b > 1 for mode in modes]
            seconds: dict[tuple, list[float]] = {key: [] for key in runs}
            results = {}
            for r in range(args.repeats):  # interleaved: every round runs each batch size once, order rotated
                for key in runs[r % len(runs):] + runs[:r % len(runs)]:
                    t, results[key] = timed(lambda: run(*key), device)
                    seconds[key].append(t)
            ref = results[(1, True)]
            tokens = sum(len(x.token_ids) for x in ref)
            for key in runs:
                b, mode = key
                got = results[key]
                same = sum(x.token_ids == y.token_ids and x.exit_layers == y.exit_layers for x, y in zip(ref, got))
                s = spread(seconds[key])
                paired = spread([s1 / sb for s1, sb in zip(seconds[(1, True)], seconds[key])])
                decode = sum({id(x): x.batch_decode_seconds or x.decode_seconds for x in got}.values()) if b == 1 else \
                    sum(got[i].batch_decode_seconds for i in range(0, len(got), b))
                rows.append({"backbone": name, "variant": label, "rows": "climbing" if mode else "all", "batch": b,
                             "seconds": s["median"], "tok_per_s": tokens / s["median"],
                             "decode_tok_per_s": (tokens - len(got)) / decode, "speedup": paired["median"],
                             "speedup_q1": paired["q1"], "speedup_q3": paired["q3"],
                             "crf_exact": crf_exact([c for x in got for c in x.costs]),
                             "identical": f"{same}/{len(prompts)}", "seconds_spread": s})
                print_table(rows[-1:], COLUMNS)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print_table(rows, COLUMNS)
    save(args.out, "batched_throughput", args, rows)
    if rows:
        print("median speedup at the largest batch:",
              statistics.median(r["speedup"] for r in rows if r["batch"] == max(args.batch_sizes)))


if __name__ == "__main__":
    main()
