"""Where a pipeline run's time went, per rule, from its `benchmark:` files (no torch here).

Every rule writes one tab-separated file per job (Snakemake's `benchmark:`; columns s, h:m:s, max_rss, ...,
cpu_time). A file belongs to the rule whose benchmark pattern it matches; the patterns are the rules' own, as Snakemake
spells them with the wildcard constraints inside (`results/benchmarks/evaluate/{backbone,mistral|mamba2}/...`), given
by the pipeline (rules/results_page.smk) so that a renamed or added rule needs nothing here. Where two patterns match
(an oracle job's file also fits the exit cells' open `{head}`), the one with fewer open wildcards (a character class
or dot in the constraint) wins, then the one with more literal text; a file no pattern matches is counted under
`(other)`.

timings.csv: per pipeline run, one row per rule (jobs, wall seconds summed and the longest, CPU seconds), slowest
first, then `(total)` with `elapsed_seconds`, from the first job's start to the last job's end (each file is written
when its job ends, so its modification time less its seconds is the start; gaps between sessions count), and the
run's `started`/`ended` (UTC). Every row names its run: `configfiles` (the run's config files, space-joined) and
`run_order` (1, 2, ... in the order they ran).

A run that extends an earlier one (its config files are the earlier run's plus more, as real-small-extra.yaml adds
to real-small.yaml) runs again some of its jobs (the tables, the figures) and overwrites their benchmark files, so
the earlier run's own time is only on record if its timings were written before: `run_timings` keeps the earlier
run's rows of the timings.csv it is given and counts, for the new run, only the jobs that started after the last
kept run ended. An earlier run is kept only where some benchmark file still ended inside its window (its results
are these); anything else in the old file (another config's run, another results/) is dropped.
"""
from __future__ import annotations

import csv
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import pandas as pd

TIMINGS_COLUMNS = ["run_order", "configfiles", "rule", "jobs", "wall_seconds", "max_wall_seconds", "cpu_seconds",
                   "elapsed_seconds", "started", "ended"]
TOTAL, OTHER = "(total)", "(other)"
OPEN = re.compile(r"[\[.\\]")  # a constraint that matches more than spelled-out words


def pattern_regex(pattern: str) -> tuple[re.Pattern, int, int]:
    """A Snakemake file pattern -> (its regex, open wildcards, literal characters). `{name}` is any text (Snakemake's
    default `.+`), `{name,regex}` its constraint; braces inside a constraint (`[0-9]{2}`) nest."""
    parts, open_count, literal, i = [], 0, 0, 0
    while i < len(pattern):
        if pattern[i] != "{":
            parts.append(re.escape(pattern[i]))
            literal += 1
            i += 1
            continue
        depth, j = 1, i + 1
        while depth:
            if j == len(pattern):
                raise ValueError(f"benchmark pattern {pattern!r}: unclosed '{{'")
            depth += {"{": 1, "}": -1}.get(pattern[j], 0)
            j += 1
        name, _, constraint = pattern[i + 1: j - 1].partition(",")
        constraint = constraint.strip() or ".+"
        open_count += bool(OPEN.search(constraint))
        parts.append(f"(?:{constraint})")
        i = j
    return re.compile("".join(parts)), open_count, literal


def rule_of(path: str, patterns: dict[str, tuple[re.Pattern, int, int]]) -> str:
    """The rule whose benchmark pattern matches `path` (see the module's docstring for ties)."""
    matches = [(name, opened, literal) for name, (regex, opened, literal) in patterns.items() if regex.fullmatch(path)]
    if not matches:
        return OTHER
    best = min((opened, -literal) for _, opened, literal in matches)
    return "|".join(name for name, opened, literal in matches if (opened, -literal) == best)


def read_benchmark(path: Path) -> tuple[float, float | None]:
    """(wall seconds, CPU seconds) of one benchmark file, summed over its rows (a rule run with repeats)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "s" not in rows[0]:
        raise ValueError(f"{path}: not a Snakemake benchmark file (no 's' column)")
    cpu = [float(r["cpu_time"]) for r in rows if r.get("cpu_time") not in (None, "", "NA")]
    return sum(float(r["s"]) for r in rows), (sum(cpu) if cpu else None)


def utc(seconds: float) -> str:
    """Epoch seconds -> ISO 8601 in UTC, to the microsecond (a run's window is compared with file times)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat()


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def benchmark_jobs(root: str | Path, patterns: dict[str, str], skip: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per benchmark file under `root` (patterns spell paths as `root` does; `skip`: files to leave out, e.g.
    the page job's own): its rule, wall and CPU seconds, start and end (epoch seconds)."""
    compiled = {name: pattern_regex(pattern) for name, pattern in patterns.items()}
    skipped = {PurePosixPath(s).as_posix() for s in skip}
    jobs = []
    for path in sorted(Path(root).rglob("*.tsv")):
        name = (PurePosixPath(root) / path.relative_to(root).as_posix()).as_posix()
        if name in skipped:
            continue
        wall, cpu = read_benchmark(path)
        end = path.stat().st_mtime
        jobs.append({"rule": rule_of(name, compiled), "wall": wall, "cpu": cpu, "start": end - wall, "end": end})
    if not jobs:
        raise ValueError(f"no benchmark files under {root}")
    return pd.DataFrame(jobs)


def timings_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per rule, the jobs of one run (benchmark_jobs' rows), and the run's total."""
    per_rule = jobs.groupby("rule").agg(jobs=("wall", "size"), wall_seconds=("wall", "sum"),
                                        max_wall_seconds=("wall", "max"),
                                        cpu_seconds=("cpu", lambda c: c.sum(min_count=1)))
    per_rule = per_rule.sort_values(["wall_seconds", "jobs"], ascending=False).reset_index()
    total = {"rule": TOTAL, "jobs": len(jobs), "wall_seconds": jobs["wall"].sum(),
             "max_wall_seconds": jobs["wall"].max(), "cpu_seconds": jobs["cpu"].sum(min_count=1),
             "elapsed_seconds": jobs["end"].max() - jobs["start"].min(),
             "started": utc(jobs["start"].min()), "ended": utc(jobs["end"].max())}
    return pd.concat([per_rule, pd.DataFrame([total])], ignore_index=True)


def run_timings(root: str | Path, patterns: dict[str, str], configfiles: list[str], skip: tuple[str, ...] = (),
                earlier: pd.DataFrame | None = None) -> pd.DataFrame:
    """timings.csv for the run with `configfiles`: the runs of `earlier` (a previous timings.csv) that it extends,
    kept as they are, then its own jobs (see the module's docstring)."""
    jobs = benchmark_jobs(root, patterns, skip)
    mine = set(configfiles)
    kept = []
    if earlier is not None and {"run_order", "configfiles", "started", "ended"} <= set(earlier.columns):
        for _, rows in earlier.groupby("run_order", sort=True):
            total = rows[rows["rule"] == TOTAL].iloc[0]
            started, ended = epoch(total["started"]), epoch(total["ended"])
            extended = set(str(total["configfiles"]).split()) < mine
            if extended and jobs["end"].between(started, ended).any():
                kept.append(rows)
    if kept:
        after = max(epoch(rows.loc[rows["rule"] == TOTAL, "ended"].iloc[0]) for rows in kept)
        jobs = jobs[jobs["start"] > after]
        if jobs.empty:
            raise ValueError(f"no benchmark file under {root} started after the earlier run "
                             f"({kept[-1]['configfiles'].iloc[0]}) ended: is this run's results/ here?")
    own = timings_table(jobs).assign(run_order=len(kept) + 1, configfiles=" ".join(configfiles))
    runs = [rows.assign(run_order=i) for i, rows in enumerate(kept, 1)] + [own]
    return pd.concat(runs, ignore_index=True)[TIMINGS_COLUMNS]
