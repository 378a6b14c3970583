"""Evaluate a task over series of grid points with the model loaded once and each batch of prompts prefilled once.

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

A job's points share one prefill per batch of prompts (decoding/prefill.py): every threshold of a series, and with
--series every series of the job (the pipeline runs two jobs per backbone and task: its exit cells and speculative
points; its baseline, oracle and pruning depths):
    python -m workflow_lib.cli.evaluate --backbone B --task coqa --data coqa.json --reuse \
        --series "--no-heads --out-dir OUT/baseline" \
        --series "--heads H --thresholds 0.6,0.8 --policy recompute --out-dir OUT/calm" \
        --series "--no-heads --prune-series 1,2,3 --out-dir OUT"
Each --series holds one series' flags (the points above, --policy, --emission, --translators, --max-draft,
--draft-vocab, --prune-rule and its --angular-* options, --out-dir); the rest of the command line is the task's and
every series'. A point's record is what a command with its series' flags alone writes (its provenance too).

--reuse keeps a point whose record.json already exists, was made with the same settings (every option but the
lists of points, --threads and --reuse) and is newer than every input file (backbone, tokenizer, heads, data):
the pipeline evaluates a whole threshold list per job, and adding a threshold to it then computes only that one.
Settings compare as spelled: the same file named by another path counts as another setting (recomputed).
Delete a point's folder to have it recomputed.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from workflow_lib.arguments import add_task_arguments, check_task_arguments, model_options, number_list
from workflow_lib.choices import DEFAULT_PRUNE_RULE, PRUNE_RULES
from workflow_lib.defaults import EXITS_OFF
from workflow_lib.evaluation.points import (MAIN, angular_sequences, grid_points, load_model, newest_input,
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

SERIES_FLAG = "--series"
# the flags of one series of points; the others (backbone, task, data, generation, lm-eval) are the job's
SERIES_ONLY = {"--heads", "--no-heads", "--oracle", "--exit-layers", "--thresholds", "--prune", "--prune-series",
               "--prune-rule", "--angular-text", "--angular-sequences", "--angular-tokens", "--policy", "--emission",
               "--translators", "--max-draft", "--draft-vocab", "--out-dir"}


def split_series(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the command line without its --series values, the --series values)."""
    rest, series = [], []
    it = iter(argv)
    for word in it:
        if word == SERIES_FLAG:
            series.append(next(it, ""))
        elif word.startswith(SERIES_FLAG + "="):
            series.append(word.split("=", 1)[1])
        else:
            rest.append(word)
    return rest, series


def parse_series(argv: list[str]) -> list[argparse.Namespace]:
    """One parsed command per series: the command line's own (no --series), or each --series' flags after the
    command line's task options (which then must hold no series flag)."""
    rest, series = split_series(argv)
    if not series:
        return [parse_args(rest)]
    own = [w for w in rest if w in SERIES_ONLY]
    if own:
        build_parser().error(f"with --series, give {', '.join(sorted(set(own)))} inside each --series, not outside")
    return [parse_args(rest + shlex.split(one)) for one in series]


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    every = parse_series(argv)
    args = every[0]  # the task options are every series' own
    jobs = []  # (series name, its parsed command, its record config, its points)
    for i, one in enumerate(every):
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(one).items()}
        points = grid_points(one.out_dir, one.thresholds, one.prune, one.prune_series, one.prune_rule)
        if one.reuse:  # before the expensive imports: a job with every point done costs a fraction of a second
            inputs_mtime = newest_input([one.backbone, one.tokenizer, one.heads, one.data, one.fewshot_data,
                                         one.angular_text, one.translators, one.draft_vocab])
            kept = [out_dir for out_dir, point in points if reusable(out_dir, point, config, inputs_mtime)]
            for out_dir in kept:
                print(f"{out_dir}: kept (evaluated before with the same settings and inputs)")
            points = [(out_dir, point) for out_dir, point in points if out_dir not in kept]
        if points:
            jobs.append((MAIN if not jobs else f"series{i}", one, config, points))
    if not jobs:
        return 0

    from workflow_lib.data.formats import DataFormatError, read_corpus
    from workflow_lib.decoding.pruning import angular_distance_start

    shared = []  # (series name, threshold): every point of the job, decoded from one prefill per batch
    try:
        check_task_data(args.task, args.data, args.fewshot_data)
        task = load_task(args.task, args.data, args.triviaqa_n, args.fewshot_data)
        lm = None
        for name, one, _, points in jobs:
            if one.angular_text:
                read_corpus(one.angular_text)  # checks the suffix; documents are read once the tokenizer is there
            options = dict(policy=one.policy, emission=one.emission, translators=one.translators, heads=one.heads,
                           oracle_exits=(oracle_exits(one.backbone, [n for _, n in one.exit_layers or []])
                                         if one.oracle else None), max_draft=one.max_draft, draft_vocab=one.draft_vocab)
            if lm is None:
                lm = load_model(**{**model_options(one), **options})
            angular = (angular_sequences(lm.tokenizer, one.angular_text, one.angular_sequences, one.angular_tokens,
                                         lm.model.device) if one.prune_rule == "angular" else None)
            for k, (out_dir, point) in enumerate(points):
                if point["prune"]:  # a pruned model: a series of its own (its prefill derives from the full one)
                    start = angular_distance_start(lm.model, angular, point["prune"]) if angular else None
                    point["series"] = f"{name}.prune{k}"
                    lm.add_series(point["series"], **options, prune=point["prune"], prune_start=start)
                else:
                    point["series"] = name
                    if name not in lm.series:
                        lm.add_series(name, **options)
                shared.append((point["series"], point["threshold"] if point["threshold"] is not None else EXITS_OFF))
    except (DataFormatError, ValueError, FileNotFoundError) as e:  # bad data, heads for another backbone, a prune n
        sys.exit(f"evaluate: error: {e}")  # the backbone cannot take, an exit among the pruned blocks ...
    lm.share(shared)
    setup_seconds = time.perf_counter() - started  # imports, data check, model and heads load: paid once per job
    for name, one, config, points in jobs:
        for out_dir, point in points:
            lm.set_point(point["threshold"] if point["threshold"] is not None else EXITS_OFF, point.pop("series"))
            results, wall = run_point(lm, task, one.shots, one.max_new_tokens, one.seed, one.limit)
            point = {**point, "prune_rule": one.prune_rule, "prune_start": lm.prune_start if point["prune"] else None,
                     "setup_seconds": setup_seconds}
            save_point(out_dir, lm, results, wall, point, one.task, one.backbone, one.heads, one.degenerate_limit,
                       config, one.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
