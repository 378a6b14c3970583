"""Intervals over questions: the bootstrap against known answers, paired differences, the grid's interval columns
from samples.jsonl, the no-loss rule on a constructed grid, and early exit versus pruning and one emission rule versus
another on constructed samples."""
import json

import numpy as np
import pandas as pd
import pytest
from test_analysis import write_record

from workflow_lib.analysis.intervals import bootstrap_mean, paired_difference, per_question_scores
from workflow_lib.analysis.tables import grid_table, no_loss_table, versus_pruning_table, versus_rule_table


def test_bootstrap_mean_known_answer():
    scores = [1.0] * 30 + [0.0] * 70  # p = 0.3, n = 100: normal approximation 0.3 +- 1.96 * sqrt(0.21 / 100)
    mean, low, high = bootstrap_mean(scores, seed=0)
    assert mean == 0.3
    assert low == pytest.approx(0.3 - 0.0898, abs=0.015) and high == pytest.approx(0.3 + 0.0898, abs=0.015)
    assert bootstrap_mean(scores, seed=0) == (mean, low, high)  # seeded: the same interval every time
    continuous = np.random.default_rng(0).random(50)
    assert bootstrap_mean(continuous, seed=1) != bootstrap_mean(continuous, seed=2)  # the seed is used
    assert bootstrap_mean([1.0] * 24) == (1.0, 1.0, 1.0)  # every resample equal (BCa would be undefined)
    with pytest.raises(ValueError, match="no scores"):
        bootstrap_mean([])


def test_paired_difference_uses_common_questions_in_pairs():
    rng = np.random.default_rng(0)
    base = {q: float(v) for q, v in enumerate(rng.random(200))}  # large question-to-question spread
    point = {q: v - 0.01 for q, v in base.items()}  # a uniform loss of 0.01
    point[999] = 5.0  # a question the baseline never saw: left out
    delta, low, high, n = paired_difference(point, base, seed=0)
    assert n == 200 and delta == pytest.approx(-0.01) and low == pytest.approx(-0.01) and high == pytest.approx(-0.01)
    _, unpaired_low, unpaired_high = bootstrap_mean(list(base.values()))
    assert unpaired_high - unpaired_low > 0.05  # unpaired, the same loss would drown in the spread
    with pytest.raises(ValueError, match="share no question"):
        paired_difference({1: 1.0}, {2: 1.0})


def write_samples(folder, scores: dict, metric="exact_match"):
    lines = [json.dumps({"doc_id": q, metric: v, "resps": [["x"]]}) for q, v in scores.items()]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


def write_points(root, records: dict) -> list:
    """{path below root: (crf, per-question scores)} -> the records with their samples.jsonl; their paths."""
    paths = []
    for rel, (crf, scores) in records.items():
        path = write_record(root, rel, sum(scores) / len(scores), crf)
        write_samples(path.parent, dict(enumerate(scores)))
        paths.append(path)
    return paths


def test_grid_columns_from_samples(tmp_path):
    root = tmp_path / "eval"
    base = write_record(root, "m/baseline/task~triviaqa", 0.5, 1.0)
    point = write_record(root, "m/head~calm/policy~copy/task~triviaqa/threshold~0.5", 0.25, 1.4)
    write_samples(base.parent, {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0})
    write_samples(point.parent, {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0})
    grid = grid_table([base, point], root).set_index("method")
    row = grid.loc["early_exit"]
    assert row["exact_match_delta"] == -0.25 and row["exact_match_delta_ci_high"] <= 0.0
    assert row["exact_match_ci_low"] <= 0.25 <= row["exact_match_ci_high"]
    assert grid.loc["baseline", "exact_match_delta"] == 0.0
    assert per_question_scores(point.parent / "samples.jsonl", ["exact_match"]) == {
        "exact_match": {0: 1.0, 1: 0.0, 2: 0.0, 3: 0.0}}


def test_no_loss_rule_on_a_constructed_grid():
    def row(method, crf, low, head="calm", policy="copy", threshold=None, prune=0, valid=True):
        return {"backbone": "m", "method": method, "head": head if method == "early_exit" else None,
                "policy": policy if method == "early_exit" else None, "task": "triviaqa", "threshold": threshold,
                "prune": prune, "crf_exact": crf, "crf_paper": crf, "valid": valid, "exact_match_delta": low + 0.01,
                "exact_match_delta_ci_low": low, "exact_match_delta_ci_high": low + 0.02}
    grid = pd.DataFrame([
        row("baseline", 1.0, 0.0),
        row("early_exit", 1.2, -0.01, threshold=0.8),  # no loss
        row("early_exit", 1.4, -0.019, threshold=0.5),  # still within delta: the largest CRF of this series
        row("early_exit", 1.6, -0.05, threshold=0.2),  # a loss the data supports
        row("early_exit", 2.0, 0.0, threshold=0.0, valid=False),  # invalid points never count
        row("early_exit", 1.1, -0.30, head="mamba", threshold=0.9),  # a series with no loss-free point: absent
        row("prune", 1.2, -0.001, prune=1),
        row("prune", 1.5, -0.4, prune=2),
    ])
    table = no_loss_table(grid, delta=0.02).set_index("series")
    assert list(table.index) == ["calm / copy", "layer pruning"]
    assert table.loc["calm / copy", "crf_exact"] == 1.4 and table.loc["calm / copy", "threshold"] == 0.5
    assert table.loc["layer pruning", "prune"] == 1
    assert no_loss_table(grid, delta=0.015).set_index("series").loc["calm / copy", "threshold"] == 0.8


def test_versus_pruning_pairs_each_series_with_a_point_saving_at_least_as_much(tmp_path):
    root = tmp_path / "eval"
    n = 40
    records = {
        "m/baseline/task~triviaqa": (1.0, [1.0] * n),
        "m/prune~1/task~triviaqa": (1.2, [1.0] * 20 + [0.0] * 20),
        # calm: the point at CRF 1.25 is the first that saves as much as pruning; 1.1 saves less, 1.6 more
        "m/head~calm/policy~copy/task~triviaqa/threshold~0.9": (1.1, [1.0] * n),
        "m/head~calm/policy~copy/task~triviaqa/threshold~0.5": (1.25, [1.0] * 30 + [0.0] * 10),
        "m/head~calm/policy~copy/task~triviaqa/threshold~0.2": (1.6, [0.0] * n),
        "m/head~mamba/policy~copy/task~triviaqa/threshold~0.5": (1.15, [1.0] * n),  # never reaches CRF 1.2: absent
    }
    paths = write_points(root, records)
    table = versus_pruning_table(grid_table(paths, root), root)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["series"], row["threshold"], row["crf_exact"], row["prune"]) == ("calm / copy", 0.5, 1.25, 1)
    assert row["difference"] == pytest.approx(0.25) and row["n"] == n  # questions 20-29: exit right, pruning wrong
    assert 0 < row["ci_low"] < 0.25 < row["ci_high"]  # 10 of 40 questions differ, all one way


def test_versus_rule_pairs_each_last_block_point_with_the_other_rule_saving_at_least_as_much(tmp_path):
    root = tmp_path / "eval"
    n = 40
    cell = "m/head~calm{rule}/policy~recompute/task~triviaqa/threshold~{x}"
    records = {
        "m/baseline/task~triviaqa": (1.0, [1.0] * n),
        cell.format(rule="", x="0.9"): (1.1, [1.0] * n),
        cell.format(rule="", x="0.5"): (1.3, [1.0] * 20 + [0.0] * 20),
        cell.format(rule="", x="0.2"): (1.9, [0.0] * n),  # the translator never saves this much: no row
        # translator: 1.05 saves less than any last_block point; 1.2 is the first at least 1.1, 1.5 at least 1.3
        cell.format(rule="/emission~translator", x="0.99"): (1.05, [1.0] * n),
        cell.format(rule="/emission~translator", x="0.9"): (1.2, [1.0] * n),
        cell.format(rule="/emission~translator", x="0.5"): (1.5, [1.0] * 30 + [0.0] * 10),
        "m/head~ffn/emission~translator/policy~recompute/task~triviaqa/threshold~0.5": (1.5, [1.0] * n),  # no pair
    }
    paths = write_points(root, records)
    table = versus_rule_table(grid_table(paths, root), root)
    pairs = list(zip(table["head"], table["emission"], table["default_threshold"], table["threshold"]))
    assert pairs == [("calm", "translator", 0.9, 0.9), ("calm", "translator", 0.5, 0.5)]
    same, better = table.iloc[0], table.iloc[1]
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["n"] == n
    assert better["difference"] == pytest.approx(0.25)  # questions 20-29: right under the translator only
    assert 0 < better["ci_low"] < 0.25 < better["ci_high"] and better["crf_exact"] == 1.5
