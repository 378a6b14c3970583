"""Entry point: the paper-style figure (metric versus CRF) for one backbone and task, from the grid table.

    python -m workflow_lib.cli.make_figures --grid results/tables/grid.csv --backbone mistral --task triviaqa \
        --out results/figures/mistral/triviaqa.png results/figures/mistral/triviaqa.pdf [--crf exact|paper]
        [--heads calm,calm_k15]   only these heads' series (layer pruning and the full model stay)
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from workflow_lib.analysis.figures import plot_task, save_figure
from workflow_lib.choices import CRF_KINDS
from workflow_lib.defaults import ANALYSIS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.cli.make_figures", description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="grid.csv written by make_tables")
    p.add_argument("--backbone", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--crf", choices=CRF_KINDS, default=ANALYSIS["crf"], help="x axis: exact MACs or paper blocks")
    p.add_argument("--heads", type=lambda s: [h for h in s.split(",") if h],
                   help="comma-separated head names: draw only their series (default: every head in the grid)")
    p.add_argument("--out", nargs="+", required=True, help="figure files; the suffix picks the format")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    grid = pd.read_csv(args.grid)
    if args.heads:
        missing = sorted(set(args.heads) - set(grid["head"].dropna()))
        if missing:
            sys.exit(f"make_figures: error: --heads: no grid points of head {', '.join(missing)} in {args.grid}")
        grid = grid[(grid["method"] != "early_exit") | grid["head"].isin(args.heads)]
    save_figure(plot_task(grid, args.backbone, args.task, crf=f"crf_{args.crf}"), args.out)
    print(f"{args.backbone} / {args.task} -> {' '.join(args.out)}")


if __name__ == "__main__":
    main()
