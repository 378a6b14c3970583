"""Where a pipeline run's time went, per rule, from its `benchmark:` files (no torch here).

Every rule writes one tab-separated file per job (Snakemake's `benchmark:`; columns s, h:m:s, max_rss, ...,
cpu_time). A file belongs to the rule whose benchmark pattern it matches; the patterns are the rules' own, as Snakemake
spells them with the wildcard constraints inside (`results/benchmarks/evaluate/{backbone,mistral|mamba2}/...`), given
by the pipeline (rules/results_page.smk) so that a renamed or added rule needs nothing here. Where two patterns match
(an oracle job's file also fits the exit cells' open `{head}`), the one with fewer open wildcards (a character class
or dot in the constraint) wins, then the one with more literal text; a file no pattern matches is counted under
`(other)`.

timings.csv: one row per rule (jobs, wall seconds summed and the longest, CPU seconds), slowest first, then `(total)`
with `elapsed_seconds`, from the first job's start to the last job's end (each file is written when its job ends,
so its modification time less its seconds is the start; gaps between sessions count).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path, PurePosixPath

import pandas as pd

TIMINGS_COLUMNS = ["rule", "jobs", "wall_seconds", "max_wall_seconds", "cpu_seconds", "elapsed_seconds"]
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


def timings_table(root: str | Path, patterns: dict[str, str], skip: tuple[str, ...] = ()) -> pd.DataFrame:
    """Per rule, the jobs whose benchmark files lie under `root` (patterns spell paths as `root` does; `skip`: files
    to leave out, e.g. the page job's own), and the run's total."""
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
    frame = pd.DataFrame(jobs)
    per_rule = frame.groupby("rule").agg(jobs=("wall", "size"), wall_seconds=("wall", "sum"),
                                         max_wall_seconds=("wall", "max"),
                                         cpu_seconds=("cpu", lambda c: c.sum(min_count=1)))
    per_rule = per_rule.sort_values(["wall_seconds", "jobs"], ascending=False).reset_index()
    total = {"rule": TOTAL, "jobs": len(frame), "wall_seconds": frame["wall"].sum(),
             "max_wall_seconds": frame["wall"].max(), "cpu_seconds": frame["cpu"].sum(min_count=1),
             "elapsed_seconds": frame["end"].max() - frame["start"].min()}
    return pd.concat([per_rule, pd.DataFrame([total])], ignore_index=True)[TIMINGS_COLUMNS]
