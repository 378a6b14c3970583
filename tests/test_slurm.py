"""The slurm profile through a real single-node SLURM (scripts/slurm_cluster.sh), not a mock."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET = "results/eval/mistral/head~calm/policy~copy/task~triviaqa/threshold~0.5/record.json"


@pytest.fixture(scope="module")
def cluster():
    start = subprocess.run(["bash", str(REPO / "scripts/slurm_cluster.sh"), "start"], capture_output=True, text=True)
    try:
        if start.returncode != 0 or not shutil.which("sbatch"):
            pytest.skip(f"no SLURM: the slurm packages could not be installed or started ({start.stderr.strip()[-300:]})")
        yield
    finally:
        # Leaves the machine as the test found it: an installed SLURM client without a controller would add ~10 s
        # to every later snakemake call (see scripts/slurm_cluster.sh).
        subprocess.run(["bash", str(REPO / "scripts/slurm_cluster.sh"), "remove"], capture_output=True)


@pytest.mark.slow
def test_smoke_target_through_slurm(cluster, tmp_path):
    # The project's profile, minus what this one-node CPU cluster lacks: GPUs, accounting (squeue polls).
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    for resources in profile["set-resources"].values():
        resources.pop("gpu", None)
        resources["mem_mb"] = 1000
        resources["cpus_per_task"] = 1
    profile.update({"slurm-status-command": "squeue", "slurm-no-account": True,
                    "slurm-init-seconds-before-status-checks": 2, "retries": 0, "jobs": 4})
    profile["default-resources"] = {"mem_mb": 1000, "runtime": 30, "cpus_per_task": 1}
    profile.pop("set-threads")
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    run = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
                          str(tmp_path), "--configfile", str(REPO / "configs/smoke.yaml"), "--profile",
                          str(tmp_path / "profile"), "--cores", "all", TARGET], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / TARGET).stat().st_size > 0
    assert "sbatch" in run.stdout + run.stderr or "SLURM" in run.stdout + run.stderr
