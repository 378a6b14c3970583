"""Entry point: tidy tables from evaluation run records.

    python -m workflow_lib.cli.make_tables --records results/eval/**/record.json --grid results/tables/grid.csv \
        --pareto results/tables/pareto.csv --no-loss results/tables/no_loss.csv \
        --versus-pruning results/tables/versus_pruning.csv --versus-rule results/tables/versus_rule.csv \
        [--crf crf_exact] [--no-loss-delta 0.02]

grid.csv: one row per grid point (identity from the record's path, then metrics and measurements).
   Each metric has its 95% bootstrap interval over questions and its paired difference to the full model.
pareto.csv: per task, headline metric and backbone, the best metric reachable at each CRF and the method.
no_loss.csv: per backbone, task, headline metric and series, the largest CRF whose paired difference to the full
   model has its 95% interval above -delta.
versus_pruning.csv: per backbone, task, headline metric, pruning point and early-exit series, early exit at a CRF at
   least the pruning's minus pruning, on the same questions, with its 95% paired bootstrap interval.
versus_rule.csv: per backbone, task, headline metric, head and policy under another emission rule than last_block,
   and each last_block point of that series: the other rule at a CRF at least the point's minus last_block, on the
   same questions, with its 95% paired bootstrap interval.
"""
from __future__ import annotations

import argparse

from workflow_lib.analysis.tables import (grid_table, no_loss_table, pareto_table, versus_pruning_table,
                                          versus_rule_table)
from workflow_lib.artifacts import atomic_path
from workflow_lib.choices import CRF_KINDS
from workflow_lib.defaults import ANALYSIS, SEED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.make_tables", description=__doc__.splitlines()[0])
    p.add_argument("--records", nargs="+", required=True, help="record.json files below --results-root")
    p.add_argument("--results-root", default="results/eval", help="folder the records' paths are read from")
    p.add_argument("--grid", required=True, help="output CSV, one row per grid point")
    p.add_argument("--pareto", required=True, help="output CSV, the per-task Pareto frontier")
    p.add_argument("--no-loss", required=True, help="output CSV, the largest CRF without a loss per series")
    p.add_argument("--versus-pruning", required=True,
                   help="output CSV, early exit minus layer pruning at equal or more compute saved")
    p.add_argument("--versus-rule", required=True,
                   help="output CSV, each emission rule minus last_block (same head and policy) at equal or more "
                        "compute saved")
    p.add_argument("--crf", choices=[f"crf_{kind}" for kind in CRF_KINDS], default=f"crf_{ANALYSIS['crf']}",
                   help="the CRF the Pareto frontier is taken over")
    p.add_argument("--no-loss-delta", type=float, default=ANALYSIS["no_loss_delta"],
                   help=f"largest metric loss still called no loss (default {ANALYSIS['no_loss_delta']})")
    p.add_argument("--seed", type=int, default=SEED, help=f"bootstrap seed (default {SEED})")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per interval (default 2000)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.no_loss_delta < 0:
        p.error("--no-loss-delta must be >= 0")
    if args.resamples < 100:
        p.error("--resamples must be >= 100")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    grid = grid_table(args.records, args.results_root, seed=args.seed, resamples=args.resamples)
    pareto = pareto_table(grid, crf=args.crf)
    no_loss = no_loss_table(grid, delta=args.no_loss_delta)
    versus = versus_pruning_table(grid, args.results_root, seed=args.seed, resamples=args.resamples)
    rules = versus_rule_table(grid, args.results_root, seed=args.seed, resamples=args.resamples)
    for table, path in ((grid, args.grid), (pareto, args.pareto), (no_loss, args.no_loss),
                        (versus, args.versus_pruning), (rules, args.versus_rule)):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    print(f"{len(grid)} grid points -> {args.grid}; {len(pareto)} Pareto points -> {args.pareto}; "
          f"{len(no_loss)} no-loss rows -> {args.no_loss}; {len(versus)} comparisons -> {args.versus_pruning}; "
          f"{len(rules)} rule comparisons -> {args.versus_rule}")


if __name__ == "__main__":
    main()
