"""What made a table's row: the run key and provenance columns every committed table carries (no torch here).

Every record a job writes holds its provenance (workflow_lib/artifacts.provenance: the job's options, seed, package
versions and git commit). A table row gets from it

  run          a short key of (git commit, seed, package versions): rows of one run share it, and a results page's
               manifest.json names each run's commit, seed and versions under this key (analysis/results_page.py)
  git_commit   the checkout the job ran from ('+dirty' with local changes)
  seed         the seed the job ran with
  packages     'lm_eval=0.4.13 python=3.11.7 torch=2.13.0+cpu ...': the tracked packages installed, by name (records
               store them sorted, a job's memory in the order tracked: one run, one key)

The grid and the agreement tables carry all four; the tables derived from the grid (Pareto, no-loss, versus pruning,
versus rule) carry `run`, joined with '+' where a row pairs points of different runs. The config file a run used is
named, with its sha256, in the manifest of the page it feeds: no record knows which file its options came from.
"""
from __future__ import annotations

import hashlib

import pandas as pd

RUN_COLUMNS = ["run", "git_commit", "seed", "packages"]


def packages_text(packages: dict | None) -> str | None:
    """{'torch': '2.13.0+cpu', 'python': '3.11.7', 'mamba_ssm': None} -> 'python=3.11.7 torch=2.13.0+cpu'."""
    if not packages:
        return None
    return " ".join(f"{name}={version}" for name, version in sorted(packages.items()) if version is not None)


def run_key(git_commit: str | None, seed, packages: str | None) -> str:
    """10 hex digits of the sha256 of what makes a run: the same for every record of one run."""
    text = f"{git_commit}\n{seed}\n{packages}"
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def run_columns(provenance: dict | None) -> dict:
    """A record's provenance -> its run columns (all None for a record without one)."""
    if not provenance:
        return dict.fromkeys(RUN_COLUMNS)
    commit, seed, packages = provenance.get("git_commit"), provenance.get("seed"), packages_text(
        provenance.get("packages"))
    return {"run": run_key(commit, seed, packages), "git_commit": commit, "seed": seed, "packages": packages}


def joined_runs(*runs) -> str | None:
    """The run of a row made from several points: their runs, each once, sorted and joined with '+'."""
    keys = sorted({r for r in runs if isinstance(r, str)})
    return "+".join(keys) or None


def runs_of(table: pd.DataFrame) -> dict:
    """{run: {git_commit, seed, packages, rows}} from a table with the run columns (rows: how many carry it)."""
    if not set(RUN_COLUMNS) <= set(table.columns):
        return {}
    found = {}
    for run, rows in table.dropna(subset=["run"]).groupby("run", sort=True):
        first = rows.iloc[0]
        seed = first["seed"]
        found[run] = {"git_commit": first["git_commit"], "seed": None if pd.isna(seed) else int(seed),
                      "packages": first["packages"], "rows": len(rows)}
    return found
