"""Generate text with the exit-aware decoder (greedy).

  python -m workflow_lib.cli.generate --backbone PATH_OR_ID [--heads DIR | --exit-at LAYER] [--threshold T]
      [--policy NAME] [--emission RULE [--translators DIR]] [--prune N]
      (--prompt TEXT | --prompt-ids 1,2,3 | --prompts-file FILE [--batch-size B]) [--max-new-tokens N] [--stop STR ...]
      [--json]

--prompts-file decodes one prompt per line (token ids "1,2,3" per line for a preset: backbone), B at a time, each
row exiting on its own decision with the answer batch size 1 gives it; --json then prints a list, one object per
prompt, in file order.

With neither --heads nor --exit-at, exits are disabled: the plain model's greedy output. --exit-at L runs a
forced head at block L (every token exits there), for inspecting a policy. Every check on the arguments runs
before any weight is loaded.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from ..choices import DEFAULT_EMISSION, EMISSION_RULES, POLICIES
from ..decoding.decoder import ExitDecoder
from ..defaults import EVALUATION
from ..decoding.policies import resolve_policy
from ..decoding.pruning import kept_blocks
from ..models.backbone import (PRESET_PREFIX, architecture, default_device, default_dtype, load_backbone, load_config,
                              load_tokenizer)
from ..models.heads import build_heads, load_heads
from ..models.translators import load_translators

DEFAULT_EXIT_THRESHOLD = 0.5


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be a number, got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError("threshold must be a number, got nan")
    return value


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("--prompt-ids is empty")
    return ids


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m workflow_lib.cli.generate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", required=True, help="hub id, local save_pretrained folder, or preset:NAME (random weights)")
    exits = ap.add_mutually_exclusive_group()
    exits.add_argument("--heads", help="folder of exit heads (heads.json; trained heads also heads.safetensors)")
    exits.add_argument("--exit-at", type=int, metavar="LAYER", help="force every token to exit at this block (0..n-2)")
    ap.add_argument("--threshold", type=_threshold, default=None,
                    help=f"exit when p_exit >= T (default {DEFAULT_EXIT_THRESHOLD} with heads; > 1 disables exits)")
    ap.add_argument("--policy", default=None,
                    help="missing-state policy: " + "; ".join(f"{a}: {', '.join(p)}" for a, p in POLICIES.items())
                    + " (default: recompute)")
    ap.add_argument("--emission", choices=EMISSION_RULES, default=DEFAULT_EMISSION,
                    help="how an exit emits its token: last_block (the paper's), lens, translator (needs --translators)")
    ap.add_argument("--translators", help="folder of tuned-lens translators (save_translators), for --emission translator")
    ap.add_argument("--prune", type=int, default=0, help="drop this many blocks just before the last (default 0)")
    ap.add_argument("--prune-start", type=int, default=None,
                    help="first dropped block (default: the --prune blocks just before the last)")
    prompt = ap.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (tokenised with the backbone's tokenizer)")
    prompt.add_argument("--prompt-ids", type=_ids, help="prompt as token ids, e.g. 1,2,3 (for preset: backbones)")
    prompt.add_argument("--prompts-file", help="one prompt per line (text; token ids 1,2,3 for preset: backbones)")
    ap.add_argument("--batch-size", type=int, default=EVALUATION["batch_size"],
                    help=f"prompts of --prompts-file decoded together (default {EVALUATION['batch_size']})")
    ap.add_argument("--max-new-tokens", type=int, default=EVALUATION["max_new_tokens"],
                    help=f"(default {EVALUATION['max_new_tokens']})")
    ap.add_argument("--stop", nargs="+", default=None, metavar="STR", help="stop strings; the text is cut at the first")
    ap.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL-style penalty (default 1.0: off)")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ap.add_argument("--seed", type=int, default=0, help="seed for preset weights and torch (default 0)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    return ap


def _cut(text: str, stops: list[str] | None) -> str:
    """The text up to the earliest stop string (the decoder only reports that one occurred)."""
    cuts = [text.find(s) for s in stops or [] if s in text]
    return text[:min(cuts)] if cuts else text


def main(argv: list[str] | None = None) -> None:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1:
        ap.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.repetition_penalty > 0:
        ap.error(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.batch_size > 1 and args.prompts_file is None:
        ap.error("--batch-size needs --prompts-file")
    lines = None
    if args.prompts_file is not None:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                lines = [line.rstrip("\n") for line in f if line.strip()]
        except OSError as err:
            ap.error(f"--prompts-file: {err.strerror}: {args.prompts_file}")
        if not lines:
            ap.error(f"--prompts-file {args.prompts_file} has no prompt")
    # Everything cheap first: config, architecture, policy, layers, heads, tokenizer; the weights last.
    try:
        config = load_config(args.backbone)
        arch = architecture(config)
        policy = resolve_policy(arch, args.policy)
        n = config.num_hidden_layers
        kept_blocks(n, args.prune, args.prune_start)
        if args.exit_at is not None and not 0 <= args.exit_at <= n - 2:
            raise ValueError(f"--exit-at {args.exit_at} out of range: exits sit at blocks 0..{n - 2} of this {n}-block backbone")
        device = torch.device(args.device) if args.device else default_device()
        dtype = default_dtype(device)
        heads = None
        if args.heads:
            heads, _meta = load_heads(args.heads, backbone_config=config, device=device, dtype=dtype)
        elif args.exit_at is not None:
            heads = build_heads("forced", config.hidden_size, [args.exit_at]).to(device=device, dtype=dtype)
        if (args.emission == "translator") != (args.translators is not None):
            raise ValueError("--emission translator needs --translators DIR, and --translators is for it only")
        translators = None
        if args.translators:
            translators, _meta = load_translators(args.translators, backbone_config=config, device=device, dtype=dtype)
            exits = sorted(int(k) for k in heads) if heads is not None else []
            missing = sorted(set(exits) - set(translators.exit_layers))
            if missing:
                raise ValueError(f"--translators {args.translators} has no translator for exit layer(s) {missing}")
        tokenizer = None
        if not args.backbone.startswith(PRESET_PREFIX):
            try:
                tokenizer = load_tokenizer(args.backbone)
            except (OSError, ValueError) as err:
                if args.prompt is not None or args.stop:
                    raise ValueError(f"no tokenizer for {args.backbone!r}: {err}") from None
        elif args.prompt is not None:
            raise ValueError(f"{args.backbone} has no tokenizer: pass the prompt as --prompt-ids")
        if lines is not None and tokenizer is None:  # a preset backbone reads token ids, one prompt a line
            try:
                prompt_ids = [_ids(line) for line in lines]
            except argparse.ArgumentTypeError as err:
                raise ValueError(f"{args.backbone} has no tokenizer, so --prompts-file holds token ids: {err}") from None
        elif lines is not None:
            prompt_ids = [tokenizer(line).input_ids for line in lines]
        elif args.prompt is not None:
            prompt_ids = [tokenizer(args.prompt).input_ids]
        else:
            prompt_ids = [args.prompt_ids]
        if args.stop and tokenizer is None:
            raise ValueError("--stop needs a tokenizer to decode the generated text")
        context = getattr(config, "max_position_embeddings", None)
        for i, ids in enumerate(prompt_ids):
            where = f"prompt {i + 1} of {args.prompts_file}" if lines is not None else "the prompt"
            if not ids:
                raise ValueError(f"{where} is empty")
            if max(ids) >= config.vocab_size:
                raise ValueError(f"{where} has a token id >= the vocabulary size {config.vocab_size}")
            if context is not None and len(ids) > context:
                raise ValueError(f"{where} has {len(ids)} tokens, longer than the model's context of {context}")
    except (ValueError, OSError) as err:
        ap.error(str(err).splitlines()[0])
    threshold = args.threshold if args.threshold is not None else (DEFAULT_EXIT_THRESHOLD if heads else 2.0)

    torch.manual_seed(args.seed)
    model = load_backbone(args.backbone, device=device, dtype=dtype, seed=args.seed)
    decoder = ExitDecoder(model, heads, threshold=threshold, policy=policy, prune=args.prune,
                          repetition_penalty=args.repetition_penalty, prune_start=args.prune_start,
                          emission=args.emission, translators=translators)
    if lines is None:
        results = [decoder.generate(torch.tensor([prompt_ids[0]]), max_new_tokens=args.max_new_tokens,
                                    stop_strings=args.stop, tokenizer=tokenizer)]
    else:
        results = [r for s in range(0, len(prompt_ids), args.batch_size)
                   for r in decoder.generate_batch(prompt_ids[s:s + args.batch_size], max_new_tokens=args.max_new_tokens,
                                                   stop_strings=args.stop, tokenizer=tokenizer)]
    outputs = []
    for ids, result in zip(prompt_ids, results):
        text = _cut(tokenizer.decode(result.token_ids, skip_special_tokens=True), args.stop) if tokenizer else None
        outputs.append({
            "text": text, "token_ids": result.token_ids, "exit_layers": result.exit_layers,
            "crf_exact": result.crf_exact, "crf_paper": result.crf_paper,
            "tokens_per_second": result.tokens_per_second, "stop_reason": result.stop_reason,
            "prefill_seconds": result.prefill_seconds, "decode_seconds": result.decode_seconds,
            "batch_size": result.batch_size, "prompt_tokens": len(ids), "backbone": args.backbone, "arch": arch,
            "policy": policy, "emission": args.emission, "threshold": threshold, "exits_enabled": decoder.exits_enabled,
            "exit_heads": sorted(decoder.heads), "prune": args.prune,
            "prune_start": decoder.prune_start if args.prune else None, "seed": args.seed,
        })
    if args.json:
        print(json.dumps(outputs if lines is not None else outputs[0]))
    else:
        for out in outputs:
            print(out["text"] if out["text"] is not None else " ".join(map(str, out["token_ids"])))


if __name__ == "__main__":
    sys.exit(main())
