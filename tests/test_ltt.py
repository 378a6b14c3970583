"""Learn-then-Test: the p-values against hand-computed ones, the threshold fixed-sequence testing chooses on
synthetic risk curves, and its guarantee over many simulated calibration sets."""
import math

import numpy as np
import pytest

from workflow_lib.evaluation.ltt import binomial_p_value, hoeffding_bentkus_p_value, learn_then_test

GRID = [0.9, 0.8, 0.7, 0.6, 0.5]


def losses(ones: int, n: int = 100) -> list[int]:
    return [1] * ones + [0] * (n - ones)


def test_p_values_by_hand():
    assert binomial_p_value(losses(1), 0.05) == pytest.approx(0.95 ** 100 + 100 * 0.05 * 0.95 ** 99)
    assert binomial_p_value(losses(0, 59), 0.05) == pytest.approx(0.95 ** 59)  # < 0.05: 59 clean answers certify 5%
    # no loss at all: the Hoeffding term (1 - delta)^n beats the Bentkus term e (1 - delta)^n
    assert hoeffding_bentkus_p_value(losses(0), 0.05) == pytest.approx(0.95 ** 100)
    # bounded, non-binary losses: the mean (0.03) enters through KL and the Bentkus term at ceil(n * mean) = 3
    x = [0.5] * 6 + [0.0] * 94
    kl = 0.03 * math.log(0.03 / 0.05) + 0.97 * math.log(0.97 / 0.95)
    assert hoeffding_bentkus_p_value(x, 0.05) == pytest.approx(min(math.exp(-100 * kl), math.e * 0.2578), rel=1e-3)
    assert hoeffding_bentkus_p_value(losses(10), 0.05) == 1.0  # mean above delta: nothing to reject
    with pytest.raises(ValueError, match="0/1 losses"):
        binomial_p_value(x, 0.05)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binomial_p_value([2, 0], 0.05)


def test_chosen_threshold_on_a_synthetic_curve():
    ones = {0.9: 0, 0.8: 1, 0.7: 3, 0.6: 8, 0.5: 20}  # losses out of 100 at each threshold
    asked = []

    def losses_at(t):
        asked.append(t)
        return losses(ones[t])

    result = learn_then_test(GRID, losses_at, deltas=[0.05, 0.1], epsilon=0.05)
    # delta 0.05: p(0) = 0.006, p(1) = 0.037 pass; p(3) = 0.26 fails. delta 0.1: p(3) = 0.008 passes, p(8) = 0.32 fails
    assert result[0.05][0] == 0.8 and [t.threshold for t in result[0.05][1]] == [0.9, 0.8, 0.7]
    assert result[0.1][0] == 0.7 and [t.rejected for t in result[0.1][1]] == [True, True, True, False]
    assert asked == [0.9, 0.8, 0.7, 0.6]  # 0.5 is never decoded: both sequences stopped before it
    # the sequence stops at the first failure, even where a lower threshold would pass again
    ones.update({0.8: 6, 0.7: 0})
    assert learn_then_test(GRID, losses_at, [0.05], 0.05)[0.05][0] == 0.9
    ones[0.9] = 5  # the most conservative threshold already fails: nothing certified
    assert learn_then_test(GRID, losses_at, [0.05], 0.05)[0.05][0] is None


@pytest.mark.parametrize("bound", ["binomial", "hoeffding_bentkus"])
def test_guarantee_holds_over_simulated_calibration_sets(bound):
    """Risk curve with a threshold just above delta: over 2000 calibration sets of 100 questions, the chosen
    threshold's true risk exceeds delta in at most about epsilon of them; picking the lowest threshold whose
    empirical risk is <= delta, without the test, violates it far more often."""
    grid = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7]
    risk = dict(zip(grid, [0.01, 0.02, 0.035, 0.05, 0.055, 0.08]))  # 0.75 and 0.7 violate delta = 0.05
    delta, epsilon, n, sims = 0.05, 0.05, 100, 2000
    rng = np.random.default_rng(0)
    violations = naive_violations = 0
    for _ in range(sims):
        u = rng.random(n)  # one latent per question: a lower threshold never fixes an inconsistency
        chosen, _ = learn_then_test(grid, lambda t: (u < risk[t]).astype(float), [delta], epsilon, bound)[delta]
        violations += chosen is not None and risk[chosen] > delta
        naive = min((t for t in grid if (u < risk[t]).mean() <= delta), default=None)
        naive_violations += naive is not None and risk[naive] > delta
    assert violations / sims <= epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / sims)
    assert naive_violations / sims > 0.3
