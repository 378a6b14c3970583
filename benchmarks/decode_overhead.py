"""Overhead of the exit-aware decoder with exits disabled versus transformers' own greedy `generate` (issue 2).

Both decode the same prompt with the model's own EOS and no other option, and must produce the same tokens
(checked); every round runs each once, interleaved and rotated. Reported per backbone: ms per generated token (whole call: prefill +
decode, the same work on both sides), the paired ratio decoder / generate (median over rounds, quartiles,
extremes) and the decoder's own decode-only ms per step. Goal: ratio <= 1.05. --batch-size B decodes B prompts of
the same length together (`generate_batch` against `generate` on the (B, T) batch); a row that reaches EOS leaves
our batch and is padded by generate, and ms per token divides by the tokens our rows produced.

  CPU (tiny random backbones):  python benchmarks/decode_overhead.py
  GPU (random-weight 7B shapes): python benchmarks/decode_overhead.py --preset mistral-7b-v0.3 --device cuda
"""
from __future__ import annotations

import argparse

import torch

from timing import add_common_args, interleaved, print_table, save, setup, spread, timed

from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import PRESETS, build_backbone, preset_config


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=sorted(PRESETS),
                   help="backbone preset, random weights (repeatable; default: tiny-mistral and tiny-mamba2)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default: 32)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run (default: 64)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default: 1)")
    add_common_args(p, out="results/benchmarks/decode_overhead.json")
    p.set_defaults(repeats=9, warmup=2)
    return p.parse_args()


def bench_backbone(preset: str, args, device, dtype) -> dict:
    config = preset_config(preset)
    model = build_backbone(config, seed=args.seed, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed)
    b = args.batch_size
    prompt = torch.randint(3, config.vocab_size, (b, args.prompt_len), generator=gen).to(device)  # (B, T)
    attention_mask = torch.ones_like(prompt)  # (B, T): what a caller passes, spares generate's guess
    decoder = ExitDecoder(model)
    n = args.new_tokens
    eos = {int(e) for e in ([config.eos_token_id] if isinstance(config.eos_token_id, int) else config.eos_token_id)}
    last = {}

    def run_generate() -> float:
        seconds, out = timed(lambda: model.generate(prompt, attention_mask=attention_mask, do_sample=False,
                                                    max_new_tokens=n), device)
        rows = []
        for row in out[:, prompt.shape[1]:].tolist():  # cut each row after its EOS (generate pads finished rows)
            stop = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            rows.append(row[:stop])
        last["generate"] = rows
        return seconds / sum(len(r) for r in rows)

    def run_decoder() -> float:
        if b == 1:
            seconds, result = timed(lambda: [decoder.generate(prompt, max_new_tokens=n)], device)
        else:
            seconds, result = timed(lambda: decoder.generate_batch(prompt.tolist(), max_new_tokens=n), device)
        last["decoder"] = result
        return seconds / sum(len(r.token_ids) for r in result)

    print(f"{preset}: {args.repeats} interleaved rounds, batch {b}, {n} tokens, prompt {args.prompt_len} ({device}, "
          f"{dtype})", flush=True)
    samples = interleaved({"generate": run_generate, "decoder": run_decoder}, args.repeats, args.warmup)
    results = last["decoder"]
    if [r.token_ids for r in results] != last["generate"]:
        raise RuntimeError(f"{preset}: the decoder and generate produced different tokens")
    result = results[0]
    ratio = spread([d / g for d, g in zip(samples["decoder"], samples["generate"])])  # paired per round
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"backbone": preset, "batch_size": b, "tokens": sum(len(r.token_ids) for r in results),
            "generate_ms_per_token": 1e3 * spread(samples["generate"])["median"],
            "decoder_ms_per_token": 1e3 * spread(samples["decoder"])["median"],
            "decoder_decode_ms_per_step": 1e3 * (result.batch_decode_seconds or result.decode_seconds)
            / max(len(result.costs), 1),
            "ratio": ratio["median"], "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"],
            "ratio_min": ratio["min"], "ratio_max": ratio["max"],
            "generate_ms_spread": {k: 1e3 * v if k != "n" else v for k, v in spread(samples["generate"]).items()},
            "decoder_ms_spread": {k: 1e3 * v if k != "n" else v for k, v in spread(samples["decoder"]).items()}}


def main() -> None:
    args = parse_args()
    device, dtype = setup(args)
    rows = [bench_backbone(preset, args, device, dtype) for preset in args.preset or ["tiny-mistral", "tiny-mamba2"]]
    print_table(rows, ["backbone", "batch_size", "tokens", "generate_ms_per_token", "decoder_ms_per_token", "ratio",
                       "ratio_q1", "ratio_q3", "ratio_min", "ratio_max"])
    save(args.out, "decode_overhead", args, rows, goal_ratio=1.05)


if __name__ == "__main__":
    main()
