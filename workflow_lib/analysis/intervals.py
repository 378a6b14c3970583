"""Confidence intervals over questions: a grid point's metric and its paired difference to the full model.

Both are seeded percentile bootstraps (scipy.stats.bootstrap) over the per-question scores that lm-eval logs
in each point's samples.jsonl: the mean score with its 95% interval, and the mean of (point - exits-off
baseline) over the questions both answered, resampled in pairs, so that the question-to-question spread that
both share cancels. Percentile, not BCa: BCa is undefined when every resample is equal (a point that answers
every question right), which small tasks hit.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


def bootstrap_mean(scores, seed: int = 0, resamples: int = 2000) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `scores` and its seeded 95% percentile-bootstrap interval."""
    x = np.asarray(scores, dtype=float)  # (n,)
    if x.size == 0:
        raise ValueError("no scores to bootstrap")
    mean = float(x.mean())
    if x.size == 1 or np.all(x == x[0]):  # every resample is the same value
        return mean, mean, mean
    ci = stats.bootstrap((x,), np.mean, n_resamples=resamples, confidence_level=CONFIDENCE, method="percentile",
                         rng=np.random.default_rng(seed)).confidence_interval
    return mean, float(ci.low), float(ci.high)


def paired_difference(point: dict, baseline: dict, seed: int = 0,
                      resamples: int = 2000) -> tuple[float, float, float, int]:
    """(delta, low, high, n): mean of point[q] - baseline[q] over the questions q both scored, with its interval."""
    common = sorted(set(point) & set(baseline))
    if not common:
        raise ValueError("the point and the baseline share no question")
    diff = [point[q] - baseline[q] for q in common]
    return (*bootstrap_mean(diff, seed, resamples), len(common))


def per_question_scores(samples_path: str | Path, metrics: list[str]) -> dict[str, dict]:
    """{metric: {doc_id: score}} from lm-eval's per-sample log (samples.jsonl beside a record)."""
    scores: dict[str, dict] = {m: {} for m in metrics}
    for line in Path(samples_path).read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        for metric in metrics:
            value = sample.get(metric)
            if isinstance(value, (int, float)):  # bools (acc metrics) count as 0 / 1
                scores[metric][sample["doc_id"]] = float(value)
    return scores
