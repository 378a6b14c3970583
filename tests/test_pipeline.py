"""The Snakemake pipeline: lint, offline dry runs, fail-fast config validation, and (slow) the smoke run
end to end with the config-extension property and the no-op rerun."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(*args, cwd=REPO):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)


def test_lint_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("configfile", [None, "configs/paper.yaml", "configs/smoke.yaml"])
def test_dry_run_offline(configfile, tmp_path):
    args = ["-n", "--directory", str(tmp_path)] + (["--configfile", str(REPO / configfile)] if configfile else [])
    result = snakemake(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "evaluate_exits" in result.stdout and "figure" in result.stdout


def test_slurm_profile_resolves_from_project_root():
    result = snakemake("-n", "--cores", "all", "--profile", "slurm", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using profile slurm" in result.stdout + result.stderr


@pytest.mark.parametrize("edit, key", [
    (lambda c: c["evaluation"]["thresholds"].append("high"), "evaluation.thresholds[2]"),
    (lambda c: c["heads"].update(bogus=1), "heads: Additional properties are not allowed ('bogus'"),
    (lambda c: c["backbones"]["mamba2"].update(policies=["copy"]), "backbones.mamba2.policies[0]"),
])
def test_schema_violation_fails_fast_naming_the_key(edit, key, tmp_path):
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    edit(config)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(bad))
    assert result.returncode != 0
    assert "invalid config: " + key in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_smoke_end_to_end_then_extend_then_noop(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(REPO / "configs/smoke.yaml"),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ["tables/grid.csv", "tables/pareto.csv", "figures/mistral/triviaqa.png",
                 "figures/mamba2/triviaqa.pdf", "calibration/mistral/head~saturation/policy~copy/task~triviaqa/"
                 "calibration.json"]:
        assert (tmp_path / "results" / name).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "results/heads/mistral/head~saturation").iterdir()) == ["heads.json"]
    grid = pd.read_csv(tmp_path / "results/tables/grid.csv")
    assert set(grid["method"]) == {"baseline", "early_exit", "prune", "prune_angular", "calibrated"}
    assert set(grid["head"].dropna()) == {"calm", "saturation"}
    report = snakemake("--directory", str(tmp_path), "--configfile", str(REPO / "configs/smoke.yaml"),
                       "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0 and (tmp_path / "report.html").stat().st_size > 0

    noop = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "configs/smoke.yaml"))
    assert "Nothing to be done" in noop.stdout + noop.stderr

    config = yaml.safe_load((REPO / "configs/smoke.yaml").read_text())
    config["evaluation"]["thresholds"].append(0.7)
    config["backbones"]["mistral"]["prune"].append(2)
    extended = tmp_path / "extended.yaml"
    extended.write_text(yaml.safe_dump(config))
    plan = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(extended))
    out = plan.stdout
    stats = out.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    jobs = {line.split()[0]: int(line.split()[1]) for line in stats if line.split() and line.split()[0] != "total"}
    # Only the cells that gain a point (one per backbone x head x policy x task; the new depth's
    # pruning job) and what reads them; nothing upstream (data, backbones, heads).
    assert jobs == {"evaluate_exits": 4, "evaluate_prune": 2, "tables": 1, "figure": 2, "all": 1}, out

    # Running them computes only the new points: the records already there are kept byte for byte (a recomputed
    # one would differ: records hold measured times). Snakemake touches them, so their mtimes do change.
    old = sorted((tmp_path / "results/eval").rglob("record.json"))
    before = {path: path.read_bytes() for path in old}
    run = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(extended), "--cores", "2"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert {path: path.read_bytes() for path in old} == before
    new = set((tmp_path / "results/eval").rglob("record.json")) - set(old)
    assert sorted(p.relative_to(tmp_path / "results/eval").as_posix() for p in new) == [
        "mamba2/head~calm/policy~skip/task~triviaqa/threshold~0.7/record.json",
        "mamba2/head~saturation/policy~skip/task~triviaqa/threshold~0.7/record.json",
        "mistral/head~calm/policy~copy/task~triviaqa/threshold~0.7/record.json",
        "mistral/head~saturation/policy~copy/task~triviaqa/threshold~0.7/record.json",
        "mistral/prune_angular~2/task~triviaqa/record.json",
        "mistral/prune~2/task~triviaqa/record.json",
    ]
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
