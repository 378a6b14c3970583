"""Tokens per second of trained exit heads across a threshold grid, next to both CRFs (issue 6).

Every threshold (and exits disabled, the reference) decodes the same prompts greedily at batch size 1; the
variants are interleaved round by round. Per threshold: decode tokens/s (median over rounds, quartiles),
measured speedup over exits disabled (paired per round), the exact and paper CRFs over all decode steps, and
the share of tokens that exited early.

  python benchmarks/trained_sweep.py --backbone results/backbones/tiny-mistral --heads results/heads/... \\
      --prompts prompts.txt
Prompts: a .txt file (one prompt per line) or .jsonl (the --field of each record). The tokenizer comes from
the backbone folder unless --tokenizer names another.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoTokenizer

from timing import add_common_args, interleaved, print_table, save, setup, spread

from workflow_lib.decoding.accounting import crf_exact, crf_paper
from workflow_lib.decoding.decoder import ExitDecoder
from workflow_lib.models.backbone import load_backbone
from workflow_lib.models.heads import load_heads
from workflow_lib.choices import EMISSION_RULES
from workflow_lib.models.translators import load_translators


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone folder, hub id or preset:NAME")
    p.add_argument("--heads", required=True, help="trained heads folder (save_heads output)")
    p.add_argument("--prompts", required=True, help=".txt (one prompt per line) or .jsonl file")
    p.add_argument("--field", default="prompt", help="record field holding the prompt in a .jsonl (default: prompt)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or id (default: the backbone's)")
    p.add_argument("--n-prompts", type=int, default=8, help="first N prompts (default: 8)")
    p.add_argument("--thresholds", default="0.5,0.6,0.7,0.8,0.9,0.95,0.99",
                   help="comma-separated exit thresholds (default: 0.5,...,0.99)")
    p.add_argument("--policy", default=None, help="missing-state policy (default: the decoder's)")
    p.add_argument("--emission", default="last_block", choices=EMISSION_RULES,
                   help="emission rule the heads were trained for (default: last_block)")
    p.add_argument("--translators", default=None, help="translators folder (the translator rule's)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--stop", action="append", default=None,
                   help="stop string, as the task's `until` (repeatable; e.g. --stop $'\\n' for TriviaQA's answers)")
    add_common_args(p, out="results/benchmarks/trained_sweep.json")
    return p.parse_args()


def read_prompts(path: str, field: str, n: int) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"error: prompts file {path!r} does not exist")
    if p.suffix == ".jsonl":
        records = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        missing = [i for i, r in enumerate(records) if field not in r]
        if missing:
            raise SystemExit(f"error: {path}: record {missing[0]} has no field {field!r} (choose one with --field)")
        prompts = [r[field] for r in records]
    else:
        prompts = [line for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit(f"error: no prompts in {path}")
    return prompts[:n]


def main() -> None:
    args = parse_args()
    try:
        thresholds = [float(t) for t in args.thresholds.split(",")]
    except ValueError:
        raise SystemExit(f"error: --thresholds must be comma-separated numbers, got {args.thresholds!r}")
    prompts = read_prompts(args.prompts, args.field, args.n_prompts)
    device, dtype = setup(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.backbone)
    model = load_backbone(args.backbone, device=device, dtype=dtype)
    heads, meta = load_heads(args.heads, backbone_config=model.config)
    heads = heads.to(device=device, dtype=dtype)
    translators = None
    if args.translators:
        translators, _ = load_translators(args.translators, model.config, device=device, dtype=dtype)
    inputs = [tokenizer(p, return_tensors="pt").input_ids.to(device) for p in prompts]  # each (1, T)

    def variant(decoder: ExitDecoder, record: dict):
        def run() -> float:
            results = [decoder.generate(ids, max_new_tokens=args.max_new_tokens, stop_strings=args.stop,
                                        tokenizer=tokenizer, eos_token_id=tokenizer.eos_token_id) for ids in inputs]
            record["results"] = results
            return sum(len(r.costs) for r in results) / sum(r.decode_seconds for r in results)  # decode tokens/s
        return run

    records = {"disabled": {}}
    variants = {"disabled": variant(ExitDecoder(model), records["disabled"])}
    for t in thresholds:
        records[t] = {}
        decoder = ExitDecoder(model, heads=heads, threshold=t, policy=args.policy, emission=args.emission,
                              translators=translators)
        variants[t] = variant(decoder, records[t])
    samples = interleaved(variants, args.repeats, args.warmup)

    n = model.config.num_hidden_layers
    rows = []
    for name, tps in samples.items():
        results = records[name]["results"]
        costs = [c for r in results for c in r.costs]
        exits = [e for r in results for e in r.exit_layers[1:]]  # decode steps; the first token is the prefill's
        speed = spread([t / b for t, b in zip(tps, samples["disabled"])])  # paired per round
        rows.append({"threshold": name, "tokens_per_s": spread(tps)["median"], "tokens_per_s_spread": spread(tps),
                     "speedup": speed["median"], "speedup_q1": speed["q1"], "speedup_q3": speed["q3"],
                     "crf_exact": crf_exact(costs), "crf_paper": crf_paper(costs),
                     "early_exit_share": sum(e < n - 1 for e in exits) / max(len(exits), 1), "tokens": len(costs)})
    print_table(rows, ["threshold", "tokens_per_s", "speedup", "speedup_q1", "speedup_q3", "crf_exact", "crf_paper",
                       "early_exit_share", "tokens"])
    save(args.out, "trained_sweep", args, rows, heads_metadata=meta)


if __name__ == "__main__":
    main()
