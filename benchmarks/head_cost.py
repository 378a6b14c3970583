"""Cost of one evaluation of each exit head type relative to one backbone block, at batch size 1 (issue 14).

What the decoder pays per evaluated exit (decoder.ExitDecoder.step): the final norm of the exit's hidden state,
the head's `step` (for `saturation` also the normed block input; for `softmax` the LM-head product it counts), and
reading p_exit back to the host. What one block costs: one decode step of a backbone block over a cached context of
`--context-len` tokens (its K/V are cropped back after each call, so every call sees the same context). Both are
timed interleaved, `--calls` calls per measurement, medians over `--repeats` rounds with quartiles; next to the
measured ratio stands the MAC ratio the exact CRF uses (head MACs / block MACs at that context).

Only two blocks of the backbone are built (the ratio needs one; 7B shapes then fit any laptop): random weights in
`--dtype`, no download.

  CPU (tiny presets):          python benchmarks/head_cost.py
  7B shapes, bf16 (CPU or GPU): python benchmarks/head_cost.py --preset mistral-7b-v0.3 \
                                    --preset mamba-codestral-7b-v0.1 --dtype bfloat16 [--device cuda]
"""
from __future__ import annotations

import argparse

import torch
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from timing import add_common_args, interleaved, print_table, save, setup, spread, timed

from workflow_lib.decoding.accounting import CostModel
from workflow_lib.models.backbone import PRESETS, build_backbone, parts, preset_config
from workflow_lib.models.heads import HEAD_TYPES, build_head

HEADS = [name for name, cls in HEAD_TYPES.items() if name != "forced"]  # forced is test-only


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", choices=sorted(PRESETS),
                   help="backbone preset, random weights (repeatable; default: tiny-mistral and tiny-mamba2)")
    p.add_argument("--heads", default=",".join(HEADS), help=f"comma-separated head types (default: {','.join(HEADS)})")
    p.add_argument("--context-len", type=int, default=128, help="cached tokens a block step attends to (default: 128)")
    p.add_argument("--calls", type=int, default=10, help="calls per timed measurement (default: 10)")
    add_common_args(p, out="results/benchmarks/head_cost.json")
    return p.parse_args()


def two_block_model(preset: str, seed: int, device, dtype):
    preset_cfg = preset_config(preset)
    full = preset_cfg.to_dict()
    full.pop("layer_types", None)  # recomputed for the new depth
    # one block to time, one after it (exits never sit at the last block)
    config = type(preset_cfg)(**{**full, "num_hidden_layers": 2})
    return build_backbone(config, seed=seed, device=device, dtype=dtype)


@torch.no_grad()
def bench_backbone(preset: str, head_types: list[str], args, device, dtype) -> list[dict]:
    model = two_block_model(preset, args.seed, device, dtype)
    p, config = parts(model), model.config
    gen = torch.Generator().manual_seed(args.seed)
    context = torch.randint(3, config.vocab_size, (1, args.context_len), generator=gen).to(device)  # (1, T)
    cache = DynamicCache(config=config)
    model(input_ids=context, cache=cache, use_cache=True, logits_to_keep=1)  # fills the cache of both blocks
    h_in = p.embed(context[:, -1:])  # (1, 1, D): a block input of the right scale
    kwargs: dict = {"cache": cache}
    if p.is_attention:
        position_ids = torch.full((1, 1), args.context_len, dtype=torch.long, device=device)  # (1, 1)
        pos_emb = p.rotary_emb(h_in, position_ids=position_ids)  # cos, sin: (1, 1, head_dim)
        mask = create_causal_mask(config=config, inputs_embeds=h_in, attention_mask=None, cache=cache,
                                  position_ids=position_ids)
        kwargs.update(attention_mask=mask, position_ids=position_ids, use_cache=True, position_embeddings=pos_emb)
    block = p.layers[0]

    def block_call():
        out = block(h_in, **kwargs)  # (1, 1, D)
        if p.is_attention:
            cache.layers[0].crop(-1)  # drop the K/V just appended: the same context for every call
        return out

    h = block_call()  # (1, 1, D): the exit's hidden state
    model_dtype = p.final_norm.weight.dtype

    def block_step():
        for _ in range(args.calls):
            block_call()
        return None

    heads, states = {}, {}
    for name in head_types:
        head = build_head(name, config.hidden_size).to(device=device, dtype=dtype)
        head.attach(p)
        heads[name] = head
        states[name] = head.init_state(1, device, model_dtype)
        if states[name] is not None:  # a stateful head steps from a primed state, as after a prompt
            states[name] = head.prefill(p.final_norm(h).to(model_dtype), states[name])

    def head_step(name):
        head = heads[name]

        def run():
            for _ in range(args.calls):
                z_in = p.final_norm(h_in)[:, 0].to(model_dtype) if head.reads_block_input else None  # (1, D)
                logits, _ = head.step(p.final_norm(h)[:, 0].to(model_dtype), states[name], z_in)  # (1, 2)
                float(logits.float().softmax(-1)[0, 1])  # the decoder's one host sync per exit
            return None
        return run

    variants = {"block": block_step} | {name: head_step(name) for name in head_types}
    timers = {name: (lambda fn=fn: timed(fn, device)[0] / args.calls) for name, fn in variants.items()}
    print(f"{preset}: block + {len(head_types)} heads x {args.repeats} repeats (hidden {config.hidden_size}, "
          f"{device}, {dtype})", flush=True)
    samples = interleaved(timers, args.repeats, args.warmup)
    block_macs = CostModel(config).block_macs(args.context_len + 1)
    rows = []
    for name in ["block", *head_types]:
        ms = spread([1e3 * s for s in samples[name]])
        ratio = spread([t / b for t, b in zip(samples[name], samples["block"])])  # paired per round
        macs = block_macs if name == "block" else heads[name].macs_per_token()
        rows.append({"backbone": preset, "component": name, "ms": ms["median"], "ms_spread": ms,
                     "ratio": ratio["median"], "ratio_q1": ratio["q1"], "ratio_q3": ratio["q3"], "macs": macs,
                     "mac_ratio": macs / block_macs})
    del model
    return rows


def main() -> None:
    args = parse_args()
    head_types = args.heads.split(",")
    unknown = [h for h in head_types if h not in HEADS]
    if unknown:
        raise SystemExit(f"error: unknown head types {unknown}; known: {', '.join(HEADS)}")
    if args.context_len < 1 or args.calls < 1:
        raise SystemExit(f"error: --context-len and --calls must be >= 1, got {args.context_len} and {args.calls}")
    device, dtype = setup(args)
    rows = []
    for preset in args.preset or ["tiny-mistral", "tiny-mamba2"]:
        rows += bench_backbone(preset, head_types, args, device, dtype)
    print_table(rows, ["backbone", "component", "ms", "ratio", "ratio_q1", "ratio_q3", "macs", "mac_ratio"])
    save(args.out, "head_cost", args, rows)


if __name__ == "__main__":
    main()
