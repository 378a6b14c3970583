"""Entry point: tidy tables from evaluation run records.

    python -m workflow_lib.make_tables --records results/eval/**/record.json --grid results/tables/grid.csv \
        --pareto results/tables/pareto.csv [--crf crf_exact]

grid.csv: one row per grid point (identity from the record's path, then metrics and measurements).
pareto.csv: per task, headline metric and backbone, the best metric reachable at each CRF and the method.
"""
from __future__ import annotations

import argparse

from workflow_lib.analysis.tables import grid_table, pareto_table
from workflow_lib.artifacts import atomic_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m workflow_lib.make_tables", description=__doc__.splitlines()[0])
    p.add_argument("--records", nargs="+", required=True, help="record.json files below --results-root")
    p.add_argument("--results-root", default="results/eval", help="folder the records' paths are read from")
    p.add_argument("--grid", required=True, help="output CSV, one row per grid point")
    p.add_argument("--pareto", required=True, help="output CSV, the per-task Pareto frontier")
    p.add_argument("--crf", choices=["crf_exact", "crf_paper"], default="crf_exact",
                   help="the CRF the Pareto frontier is taken over")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    grid = grid_table(args.records, args.results_root)
    pareto = pareto_table(grid, crf=args.crf)
    for table, path in ((grid, args.grid), (pareto, args.pareto)):
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    print(f"{len(grid)} grid points -> {args.grid}; {len(pareto)} Pareto points -> {args.pareto}")


if __name__ == "__main__":
    main()
