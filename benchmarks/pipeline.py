"""Wall time of the default pipeline from scratch, and of a no-op rerun (issue 6; goals 30 min and 10 s on 2 cores).

The checkout's files (tracked and untracked-but-not-ignored, as `git ls-files` lists them; no results/, no
.snakemake/) are copied into a fresh temporary folder, so nothing already built is reused. There,
`snakemake --cores CORES` runs once from scratch, then the same command again `--noop-repeats` times: each
rerun must find nothing to do. Per-rule times come from the rules' own `benchmark:` files when present.

  python benchmarks/pipeline.py                  # the default (embedded) config, all cores
  python benchmarks/pipeline.py --cores 2 --keep # keep the temporary copy to inspect it
"""
from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import print_table, save, spread

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=str(REPO), help="checkout to copy (default: this one)")
    p.add_argument("--cores", default="all", help="snakemake --cores (default: all)")
    p.add_argument("--snakemake-args", default="", help="extra snakemake arguments, one string")
    p.add_argument("--noop-repeats", type=int, default=3, help="no-op reruns timed (default: 3)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before the from-scratch run is stopped")
    p.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    p.add_argument("--seed", type=int, default=0, help="recorded only; the pipeline's seeds are in its config")
    p.add_argument("--out", default=str(REPO / "results/benchmarks/pipeline.json"), help="JSON results file")
    return p.parse_args()


def copy_checkout(repo: Path, dest: Path) -> int:
    """Copy the files git would consider part of the working tree; return how many."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, check=True,
                           capture_output=True).stdout.decode().split("\0")
    n = 0
    for name in filter(None, files):
        src = repo / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
            n += 1
    return n


def run_snakemake(workdir: Path, args: argparse.Namespace, log: Path, timeout: float | None) -> tuple[float, int, str]:
    """Seconds, exit status and output of one snakemake run (the same interpreter's snakemake)."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores, *args.snakemake_args.split()]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = 124, f"stopped after {timeout} s\n{e.stdout or ''}{e.stderr or ''}"
    seconds = time.perf_counter() - start
    log.write_text(out if isinstance(out, str) else out.decode())
    return seconds, rc, out


def rule_benchmarks(workdir: Path) -> list[dict]:
    """Snakemake `benchmark:` files (tab-separated, first column 's') found anywhere in the run folder."""
    rows = []
    for path in workdir.rglob("*"):
        if not path.is_file() or path.suffix not in {".tsv", ".txt"} or ".snakemake" in path.parts:
            continue
        with path.open() as f:
            header = f.readline().rstrip("\n").split("\t")
            if header[:2] != ["s", "h:m:s"]:
                continue
            record = next(csv.DictReader(f, fieldnames=header, delimiter="\t"), None)
        if record:
            rows.append({"benchmark": str(path.relative_to(workdir)), "seconds": float(record["s"])})
    return sorted(rows, key=lambda r: -r["seconds"])


def main() -> None:
    args = parse_args()
    repo = Path(args.repo).resolve()
    if not (repo / "Snakefile").is_file():
        raise SystemExit(f"error: {repo} has no Snakefile (the pipeline has not landed there)")
    if args.noop_repeats < 1:
        raise SystemExit(f"error: --noop-repeats must be >= 1, got {args.noop_repeats}")
    workdir = Path(tempfile.mkdtemp(prefix="dynamax-pipeline-"))
    keep = args.keep
    try:
        n_files = copy_checkout(repo, workdir)
        print(f"copied {n_files} files to {workdir}; running snakemake --cores {args.cores} from scratch", flush=True)
        scratch_s, rc, out = run_snakemake(workdir, args, workdir / "benchmark_scratch.log", args.timeout)
        if rc != 0:
            keep = True  # a failed run's folder and log are what the user needs next
            raise SystemExit(f"error: from-scratch run failed (exit {rc}) after {scratch_s:.0f} s; "
                             f"last lines:\n{out[-3000:]}\n(log: {workdir / 'benchmark_scratch.log'}; kept)")
        noop, noop_clean = [], True
        for i in range(args.noop_repeats):
            seconds, rc, out = run_snakemake(workdir, args, workdir / f"benchmark_noop{i}.log", None)
            noop.append(seconds)
            noop_clean &= rc == 0 and "Nothing to be done" in out
        rules = rule_benchmarks(workdir)
        rows = [{"run": "from_scratch", "seconds": scratch_s, "goal_s": 1800.0, "meets_goal": scratch_s <= 1800},
                {"run": "noop_rerun", "seconds": spread(noop)["median"], "goal_s": 10.0,
                 "meets_goal": spread(noop)["median"] <= 10, "nothing_to_do": noop_clean}]
        print_table(rows, ["run", "seconds", "goal_s", "meets_goal", "nothing_to_do"])
        if rules:
            print("\nslowest rules (their benchmark: files):")
            print_table(rules[:10], ["benchmark", "seconds"])
        save(args.out, "pipeline", args, rows, noop_seconds=spread(noop), rule_benchmarks=rules,
             cores=args.cores, files_copied=n_files)
    finally:
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
