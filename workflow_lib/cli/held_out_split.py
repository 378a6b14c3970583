"""Entry point: held-out questions of a task, ones the evaluation does not use: the calibration set (for
`python -m workflow_lib.cli.calibrate`) or the prompts whose greedy answers the translators are fitted on (for
`python -m workflow_lib.cli.answers`).

    python -m workflow_lib.cli.held_out_split --task triviaqa --data results/world/triviaqa.jsonl --limit 24 \
        --n 60 --seed 0 --out results/calibration/data/triviaqa.jsonl [--pool FILE] [--exclude FILE ...]

Draws --n records (seeded, kept in pool order) from --pool (default: the task's own data file) among those the
evaluation of --data with --limit and --triviaqa-n does not score (workflow_lib/data/calibration.py says which)
and those of every --exclude file (other held-out sets: the calibration set, the few-shot examples); refuses,
before writing anything, when fewer are left. Written atomically in the task's canonical format.
"""
from __future__ import annotations

import argparse
import json
import sys

from workflow_lib.data.calibration import evaluated_records, held_out_split
from workflow_lib.data.formats import LOADERS, WRITERS, DataFormatError
from workflow_lib.defaults import SEED, TRIVIAQA_SUBSET


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.held_out_split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=sorted(LOADERS))
    p.add_argument("--data", required=True, help="the task's evaluation data file")
    p.add_argument("--pool", help="file to draw the held-out questions from (default: --data)")
    p.add_argument("--exclude", action="extend", nargs="+", default=[], metavar="FILE",
                   help="files of questions to keep clear of besides the evaluated ones, in the task's format")
    p.add_argument("--limit", type=int, help="the evaluation's limit: it scores the first N documents (default: all)")
    p.add_argument("--triviaqa-n", type=int, default=TRIVIAQA_SUBSET, help="triviaqa only: longest-answer subset size")
    p.add_argument("--n", type=int, required=True, help="held-out questions to draw")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", required=True, help="output file (.jsonl; CoQA also .json)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("limit", "n", "triviaqa_n"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    load = LOADERS[args.task]
    try:
        evaluated = evaluated_records(args.task, load(args.data), args.limit, args.triviaqa_n)
        apart = [record for path in args.exclude for record in load(path)]
        pool = load(args.pool or args.data)
        chosen = held_out_split(args.task, pool, evaluated, args.n, args.seed, apart)
        WRITERS[args.task](args.out, chosen)
    except (DataFormatError, ValueError, FileNotFoundError) as e:
        sys.exit(f"held_out_split: error: {e}")
    print(json.dumps({"task": args.task, "pool": len(pool), "evaluated": len(evaluated), "kept_apart": len(apart),
                      "drawn": len(chosen), "out": args.out}))


if __name__ == "__main__":
    main()
