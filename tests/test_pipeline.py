"""The Snakemake pipeline's wiring: lint, an offline dry run of each shipped config, a refused config stopping every
job, the config-extension properties, and (slow) the smoke run end to end with the no-op rerun. What a config
resolves to, and every config the pipeline refuses: tests/test_plan.py, without Snakemake."""
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]


def snakemake(*args, cwd=REPO):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)


@functools.cache
def dry_run(*configfiles: str) -> subprocess.CompletedProcess:
    """`snakemake -n -p` of a shipped config (none: config.yaml), once per session: several tests read the same plan."""
    with tempfile.TemporaryDirectory() as workdir:
        configs = ["--configfile", *(str(REPO / c) for c in configfiles)] if configfiles else []
        return snakemake("-n", "-p", "--directory", workdir, *configs)


SHIPPED = [(), ("configs/paper.yaml",), ("configs/smoke.yaml",), ("configs/real-small.yaml",),
           ("config.yaml", "configs/emission-rules.yaml")]


def series(dry_run_output) -> list[str]:
    """The --out-dir of every series the evaluation jobs of a dry run (-p) run: one per exit cell, baseline, oracle,
    pruning depth and speculative series."""
    return re.findall(r"--out-dir (\S+?)'", dry_run_output)


def count(dry_run_output, pattern: str) -> int:
    """Series whose folder matches `pattern`."""
    return sum(bool(re.search(pattern, folder)) for folder in series(dry_run_output))


EXIT_CELL = r"/head~[^/]+(/emission~\w+)?/policy~\w+/task~"
ORACLE = r"/oracle(/emission~\w+)?/policy~"


def job_stats(dry_run_output):
    """{rule: planned jobs} from a dry run's 'Job stats:' table."""
    stats = dry_run_output.split("Job stats:")[1].split("\n\n")[0].splitlines()[3:]
    return {line.split()[0]: int(line.split()[1]) for line in stats if line.split() and line.split()[0] != "total"}


@pytest.mark.parametrize("configfile", [None, "configs/real-small.yaml", "configs/paper.yaml"])
def test_lint_clean(configfile):
    result = snakemake("--lint", *(["--configfile", str(REPO / configfile)] if configfile else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize("configfiles", SHIPPED, ids=lambda files: "+".join(files) or "config.yaml")
def test_dry_run_offline(configfiles):
    result = dry_run(*configfiles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert count(result.stdout, EXIT_CELL) and count(result.stdout, "/baseline/") and "figure" in result.stdout


def test_refused_config_stops_before_any_job(tmp_path):
    """The plan's ConfigError reaches the user as Snakemake's one-line error, and nothing runs."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    config["heads"].update(m={"type": "mamba", "state_sise": 64})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(bad))
    assert result.returncode != 0
    assert "invalid config: heads.m.state_sise: head type 'mamba' takes no option" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "results").exists()


def test_default_runs_translator_on_calm_under_recompute_only():
    """config.yaml's second emission rule (emission_heads, emission_policies): per backbone the translators, calm's
    heads on the translator's labels, and its cells, oracle and calibration under recompute alone."""
    result = dry_run()
    assert result.returncode == 0, result.stdout + result.stderr
    translator = set(re.findall(r"results/eval/(\w+)/(head~\w+|oracle)/emission~translator/policy~(\w+)/task~(\w+)",
                                result.stdout))
    assert translator == {(b, what, "recompute", t) for b in ("mistral", "mamba2") for what in ("head~calm", "oracle")
                          for t in ("triviaqa", "coqa", "truthfulqa")}
    assert job_stats(result.stdout)["train_translators"] == 2


def test_emission_rules_overlay_adds_calm_under_lens_and_translator():
    """configs/emission-rules.yaml merges onto config.yaml: per backbone calm under lens (every policy) and under the
    translator's remaining policies (heads, cells, oracle per policy, calibration); nothing of the default
    disappears."""
    base, both = dry_run(), dry_run("config.yaml", "configs/emission-rules.yaml")
    assert base.returncode == 0 and both.returncode == 0, both.stdout + both.stderr
    before, after = job_stats(base.stdout), job_stats(both.stdout)
    # 3 tasks each; lens on mistral's 3 and mamba2's 2 policies, the translator on the ones beside recompute
    cells = 3 * (3 + 2) + 3 * (2 + 1)
    assert after["train_translators"] == before["train_translators"] == 2
    assert after["train_heads"] == before["train_heads"] + 2  # calm under lens
    assert after["label_cache"] == before["label_cache"] + 2  # one per backbone and added rule
    assert count(both.stdout, EXIT_CELL) == count(base.stdout, EXIT_CELL) + cells
    assert count(both.stdout, ORACLE) == count(base.stdout, ORACLE) + cells
    assert after["calibrate"] == before["calibrate"] + (3 + 2) + (2 + 1)  # CoQA calibrates
    for kept in ("/prune", "/baseline/"):
        assert count(both.stdout, kept) == count(base.stdout, kept)
    assert {k: v for k, v in after.items() if k.startswith("evaluate_") or k == "pretrain"} == \
        {k: v for k, v in before.items() if k.startswith("evaluate_") or k == "pretrain"}  # one job per task


def test_emission_rule_on_a_subset_adds_only_its_jobs(tmp_path):
    """A rule besides last_block on one head: its heads, cells, oracle and calibration under emission~RULE, with
    --emission on their commands; the default rule's jobs and paths as they were."""
    config = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    base = dry_run("configs/smoke.yaml")
    config["backbones"]["mamba2"].update(emissions=["last_block", "lens"], emission_heads={"lens": ["calm"]},
                                         policies=["recompute", "skip"], emission_policies={"lens": ["skip"]})
    (tmp_path / "lens.yaml").write_text(yaml.safe_dump(config))
    lens = snakemake("-n", "-p", "--directory", str(tmp_path), "--configfile", str(tmp_path / "lens.yaml"))
    assert base.returncode == 0 and lens.returncode == 0, lens.stdout + lens.stderr
    before, after = job_stats(base.stdout), job_stats(lens.stdout)
    assert after["train_heads"] == before["train_heads"] + 1 and after["untrained_heads"] == before["untrained_heads"]
    assert count(lens.stdout, ORACLE) > count(base.stdout, ORACLE)
    assert count(lens.stdout, EXIT_CELL) > count(base.stdout, EXIT_CELL)
    assert "results/heads/mamba2/head~calm/emission~lens" in lens.stdout and "--emission lens" in lens.stdout
    assert "head~saturation/emission~lens" not in lens.stdout  # the rule runs on its listed heads only
    assert "results/eval/mamba2/oracle/emission~lens/policy~skip" in lens.stdout
    assert "emission~lens/policy~recompute" not in lens.stdout  # and under its listed policies only
    # the default rule's paths and commands as they were (the label cache names its rule, last_block included)
    assert "emission~" not in re.sub(r"results/labels/\S+", "", base.stdout) and "--emission" not in base.stdout


def test_answers_add_the_prompt_and_answer_jobs_only(tmp_path):
    """answers.tasks: one answer_prompts job per task, drawn clear of the evaluated questions, the calibration set and
    the few-shot examples; one greedy_answers job per backbone, read by its translators, its label caches and its
    heads; nothing else is added, and a weight of 0 leaves that fit on text alone."""
    base = dry_run()
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["answers"] = {"tasks": ["coqa"], "prompts": 8}
    (tmp_path / "answers.yaml").write_text(yaml.safe_dump(config))
    answers = snakemake("-n", "-p", "--directory", str(tmp_path), "--configfile", str(tmp_path / "answers.yaml"))
    assert base.returncode == 0 and answers.returncode == 0, answers.stdout + answers.stderr
    before, after = job_stats(base.stdout), job_stats(answers.stdout)
    backbones = list(config["backbones"])
    assert after == {**before, "answer_prompts": 1, "greedy_answers": len(backbones)}
    # the world's extra CoQA stories hold the calibration set's 60 and the 8 prompts; the prompts avoid the former
    assert "--coqa-calibration results/calibration/pool/coqa.jsonl --stories 68" in answers.stdout
    assert ("held_out_split --task coqa --data results/world/coqa.json --pool results/calibration/pool/coqa.jsonl"
            " --exclude results/calibration/data/coqa.jsonl --n 8") in answers.stdout
    assert re.search(r"cli.answers .*--task coqa:results/answers/prompts/coqa.jsonl:0 .*--prompts 8 .*--tokens 32",
                     answers.stdout)
    assert "--answers" not in base.stdout  # off by default
    for backbone in backbones:
        file = f"--answers results/answers/{backbone}/answers.safetensors"
        commands = [line for line in answers.stdout.splitlines() if f"results/backbones/{backbone} " in line]
        translators = [c for c in commands if "cli.train_translators" in c]
        heads = [c for c in commands if "cli.train_heads" in c and "--train-text" in c]
        caches = [c for c in commands if "cli.label_cache" in c]
        assert translators and all(f"{file} --answers-weight 0.75" in c for c in translators)
        assert heads and all(f"{file} --answers-weight 0.5" in c for c in heads)
        assert caches and all(file in c and "--answers-weight" not in c for c in caches)
    config["translators"]["answers_weight"] = config["head_training"]["answers_weight"] = 0
    (tmp_path / "answers.yaml").write_text(yaml.safe_dump(config))
    unused = snakemake("-n", "-p", "--directory", str(tmp_path), "--configfile", str(tmp_path / "answers.yaml"))
    assert unused.returncode == 0 and "--answers" not in unused.stdout and "greedy_answers" not in unused.stdout
    # the real model's config: TriviaQA from the hub's train split (clear of its few-shot examples), TruthfulQA
    # from its whole split (clear of the evaluated and calibration questions)
    real = dry_run("configs/real-small.yaml")
    assert real.returncode == 0, real.stdout + real.stderr
    assert job_stats(real.stdout)["answer_prompts"] == 3
    assert "--pool results/data/calibration_pool/triviaqa.jsonl --exclude results/data/triviaqa_train.jsonl" in real.stdout
    assert ("--pool results/data/answers_pool/truthfulqa.jsonl --exclude results/calibration/data/truthfulqa.jsonl"
            " --limit 200 --n 64") in real.stdout


def test_slurm_profile_resolves_from_project_root():
    result = snakemake("-n", "--cores", "all", "--profile", "slurm", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Using profile slurm" in result.stdout + result.stderr


def test_install_script_refuses_unknown_extra(tmp_path):
    # a copy in an empty project folder: the refusal must come before the venv or pip is touched
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts/install.sh", tmp_path / "scripts/install.sh")
    result = subprocess.run(["bash", str(tmp_path / "scripts/install.sh"), "test", "slrum"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "unknown extra 'slrum' (known: test, slurm, gpu)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scripts"]  # no .venv


@pytest.mark.slow
def test_smoke_end_to_end_then_extend_then_noop(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(REPO / "configs/smoke.yaml"),
                          "--cores", "2"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ["tables/grid.csv", "tables/pareto.csv", "figures/mistral/triviaqa.png",
                 "figures/mamba2/triviaqa.pdf", "figures/mamba2/compare~calm_alone/triviaqa.png",
                 "calibration/mistral/head~saturation/policy~copy/task~triviaqa/calibration.json"]:
        assert (tmp_path / "results" / name).stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "results/heads/mistral/head~saturation").iterdir()) == ["heads.json"]
    grid = pd.read_csv(tmp_path / "results/tables/grid.csv")
    assert set(grid["method"]) == {"baseline", "early_exit", "oracle", "prune", "prune_angular", "calibrated"}
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
    # Only the evaluation jobs that gain a point (per backbone x task: the heads' job for the threshold, the
    # reference job for the depth) and what reads them; nothing upstream (data, backbones, heads).
    assert job_stats(plan.stdout) == {"evaluate_mistral_heads": 1, "evaluate_mistral_reference": 1,
                                      "evaluate_mamba2_heads": 1, "tables": 1, "figure": 2, "comparison_figure": 2,
                                      "all": 1}, plan.stdout

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

    # Two head specs more: a second `calm` (the authors' label direction, k = 15) and an `ffn` with an option.
    config["heads"].update(calm_k15={"type": "calm", "label_rule": "oracle_in_intermediate_topk", "k": 15},
                           ffn_x2={"type": "ffn", "expansion": 2})
    specs = tmp_path / "specs.yaml"
    specs.write_text(yaml.safe_dump(config))
    plan = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(specs))
    # Each spec's training job and calibration per backbone, each backbone's heads evaluation job (for the new points;
    # the reference jobs read no head and stay), the tables and figures; nothing of `calm` but its comparison
    # figures, re-planned because the evaluation job that keeps their records reruns (the records stay: below).
    assert job_stats(plan.stdout) == {"train_heads": 4, "evaluate_mistral_heads": 1, "evaluate_mamba2_heads": 1,
                                      "calibrate": 4, "tables": 1, "figure": 2, "comparison_figure": 2, "all": 1}, \
        plan.stdout
    results = tmp_path / "results"
    kept = [p for p in results.rglob("*")
            if p.is_file() and p.relative_to(results).parts[0] not in ("logs", "benchmarks", "tables", "figures")]
    before = {path: path.read_bytes() for path in kept}
    grid_before = pd.read_csv(results / "tables/grid.csv")
    run = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--configfile", str(specs), "--cores", "2"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # Every earlier record, head, backbone and data file byte for byte.
    assert {path: path.read_bytes() for path in kept} == before
    for backbone in ("mistral", "mamba2"):
        heads = {h: results / f"heads/{backbone}/head~{h}" for h in ("calm", "calm_k15", "ffn_x2")}
        spec = json.loads((heads["calm_k15"] / "heads.json").read_text())["spec"]
        assert spec["name"] == "calm_k15" and spec["type"] == "calm" and spec["options"] == {}
        assert (spec["training"]["label_rule"], spec["training"]["k"]) == ("oracle_in_intermediate_topk", 15)
        assert json.loads((heads["ffn_x2"] / "heads.json").read_text())["spec"]["options"] == {"expansion": 2}
        calm, k15 = (load_file(str(heads[h] / "heads.safetensors")) for h in ("calm", "calm_k15"))
        assert calm.keys() == k15.keys() and any(not torch.equal(calm[k], k15[k]) for k in calm)  # own weights
        for head in ("calm_k15", "ffn_x2"):
            cell = results / f"eval/{backbone}/head~{head}"
            records = sorted(cell.rglob("record.json"))
            assert len(records) == 4  # thresholds 0.5, 0.9, 0.7 and the calibrated point
            assert all(json.loads(r.read_text())["head_spec"]["name"] == head for r in records)
    grid = pd.read_csv(results / "tables/grid.csv")
    added = grid["head"].isin(["calm_k15", "ffn_x2"])
    assert added.sum() == 2 * 2 * 4 and set(grid.loc[grid["method"] == "early_exit", "head"]) == {
        "calm", "saturation", "calm_k15", "ffn_x2"}
    pd.testing.assert_frame_equal(grid[~added].reset_index(drop=True), grid_before)  # the other rows as they were
    noop = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(specs))
    assert "Nothing to be done" in noop.stdout + noop.stderr
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
