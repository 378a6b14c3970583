"""Realised speedup of forced early exits versus the exact compute reduction factor (issue 6).

For each backbone, each missing-state policy and each exit layer, a test-only `forced` head at that one layer
makes every generated token exit there; the same prompt is decoded with exits disabled, interleaved. Reported:
ms per decode step, the measured speedup (disabled / forced, paired per round, median over rounds, quartiles)
next to the exact and paper CRFs of the same run, and speedup / exact CRF (goal >= 0.9 at batch size 1).
--batch-size B decodes B random prompts together (`generate_batch`, every row forced to the same exit): ms per
decode step of the whole batch.

To say what bounds the speedup, a line t(step) = fixed + per_block * blocks_run is fitted per policy over the
exit layers: `per_block` is the measured cost of running one block, `fixed` everything a step pays whatever
the depth (embedding, LM head, the policy's skipped-block work, Python and framework overhead).

  CPU (default, tiny random backbones):  python benchmarks/realised_speedup.py
  GPU (random-weight 7B shapes, no download):
    python benchmarks/realised_speedup.py --preset mistral-7b-v0.3 --device cuda --dtype bfloat16
    python benchmarks/realised_speedup.py --preset mamba-codestral-7b-v0.1 --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from timing import add_common_args, interleaved, print_table, save, setup, spread

from workflow_lib.decoding.accounting import crf_exact, crf_paper
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.choices import EMISSION_RULES, POLICIES
from workflow_lib.models.backbone import PRESETS, build_backbone, default_exit_layers, parts, preset_config
from workflow_lib.models.heads import build_head
from workflow_lib.models.translators import Translators


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=sorted(PRESETS),
                   help="backbone preset, random weights (repeatable; default: tiny-mistral and tiny-mamba2)")
    p.add_argument("--policies", default=None, help="comma-separated policies (default: all of the architecture)")
    p.add_argument("--exit-layers", default=None,
                   help="comma-separated 0-based blocks, or 'all' for 0..n-2 (default: the 4 default exit layers)")
    p.add_argument("--hidden-size", type=int, default=None,
                   help="override a tiny preset's hidden size (shows how the gap closes as matmuls dominate)")
    p.add_argument("--layers", type=int, default=None, help="override a tiny preset's number of blocks")
    p.add_argument("--emissions", default="last_block", help="comma-separated emission rules of the forced exits "
                   f"(default: last_block; of {', '.join(EMISSION_RULES)}; translator times zero-initialised "
                   "translators: the same d x d product a trained one runs)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (default: 32)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (default: 32)")
    p.add_argument("--batch-size", type=int, default=1, help="prompts decoded together (default: 1)")
    add_common_args(p, out="results/benchmarks/realised_speedup.json")
    return p.parse_args()


def exit_layers_for(spec: str | None, n_layers: int) -> list[int]:
    if spec is None:
        return default_exit_layers(n_layers)
    layers = list(range(n_layers - 1)) if spec == "all" else [int(x) for x in spec.split(",")]
    bad = [e for e in layers if not 0 <= e < n_layers - 1]
    if bad:
        raise SystemExit(f"error: exit layers {bad} out of range 0..{n_layers - 2} for {n_layers} blocks")
    return layers


def decode_step_seconds(decoder: ExitDecoder, prompt: torch.Tensor, new_tokens: int, record: dict):
    """A callable for `interleaved`: one generation of the (B, T) prompts, returns seconds per decode step of the
    whole batch, keeps the last results (one per row)."""
    def run() -> float:
        if len(prompt) == 1:
            results = [decoder.generate(prompt, max_new_tokens=new_tokens)]  # prompt: (1, T)
        else:
            results = decoder.generate_batch(prompt.tolist(), max_new_tokens=new_tokens)
        record["results"] = results
        seconds = results[0].batch_decode_seconds or results[0].decode_seconds  # a batch's time, counted once
        return seconds / max(max(len(r.costs) for r in results), 1)
    return run


def run_crfs(results) -> tuple[float, float]:
    """Exact and paper CRF over every decode step of every row."""
    costs = [c for r in results for c in r.costs]
    return crf_exact(costs), crf_paper(costs)


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (needs at least two distinct xs)."""
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def bench_backbone(preset: str, args, device, dtype) -> tuple[list[dict], list[dict]]:
    if args.batch_size < 1:
        raise SystemExit(f"error: --batch-size must be >= 1, got {args.batch_size}")
    overrides = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.layers)) if v}
    if overrides and not preset.startswith("tiny-"):
        raise SystemExit(f"error: --hidden-size / --layers only apply to the tiny presets, not {preset}")
    config = preset_config(preset, **overrides)
    model = build_backbone(config, seed=args.seed, device=device, dtype=dtype)
    arch, n = parts(model).arch, config.num_hidden_layers
    known = POLICIES[parts(model).family]
    policies = args.policies.split(",") if args.policies else list(known)
    unknown = [p for p in policies if p not in known]
    if unknown:
        raise SystemExit(f"error: policies {unknown} do not fit {arch}; choose from {', '.join(known)}")
    layers = exit_layers_for(args.exit_layers, n)
    emissions = args.emissions.split(",")
    if set(emissions) - set(EMISSION_RULES):
        raise SystemExit(f"error: unknown emission rules {sorted(set(emissions) - set(EMISSION_RULES))}")
    translators = Translators(config.hidden_size, layers).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(args.seed)
    prompt = torch.randint(3, config.vocab_size, (args.batch_size, args.prompt_len), generator=gen).to(device)  # (B, T)

    variants, records = {}, {}
    records["disabled"] = {}
    variants["disabled"] = decode_step_seconds(ExitDecoder(model), prompt, args.new_tokens, records["disabled"])
    for emission in emissions:
        for policy in policies:
            for e in layers:
                heads = nn.ModuleDict({str(e): build_head("forced", config.hidden_size)}).to(device=device, dtype=dtype)
                name = f"{policy}@{e}@{emission}"
                records[name] = {}
                decoder = ExitDecoder(model, heads=heads, threshold=0.5, policy=policy, emission=emission,
                                      translators=translators if emission == "translator" else None)
                variants[name] = decode_step_seconds(decoder, prompt, args.new_tokens, records[name])
    print(f"{preset}: {len(variants)} variants x {args.repeats} repeats ({n} blocks, {device}, {dtype})", flush=True)
    samples = interleaved(variants, args.repeats, args.warmup)

    base = samples["disabled"]
    rows = [{"backbone": preset, "hidden_size": config.hidden_size, "batch_size": args.batch_size, "policy": "disabled",
             "emission": "-",
             "exit_layer": n - 1,
             "blocks_run": n,
             "ms_per_step": spread([1e3 * s for s in base])["median"], "speedup": 1.0,
             "crf_exact": run_crfs(records["disabled"]["results"])[0],
             "tokens": sum(len(r.costs) for r in records["disabled"]["results"])}]
    for name, times in samples.items():
        if name == "disabled":
            continue
        policy, e, emission = name.split("@")
        results = records[name]["results"]
        exits = {x for r in results for x in r.exit_layers[1:]}  # the first token comes from the full-depth prefill
        if exits != {int(e)}:
            raise RuntimeError(f"{name}: forced head at block {e}, tokens exited at {sorted(exits)}")
        crf, crf_p = run_crfs(results)
        ratio = spread([b / t for b, t in zip(base, times)])  # paired per round
        rows.append({"backbone": preset, "hidden_size": config.hidden_size, "batch_size": args.batch_size,
                     "policy": policy, "emission": emission,
                     "exit_layer": int(e), "blocks_run": int(e) + 1 + (emission == "last_block"),
                     "ms_per_step": spread([1e3 * s for s in times])["median"],
                     "ms_per_step_spread": spread([1e3 * s for s in times]),
                     "speedup": ratio["median"], "speedup_q1": ratio["q1"], "speedup_q3": ratio["q3"],
                     "crf_exact": crf, "crf_paper": crf_p,
                     "speedup_over_crf": ratio["median"] / crf, "tokens": sum(len(r.costs) for r in results)})

    fits = []
    for emission in emissions:
        for policy in policies:
            mine = [r for r in rows if r["policy"] == policy and r["emission"] == emission]
            if len({r["blocks_run"] for r in mine}) < 2:
                continue
            fixed, per_block = fit_line([r["blocks_run"] for r in mine], [r["ms_per_step"] for r in mine])
            fits.append({"backbone": preset, "policy": policy, "emission": emission, "fixed_ms": fixed,
                         "per_block_ms": per_block, "disabled_ms": rows[0]["ms_per_step"],
                         "fixed_share_of_disabled": fixed / rows[0]["ms_per_step"]})
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, fits


def main() -> None:
    args = parse_args()
    device, dtype = setup(args)
    rows, fits = [], []
    for preset in args.preset or ["tiny-mistral", "tiny-mamba2"]:
        r, f = bench_backbone(preset, args, device, dtype)
        rows += r
        fits += f
    print_table(rows, ["backbone", "policy", "emission", "exit_layer", "ms_per_step", "speedup", "speedup_q1",
                       "speedup_q3", "crf_exact", "crf_paper", "speedup_over_crf"])
    print("\nper-policy fit  t(step) = fixed + per_block * blocks_run:")
    print_table(fits, ["backbone", "policy", "emission", "fixed_ms", "per_block_ms", "disabled_ms",
                       "fixed_share_of_disabled"])
    save(args.out, "realised_speedup", args, rows, fits=fits)


if __name__ == "__main__":
    main()
