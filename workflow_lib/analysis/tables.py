"""Tidy result tables from the evaluation run records (pandas; no torch here).

One row per grid point: the point's identity (backbone, method, head, policy, task, threshold, prune),
read from its path (`.../head~calm/policy~copy/task~coqa/threshold~0.4/record.json`), then the record's
metrics and measurements. The Pareto table keeps, per task, metric and backbone, the valid points that no
other point beats in both CRF and metric: the best metric reachable at each CRF, and which method gets it.

Every metric carries its 95% bootstrap interval over questions (`<metric>_ci_low`, `<metric>_ci_high`) and its
paired difference to the exits-off baseline of the same backbone and task on the same questions (`<metric>_delta`
with `_delta_ci_low`, `_delta_ci_high`), computed from the per-question scores in each point's samples.jsonl
(analysis/intervals.py). The no-loss table answers the paper's claim per series: the largest CRF whose paired
difference interval lies above -delta. The versus-pruning table answers its first claim (early exits beat layer
pruning at equal compute): early exit minus pruning on the same questions, at a CRF at least the pruning's. The
versus-rule table does the same between emission rules: a head and policy under another rule minus under the paper's
last_block, at a CRF at least the last_block point's.

Every row says what made it (analysis/runs.py): the grid carries each record's run key, git commit, seed and package
versions from its provenance; the tables derived from it carry the run key of the points they read.

`early_exit_share` is each point's share of decode tokens that left before the last block (its exit histogram).
`inconsistency` is each point's share of questions whose generation (stripped) differs from the full model's on the
same question: the risk the calibrated thresholds bound. A calibrated point (`calibrated~<delta>`, from
`python -m workflow_lib.cli.calibrate`) carries its threshold and calibration in its record; `measured_risk` is the
risk it was calibrated for, measured on the evaluation set, beside `calibration.delta`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pandas as pd

from workflow_lib.analysis.intervals import bootstrap_mean, paired_difference, per_question_scores
from workflow_lib.analysis.runs import RUN_COLUMNS, joined_runs, run_columns

ID_COLUMNS = ["backbone", "method", "head", "policy", "emission", "task", "threshold", "prune"]
DEFAULT_EMISSION = "last_block"  # the paper's emission rule; series under another rule carry its name
# Series of the methods that are not a head / policy (the path component names the method, see grid_point).
SERIES_NAMES = {"prune": "layer pruning", "prune_angular": "pruning (angular)", "baseline": "full model"}

# The metric each task is judged by in the paper's figures (lm-eval names, filter suffix removed).
HEADLINE_METRICS = {
    "triviaqa": ["exact_match"],
    "coqa": ["em", "f1"],
    "truthfulqa": ["bleu_acc", "rougeL_acc"],
}

# Record fields that describe the run rather than measure it; they stay in the record files (the head is named by
# its folder, head~NAME: the series label).
# `cost` repeats crf_exact / crf_paper; `metrics` become their own columns (see record_row).
_SKIPPED_FIELDS = {"provenance", "lm_eval", "cost", "metrics_stderr", "exit_histogram", "heads", "head_spec",
                   "backbone", "task", "threshold", "prune", "policy", "head", "emission"}
SPEED = "speed.decode_tokens_per_second"
INTERVAL_SUFFIXES = ["_ci_low", "_ci_high", "_delta", "_delta_ci_low", "_delta_ci_high"]
LEADING_COLUMNS = ["crf_exact", "crf_paper", "valid", "speedup_indicative", SPEED, "n_samples", "inconsistency",
                   "early_exit_share", "calibration.delta", "measured_risk"]


def record_path(path: str | Path, results_root: str | Path) -> Path:
    """A record's path below `results_root` (the grid's `record` column; the point's identity)."""
    return Path(path).resolve().relative_to(Path(results_root).resolve())


def grid_point(path: str | Path, results_root: str | Path = "results/eval") -> dict:
    """Identity of the grid point a record belongs to, from its path below `results_root`.

    results/eval/{backbone}/head~{h}/policy~{p}/task~{t}/threshold~{x}/record.json -> early exit
    results/eval/{backbone}/baseline/task~{t}/record.json                         -> exits disabled
    results/eval/{backbone}/prune~{n}/task~{t}/record.json                        -> layer pruning (deepest n)
    results/eval/{backbone}/prune_angular~{n}/task~{t}/record.json                -> layer pruning (angular)
    results/eval/{backbone}/oracle/policy~{p}/task~{t}/record.json                -> the oracle bound
    results/eval/{backbone}/head~{h}/policy~{p}/task~{t}/calibrated~{d}/record.json -> calibrated threshold
                                                               (the threshold is in the record: see record_row)
    results/eval/{backbone}/head~{h}/policy~{p}/speculative~{k}/task~{t}/threshold~{x}/record.json
                                                                   -> speculative (lossless), at most k drafts
    An emission rule other than last_block adds emission~{rule} after head~{h} (or after oracle); without it the
    rule is last_block.
    """
    parts = record_path(path, results_root).parts[:-1]
    point = {"backbone": parts[0], "method": "early_exit", "head": None, "policy": None,
             "emission": DEFAULT_EMISSION, "task": None, "threshold": None, "prune": 0, "max_draft": None}
    for part in parts[1:]:
        key, sep, value = part.partition("~")
        if not sep:
            if part not in ("baseline", "oracle"):
                raise ValueError(f"unexpected path component {part!r} in {path}")
            point["method"] = part
        elif key in SERIES_NAMES and key != "baseline":  # prune, prune_angular
            point["method"], point["prune"] = key, int(value)
        elif key == "threshold":
            point["threshold"] = float(value)
        elif key == "calibrated":
            point["method"] = "calibrated"
        elif key == "speculative":
            point["method"], point["max_draft"] = "speculative", int(value)
        elif key in ("head", "policy", "emission", "task"):
            point[key] = value
        else:
            raise ValueError(f"unexpected path component {part!r} in {path}")
    return point


def _flatten(obj: dict, prefix: str = "") -> dict:
    """Scalar leaves of a nested dict as dotted keys; lists and skipped fields are left out."""
    flat = {}
    for key, value in obj.items():
        if key in _SKIPPED_FIELDS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, prefix=f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def metric_name(name: str) -> str:
    """lm-eval's 'exact_match,remove_whitespace' -> 'exact_match' (one filter per task here)."""
    return name.split(",")[0]


def record_row(path: str | Path, results_root: str | Path = "results/eval") -> tuple[dict, list[str]]:
    """One grid point's row, and the names of its metric columns."""
    record = json.loads(Path(path).read_text())
    row = grid_point(path, results_root) | run_columns(record.get("provenance"))
    if row["method"] == "calibrated":  # the threshold Learn-then-Test chose (None: none certified, exits off)
        row["threshold"] = record.get("threshold")
    names = []
    for key, value in (record.pop("metrics", None) or {}).items():
        name = metric_name(key)
        if not name.endswith("_stderr") and isinstance(value, (int, float)) and not isinstance(value, bool):
            row[name] = float(value)
            names.append(name)
    histogram, layers = record.get("exit_histogram"), record.get("n_layers")
    if histogram and layers:  # a token that ran every block is counted at the last one
        row["early_exit_share"] = 1 - histogram.get(str(layers - 1), 0) / sum(histogram.values())
    for key, value in _flatten(record).items():
        row.setdefault(key, value)
    return row, names


def add_intervals(rows: list[dict], scores: list[dict], seed: int, resamples: int) -> None:
    """Each row's metric intervals, and its paired difference to its (backbone, task) baseline, in place."""
    baselines = {(r["backbone"], r["task"]): s for r, s in zip(rows, scores) if r["method"] == "baseline"}
    for row, score in zip(rows, scores):
        base = baselines.get((row["backbone"], row["task"]))
        for metric, per_question in score.items():
            if not per_question:
                continue
            _, row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = bootstrap_mean(list(per_question.values()), seed,
                                                                                 resamples)
            if base is not None and base.get(metric):
                delta, low, high, _ = paired_difference(per_question, base[metric], seed, resamples)
                row[f"{metric}_delta"], row[f"{metric}_delta_ci_low"], row[f"{metric}_delta_ci_high"] = delta, low, high


def answers(samples_path: str | Path) -> dict:
    """{doc_id: the generation, stripped} from lm-eval's per-sample log."""
    lines = Path(samples_path).read_text(encoding="utf-8").splitlines()
    return {s["doc_id"]: s["resps"][0][0].strip() for s in map(json.loads, lines)}


def add_risks(rows: list[dict], scores: list[dict], texts: list[dict]) -> None:
    """Each point's inconsistency with its (backbone, task) baseline, and a calibrated point's measured risk, in
    place: over the questions both answered."""
    base = {(r["backbone"], r["task"]): (s, t) for r, s, t in zip(rows, scores, texts) if r["method"] == "baseline"}
    for row, score, text in zip(rows, scores, texts):
        if row["method"] == "baseline" or (row["backbone"], row["task"]) not in base or not text:
            continue
        base_score, base_text = base[(row["backbone"], row["task"])]
        common = sorted(set(text) & set(base_text))
        row["inconsistency"] = sum(text[q] != base_text[q] for q in common) / len(common) if common else None
        if row["method"] == "calibrated":
            metric = row.get("calibration.metric")
            if row.get("calibration.risk") != "metric":
                row["measured_risk"] = row["inconsistency"]
            elif metric in score and metric in base_score:  # the drop against the full model, per question
                both = sorted(set(score[metric]) & set(base_score[metric]))
                row["measured_risk"] = sum(max(0.0, base_score[metric][q] - score[metric][q]) for q in both) / len(both)


def grid_table(record_paths: Iterable[str | Path], results_root: str | Path = "results/eval", seed: int = 0,
               resamples: int = 2000) -> pd.DataFrame:
    """One row per grid point, identity columns first, sorted for stable diffs; intervals from samples.jsonl."""
    rows, metrics, scores, texts = [], {}, [], []
    for path in record_paths:
        row, names = record_row(path, results_root)
        row["record"] = record_path(path, results_root).as_posix()
        rows.append(row)
        metrics.update(dict.fromkeys(names))
        samples = Path(path).with_name("samples.jsonl")
        scores.append(per_question_scores(samples, names) if samples.is_file() else {})
        texts.append(answers(samples) if samples.is_file() else {})
    if not rows:
        raise ValueError("no run records given")
    add_intervals(rows, scores, seed, resamples)
    add_risks(rows, scores, texts)
    table = pd.DataFrame(rows)
    if SPEED in table:
        # Indicative only, never plotted: decode tokens per second against the exits-off job of the same backbone
        # and task, but the two jobs ran at different times beside different neighbours (measured: 3.48x for
        # pruning 3 of 6 blocks, whose bound is 2x). Speedups that stand up come from paired, interleaved timings
        # of one process (benchmarks/realised_speedup.py, benchmarks/trained_sweep.py).
        base = table[table["method"] == "baseline"].set_index(["backbone", "task"])[SPEED]
        reference = pd.Series(list(zip(table["backbone"], table["task"])), index=table.index).map(base)
        table["speedup_indicative"] = table[SPEED] / reference
    interval_columns = [f"{m}{suffix}" for m in metrics for suffix in INTERVAL_SUFFIXES if f"{m}{suffix}" in table]
    first = (ID_COLUMNS + [m for m in metrics if m in table] + interval_columns
             + [c for c in LEADING_COLUMNS if c in table])
    order = first + [c for c in table.columns if c not in first + RUN_COLUMNS] + RUN_COLUMNS
    keys = ID_COLUMNS + [c for c in ("calibration.delta",) if c in table]  # calibrated points may share a threshold
    return table[order].sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def emission_suffix(emission) -> str:
    """' / lens' for a rule other than the default; '' for last_block (series names stay as they were)."""
    return "" if pd.isna(emission) or emission == DEFAULT_EMISSION else f" / {emission}"


def series_name(row: pd.Series) -> str:
    """The figure series a grid point belongs to, e.g. 'calm / recompute', 'calm / recompute / translator'."""
    rule = emission_suffix(row.get("emission"))
    if row["method"] == "early_exit":
        return f"{row['head']} / {row['policy']}{rule}"
    if row["method"] == "calibrated":
        return f"{row['head']} / {row['policy']}{rule} calibrated delta={row['calibration.delta']:g}"
    if row["method"] == "oracle":
        return f"oracle / {row['policy']}{rule}"
    if row["method"] == "speculative":
        return f"{row['head']} / {row['policy']}{rule} speculative k={int(row['max_draft'])}"
    return SERIES_NAMES[row["method"]]


def pareto_table(grid: pd.DataFrame, crf: str = "crf_exact") -> pd.DataFrame:
    """Per task, headline metric and backbone: the valid points on the CRF-metric frontier, by CRF."""
    valid = grid[grid["valid"].fillna(True).astype(bool)] if "valid" in grid else grid
    valid = valid[valid["method"] != "oracle"]  # a bound, not a method one can run
    frames = []
    for (task, backbone), points in valid.groupby(["task", "backbone"], sort=True):
        for metric in HEADLINE_METRICS.get(task, []):
            if metric not in points or crf not in points:
                continue
            pts = points.dropna(subset=[metric, crf]).sort_values([crf, metric], ascending=[False, False])
            # Walking from the highest CRF down, a point is on the frontier when it beats every point
            # that saves at least as much compute.
            best = pts[metric].cummax().shift(fill_value=float("-inf"))
            front = pts[pts[metric] > best].sort_values(crf)
            frames.append(pd.DataFrame({
                "task": task, "backbone": backbone, "metric": metric, "crf": front[crf].to_numpy(),
                "value": front[metric].to_numpy(), "series": front.apply(series_name, axis=1).to_numpy(),
                "threshold": front["threshold"].to_numpy(), "prune": front["prune"].to_numpy(),
                "run": front["run"].to_numpy() if "run" in front else None,
            }))
    columns = ["task", "backbone", "metric", "crf", "value", "series", "threshold", "prune", "run"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def no_loss_table(grid: pd.DataFrame, delta: float = 0.02) -> pd.DataFrame:
    """Per backbone, task, headline metric and series (head / policy, layer pruning): the largest exact CRF (with
    its paper CRF and threshold or prune n) of a valid point whose paired difference to the full model has its
    95% interval above -delta, i.e. no loss larger than delta is supported by the data."""
    columns = ["backbone", "task", "metric", "series", "crf_exact", "crf_paper", "threshold", "prune", "delta",
               "delta_ci_low", "delta_ci_high", "no_loss_delta", "run"]
    valid = grid[grid["valid"].fillna(True).astype(bool)] if "valid" in grid else grid
    valid = valid[valid["method"] != "baseline"]
    rows = []
    for (backbone, task), points in valid.groupby(["backbone", "task"], sort=True):
        for metric in HEADLINE_METRICS.get(task, []):
            low = f"{metric}_delta_ci_low"
            if low not in points:
                continue
            kept = points[points[low] >= -delta]
            if kept.empty:
                continue
            for series, group in kept.groupby(kept.apply(series_name, axis=1), sort=True):
                best = group.sort_values(["crf_exact"], ascending=False).iloc[0]
                rows.append({"backbone": backbone, "task": task, "metric": metric, "series": series,
                             "crf_exact": best["crf_exact"], "crf_paper": best.get("crf_paper"),
                             "threshold": best["threshold"], "prune": best["prune"], "delta": best[f"{metric}_delta"],
                             "delta_ci_low": best[low], "delta_ci_high": best[f"{metric}_delta_ci_high"],
                             "no_loss_delta": delta, "run": best.get("run")})
    return pd.DataFrame(rows, columns=columns)


def score_reader(results_root: str | Path):
    """(record path below results_root, metric) -> {question: score} from the point's samples.jsonl ({} without one),
    each file read once."""
    root = Path(results_root)
    scores: dict[tuple[str, str], dict] = {}

    def question_scores(record: str, metric: str) -> dict:
        if (record, metric) not in scores:
            samples = (root / record).with_name("samples.jsonl")
            scores[record, metric] = per_question_scores(samples, [metric])[metric] if samples.is_file() else {}
        return scores[record, metric]
    return question_scores


def versus_pruning_table(grid: pd.DataFrame, results_root: str | Path = "results/eval", seed: int = 0,
                         resamples: int = 2000) -> pd.DataFrame:
    """Per backbone, task, headline metric, layer-pruning point (either rule) and early-exit series (head / policy):
    the series' valid point with the smallest exact CRF at least the pruning point's (it saves at least as much
    compute; none when the series never gets there), and early exit minus pruning on the same questions with its
    95% paired bootstrap interval. `ci_low > 0`: early exit beats pruning at that compute. Points without a
    samples.jsonl (per-question scores) are left out."""
    columns = ["backbone", "task", "metric", "prune_method", "prune", "prune_crf_exact", "prune_value", "series",
               "threshold", "crf_exact", "value", "difference", "ci_low", "ci_high", "n", "run"]
    valid = grid[grid["valid"].fillna(True).astype(bool)] if "valid" in grid else grid
    question_scores = score_reader(results_root)
    rows = []
    for (backbone, task), points in valid.groupby(["backbone", "task"], sort=True):
        exits = points[points["method"] == "early_exit"]
        for metric in HEADLINE_METRICS.get(task, []):
            if metric not in points:
                continue
            for _, pruned in points[points["method"].isin(["prune", "prune_angular"])].iterrows():
                for (head, policy, emission), series in exits.groupby(["head", "policy", "emission"], sort=True):
                    # 1e-3: CRFs of the same blocks differ in the last digits (head cost, token counts)
                    reach = series[series["crf_exact"] >= pruned["crf_exact"] - 1e-3].sort_values("crf_exact")
                    if reach.empty:
                        continue
                    point = reach.iloc[0]
                    exit_scores = question_scores(point["record"], metric)
                    prune_scores = question_scores(pruned["record"], metric)
                    if not exit_scores or not prune_scores:
                        continue
                    diff, low, high, n = paired_difference(exit_scores, prune_scores, seed, resamples)
                    rows.append({"backbone": backbone, "task": task, "metric": metric,
                                 "prune_method": pruned["method"], "prune": pruned["prune"],
                                 "prune_crf_exact": pruned["crf_exact"], "prune_value": pruned[metric],
                                 "series": f"{head} / {policy}{emission_suffix(emission)}",
                                 "threshold": point["threshold"],
                                 "crf_exact": point["crf_exact"], "value": point[metric], "difference": diff,
                                 "ci_low": low, "ci_high": high, "n": n,
                                 "run": joined_runs(point.get("run"), pruned.get("run"))})
    return pd.DataFrame(rows, columns=columns)


def versus_rule_table(grid: pd.DataFrame, results_root: str | Path = "results/eval", seed: int = 0,
                      resamples: int = 2000, default: str = DEFAULT_EMISSION) -> pd.DataFrame:
    """Per backbone, task, headline metric, (head, policy) run under the default emission rule and another, and each
    valid point of the default rule's series: the other rule's valid point with the smallest exact CRF at least the
    default point's (none when that series never saves as much), and the other rule minus the default on the same
    questions with its 95% paired bootstrap interval. `ci_high < 0`: the other rule is worse at that compute;
    `ci_low > 0`: better. Points without a samples.jsonl are left out."""
    columns = ["backbone", "task", "metric", "head", "policy", "emission", "default_threshold", "default_crf_exact",
               "default_value", "threshold", "crf_exact", "value", "difference", "ci_low", "ci_high", "n", "run"]
    valid = grid[grid["valid"].fillna(True).astype(bool)] if "valid" in grid else grid
    exits = valid[valid["method"] == "early_exit"]
    question_scores = score_reader(results_root)
    rows = []
    for (backbone, task, head, policy), cell in exits.groupby(["backbone", "task", "head", "policy"], sort=True):
        ours = cell[cell["emission"] == default].sort_values("crf_exact")
        for emission, other in cell[cell["emission"] != default].groupby("emission", sort=True):
            for metric in HEADLINE_METRICS.get(task, []):
                if metric not in cell:
                    continue
                for _, point in ours.iterrows():
                    # 1e-3: CRFs of the same blocks differ in the last digits (head cost, token counts)
                    reach = other[other["crf_exact"] >= point["crf_exact"] - 1e-3].sort_values("crf_exact")
                    if reach.empty:
                        continue
                    match = reach.iloc[0]
                    theirs, base = question_scores(match["record"], metric), question_scores(point["record"], metric)
                    if not theirs or not base:
                        continue
                    diff, low, high, n = paired_difference(theirs, base, seed, resamples)
                    rows.append({"backbone": backbone, "task": task, "metric": metric, "head": head, "policy": policy,
                                 "emission": emission, "default_threshold": point["threshold"],
                                 "default_crf_exact": point["crf_exact"], "default_value": point[metric],
                                 "threshold": match["threshold"], "crf_exact": match["crf_exact"],
                                 "value": match[metric], "difference": diff, "ci_low": low, "ci_high": high, "n": n,
                                 "run": joined_runs(match.get("run"), point.get("run"))})
    return pd.DataFrame(rows, columns=columns)
