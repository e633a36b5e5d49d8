"""Paired statistics on hand-computed cases."""

import numpy as np
import pytest

from hmoe.stats import compare, mcnemar_exact, paired_bootstrap


def test_mcnemar_exact_matches_hand_computed_binomial():
    # 1 vs 5 discordant pairs: p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * 7/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == pytest.approx(1.0)
    # 0 vs 10: 2 * 0.5**10
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_bootstrap_interval_of_identical_models_is_zero():
    a = np.array([1, 0, 1, 1, 0], dtype=bool)
    assert paired_bootstrap(a, a) == (0.0, 0.0)


def test_bootstrap_interval_covers_the_difference_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small_b = rng.random(200) < 0.8
    small_a = small_b | (rng.random(200) < 0.1)
    lo, hi = paired_bootstrap(small_a, small_b, seed=1)
    diff = small_a.mean() - small_b.mean()
    assert lo <= diff <= hi and lo > 0  # A is right wherever B is, and more
    big_b = rng.random(5000) < 0.8
    big_a = big_b | (rng.random(5000) < 0.1)
    lo2, hi2 = paired_bootstrap(big_a, big_b, seed=1)
    assert hi2 - lo2 < hi - lo


def test_compare_counts_discordant_pairs():
    y = np.array([0, 1, 2, 3, 4, 5])
    a = np.array([0, 1, 2, 3, 9, 9])  # 4 right
    b = np.array([0, 9, 9, 3, 4, 9])  # 3 right
    c = compare(a, b, y)
    assert (c.only_a, c.only_b) == (2, 1)
    assert c.diff == pytest.approx(1 / 6)
    assert c.mcnemar_p == pytest.approx(1.0)  # 2 vs 1 is no evidence
    m = c.as_metrics("mixture_vs_base")
    assert m["mixture_vs_base_only_a"] == 2.0 and "mixture_vs_base_ci_low" in m
