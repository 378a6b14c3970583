"""Learn-then-Test (Angelopoulos, Bates et al. 2021): the lowest exit threshold whose risk is <= delta with
probability >= 1 - epsilon, from losses measured on a calibration set (numpy / scipy; no torch).

For each threshold t of a grid, the null hypothesis H_t is "risk(t) > delta"; its p-value comes from the n losses
(each in [0, 1]) that t gives on the calibration set:
  binomial           0/1 losses only: P(Binomial(n, delta) <= k), k the number of losses equal to 1. Exact: under
                     H_t the count is Binomial(n, risk) with risk > delta, stochastically larger.
  hoeffding_bentkus  any loss in [0, 1]: min(exp(-n KL(min(mean, delta) || delta)), e * P(Binomial(n, delta) <=
                     ceil(n * mean))), the Hoeffding-Bentkus bound of Bates et al. (RCPS, 2021), Prop. 3.
Fixed-sequence testing: the thresholds in order from the most conservative (the highest: fewest exits) down, each
H_t tested at level epsilon, stopping at the first that is not rejected. No multiplicity correction is needed (the
family-wise error stays <= epsilon because a test runs only if every earlier one rejected), and the chosen
threshold is the last rejected one: P(risk(chosen) > delta) <= epsilon. None rejected: no threshold is certified,
and the exits stay off.

The risk curve need not be monotone; the order is what the guarantee rests on, so it is fixed before looking at
the data. Losses are computed lazily, threshold by threshold, so decoding stops where the testing stops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special, stats

from workflow_lib.choices import BOUNDS, DEFAULT_BOUND


def _losses(losses: Sequence[float]) -> np.ndarray:
    x = np.asarray(losses, dtype=float)  # (n,)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("need a non-empty list of losses")
    if np.any(np.isnan(x)) or np.any(x < 0) or np.any(x > 1):
        raise ValueError("losses must lie in [0, 1]")
    return x


def binomial_p_value(losses: Sequence[float], delta: float) -> float:
    """P(Binomial(n, delta) <= k) for n 0/1 losses with k ones."""
    x = _losses(losses)
    if not np.all((x == 0) | (x == 1)):
        raise ValueError("the binomial bound needs 0/1 losses; use hoeffding_bentkus for losses in [0, 1]")
    return float(stats.binom.cdf(int(x.sum()), x.size, delta))


def hoeffding_bentkus_p_value(losses: Sequence[float], delta: float) -> float:
    """The Hoeffding-Bentkus p-value of risk > delta for losses in [0, 1]."""
    x = _losses(losses)
    n, mean = x.size, float(x.mean())
    a = min(mean, delta)
    kl = special.rel_entr(a, delta) + special.rel_entr(1 - a, 1 - delta)  # KL(Bernoulli(a) || Bernoulli(delta))
    hoeffding = math.exp(-n * kl)
    # ceil(n * mean); the 1e-9 keeps a count that floating point summed to k + 1e-15 at k
    bentkus = math.e * stats.binom.cdf(math.ceil(n * mean - 1e-9), n, delta)
    return float(min(hoeffding, bentkus, 1.0))


P_VALUES: dict[str, Callable[[Sequence[float], float], float]] = {
    "binomial": binomial_p_value, "hoeffding_bentkus": hoeffding_bentkus_p_value}


@dataclass(frozen=True)
class Test:
    """One threshold's test for one delta."""

    threshold: float
    n: int
    risk: float  # the mean loss on the calibration set
    p_value: float
    rejected: bool  # H: risk > delta rejected at level epsilon (the threshold is certified)


def learn_then_test(thresholds: Sequence[float], losses_at: Callable[[float], Sequence[float]],
                    deltas: Sequence[float], epsilon: float, bound: str = DEFAULT_BOUND,
                    ) -> dict[float, tuple[float | None, list[Test]]]:
    """For each delta: (the chosen threshold, or None when none is certified; the tests run, in order).

    `losses_at(t)` gives the calibration losses at threshold t; it is called once per threshold, from the highest
    down, and only while some delta is still being tested.
    """
    if bound not in P_VALUES:
        raise ValueError(f"unknown bound {bound!r}; choose from {', '.join(BOUNDS)}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
    if not deltas or any(not 0 < d < 1 for d in deltas):
        raise ValueError(f"deltas must be in (0, 1), got {list(deltas)}")
    if not thresholds or len(set(thresholds)) != len(thresholds):
        raise ValueError(f"thresholds must be a non-empty list without repeats, got {list(thresholds)}")
    tests: dict[float, list[Test]] = {d: [] for d in deltas}
    testing = set(deltas)
    for t in sorted(thresholds, reverse=True):  # the most conservative first
        if not testing:
            break
        losses = _losses(losses_at(t))
        for d in sorted(testing):
            p = P_VALUES[bound](losses, d)
            tests[d].append(Test(t, losses.size, float(losses.mean()), p, p <= epsilon))
            if p > epsilon:
                testing.discard(d)
    return {d: (next((x.threshold for x in reversed(tests[d]) if x.rejected), None), tests[d]) for d in deltas}
