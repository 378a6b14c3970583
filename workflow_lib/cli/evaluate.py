"""Evaluate one (backbone, heads, policy, task) over a list of grid points with the model loaded once.

    python -m workflow_lib.cli.evaluate --backbone runs/backbones/tiny-mistral --heads runs/heads/tiny-mistral/calm \
        --policy recompute --task triviaqa --data data/triviaqa.jsonl --thresholds 0.5,0.9 --out-dir OUT

Grid points and where their records go (each folder: record.json + samples.jsonl, written atomically):
  --heads DIR --thresholds T1,T2,...   OUT/threshold~T/  (T spelled exactly as given on the command line)
  --no-heads                           OUT/              (exits disabled: the baseline)
  --no-heads --prune-series 0,1,2      OUT/prune~N/      (layer-pruning baseline)
  ... --prune-rule angular             OUT/prune_angular~N/  (the dropped blocks chosen by angular distance)
  --oracle [--exit-layers 2,3,4]       OUT/              (the oracle bound: each token exits at the earliest exit
                                                          whose emitted token is the full model's; no head)
--emission RULE (last_block, the default | lens | translator with --translators DIR) says how an exit turns its
hidden state into the token (docs/policies.md); the pipeline puts a non-default rule's records under a folder of
their own (emission~RULE), this command writes where --out-dir says. The rule is in every record.
--max-draft K (with --heads or --oracle) makes the exits draft up to K tokens that the full model verifies
(speculative decoding, docs/speculative.md): every answer is the full model's; each batch is also decoded with exits
off from the same prefill, the run stops naming a question whose answer differs, and the record holds the paired
measured speedup beside the CRFs. --draft-vocab FILE (cli/draft_vocab.py) restricts the drafts' LM head.
A threshold above 1 disables the exits. Everything is checked (task, files, numbers) before the model loads;
heads built for another backbone are refused when they load, before any generation.

--reuse keeps a point whose record.json already exists, was made with the same settings (every option but the
lists of points, --threads and --reuse) and is newer than every input file (backbone, tokenizer, heads, data):
the pipeline evaluates a whole threshold list per job, and adding a threshold to it then computes only that one.
Settings compare as spelled: the same file named by another path counts as another setting (recomputed).
Delete a point's folder to have it recomputed.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from workflow_lib.arguments import add_task_arguments, check_task_arguments, model_options, number_list
from workflow_lib.choices import DEFAULT_PRUNE_RULE, PRUNE_RULES
from workflow_lib.defaults import EXITS_OFF
from workflow_lib.evaluation.points import (angular_sequences, grid_points, load_model, newest_input,
                                            oracle_exits, reusable, run_point, save_point)
from workflow_lib.evaluation.tasks import check_task_data, load_task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_arguments(p)
    heads = p.add_mutually_exclusive_group(required=True)
    heads.add_argument("--heads", help="folder of trained exit heads (save_heads)")
    heads.add_argument("--no-heads", action="store_true", help="exits disabled: the baseline / pruning point")
    heads.add_argument("--oracle", action="store_true", help="the oracle bound at --exit-layers (see above)")
    p.add_argument("--exit-layers", type=lambda s: number_list(s, int),
                   help="--oracle's exit blocks (default: the heads' default, 4 spread over the second half)")
    p.add_argument("--thresholds", type=number_list, help="comma-separated exit thresholds (with --heads)")
    p.add_argument("--prune", type=int, default=0, help="blocks pruned before the last (default 0)")
    p.add_argument("--prune-series", type=lambda s: number_list(s, int),
                   help="comma-separated n: one pruning point each (with --no-heads)")
    p.add_argument("--prune-rule", choices=PRUNE_RULES, default=DEFAULT_PRUNE_RULE,
                   help="which n blocks are dropped: deepest, the n just before the last (the paper); angular, the n "
                        "consecutive blocks whose input and output are closest in angle on --angular-text (Gromov "
                        "et al.)")
    p.add_argument("--angular-text", help="held-out text (.txt / .jsonl corpus) whose sequences choose the angular "
                                          "blocks, e.g. the heads' validation corpus")
    p.add_argument("--angular-sequences", type=int, default=16, help="documents of --angular-text used (default 16)")
    p.add_argument("--angular-tokens", type=int, default=128, help="tokens kept of each of them (default 128)")
    p.add_argument("--max-draft", type=int, help="speculative decoding: tokens the exits may draft before the full "
                                                  "model verifies them (with --heads or --oracle; see above)")
    p.add_argument("--draft-vocab", help="speculative decoding: a draft vocabulary file (cli/draft_vocab.py); the "
                                         "drafts' LM head reads only its rows")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--reuse", action="store_true", help="keep points already evaluated with the same settings and "
                                                         "inputs (see above)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)

    if args.heads is not None and not args.thresholds:
        p.error("--heads needs --thresholds")
    if args.no_heads and args.thresholds:
        p.error("--thresholds needs --heads (--no-heads is the exits-disabled point)")
    if args.exit_layers and not args.oracle:
        p.error("--exit-layers is for --oracle (heads carry their own exit layers)")
    if args.oracle and args.prune:
        p.error("--oracle bounds the exits of the unpruned backbone: no --prune")
    if args.prune_series and not args.no_heads:
        p.error("--prune-series is the pruning baseline: use it with --no-heads")
    if args.prune_series and args.prune:
        p.error("give either --prune or --prune-series")
    if args.prune < 0:
        p.error("--prune must be >= 0")
    if args.prune_rule == "angular" and not (args.prune or args.prune_series):
        p.error("--prune-rule angular needs --prune N or --prune-series")
    if args.prune_rule == "angular" and args.angular_text is None:
        p.error("--prune-rule angular needs --angular-text (the text that chooses the blocks)")
    if args.angular_text is not None and not Path(args.angular_text).is_file():
        p.error(f"--angular-text: file not found: {args.angular_text}")
    if args.max_draft is not None and (args.max_draft < 1 or args.no_heads):
        p.error("--max-draft must be >= 1, with --heads or --oracle (exits that draft)")
    if args.draft_vocab is not None and args.max_draft is None:
        p.error("--draft-vocab is for --max-draft (speculative decoding)")
    if args.draft_vocab is not None and not Path(args.draft_vocab).is_file():
        p.error(f"--draft-vocab: file not found: {args.draft_vocab}")
    for name in ("angular_sequences", "angular_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    check_task_arguments(p, args)
    return args

def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    points = grid_points(args.out_dir, args.thresholds, args.prune, args.prune_series, args.prune_rule)
    if args.reuse:  # before the expensive imports: a job with every point done costs a fraction of a second
        inputs_mtime = newest_input([args.backbone, args.tokenizer, args.heads, args.data, args.fewshot_data,
                                     args.angular_text, args.translators, args.draft_vocab])
        kept = [out_dir for out_dir, point in points if reusable(out_dir, point, config, inputs_mtime)]
        for out_dir in kept:
            print(f"{out_dir}: kept (evaluated before with the same settings and inputs)")
        points = [(out_dir, point) for out_dir, point in points if out_dir not in kept]
        if not points:
            return 0

    from workflow_lib.data.formats import DataFormatError, read_corpus
    from workflow_lib.decoding.pruning import angular_distance_start

    try:
        check_task_data(args.task, args.data, args.fewshot_data)
        if args.angular_text:
            read_corpus(args.angular_text)  # checks the suffix now; documents are read once the tokenizer is there
        exits = (oracle_exits(args.backbone, [n for _, n in args.exit_layers or []]) if args.oracle else None)
        task = load_task(args.task, args.data, args.triviaqa_n, args.fewshot_data)
        lm = load_model(**model_options(args), prune=points[0][1]["prune"], oracle_exits=exits,
                        max_draft=args.max_draft, draft_vocab=args.draft_vocab)
        angular = (angular_sequences(lm.tokenizer, args.angular_text, args.angular_sequences, args.angular_tokens,
                                     lm.model.device) if args.prune_rule == "angular" else None)
    except (DataFormatError, ValueError, FileNotFoundError) as e:  # bad data, heads for another backbone ...
        sys.exit(f"evaluate: error: {e}")
    if args.heads:  # each batch's prefill serves every threshold of the job (lm_model.share_thresholds)
        lm.share_thresholds([point["threshold"] for _, point in points if point["threshold"] is not None])
    setup_seconds = time.perf_counter() - started  # imports, data check, model and heads load: paid once per job
    for out_dir, point in points:
        threshold = point["threshold"] if point["threshold"] is not None else EXITS_OFF
        try:
            start = (angular_distance_start(lm.model, angular, point["prune"])
                     if angular is not None and point["prune"] else None)
            lm.set_point(threshold, point["prune"], start)
        except ValueError as e:  # a prune n the backbone cannot take, an exit among the pruned blocks
            sys.exit(f"evaluate: error: {e}")
        results, wall = run_point(lm, task, args.shots, args.max_new_tokens, args.seed, args.limit)
        point = {**point, "prune_rule": args.prune_rule, "prune_start": lm.prune_start if point["prune"] else None,
                 "setup_seconds": setup_seconds}
        save_point(out_dir, lm, results, wall, point, args.task, args.backbone, args.heads, args.degenerate_limit,
                   config, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
