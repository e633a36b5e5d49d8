"""Paired statistics on hand-computed cases."""

import numpy as np
import pytest

from hmoe.stats import compare, mcnemar_exact, paired_bootstrap, seed_image_bootstrap


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


def test_seed_image_bootstrap_spans_the_seeds_when_images_agree():
    """Two seeds whose every image gives the same difference (0 and 1): drawing images
    changes nothing, drawing the seeds gives 0, 1/2 or 1, so the 95 % interval is 0 .. 1."""
    d = np.stack([np.zeros(100), np.ones(100)])
    assert seed_image_bootstrap(d, n_boot=2000) == pytest.approx((0.0, 1.0))
    assert seed_image_bootstrap(np.zeros((3, 50))) == (0.0, 0.0)


def test_seed_image_bootstrap_adds_the_images_sampling():
    """Seeds that agree exactly (a t-interval over seeds of width 0) still get the test
    images' sampling: one seed's interval is the paired bootstrap over images, about
    ±1.96 sd/sqrt(n), and it stays so however many identical seeds are added."""
    rng = np.random.default_rng(3)
    row = rng.choice([-1.0, 0.0, 1.0], size=4000, p=[0.1, 0.8, 0.1])
    half = 1.96 * row.std() / np.sqrt(row.size)
    for seeds in (1, 4):
        lo, hi = seed_image_bootstrap(np.tile(row, (seeds, 1)), n_boot=2000)
        assert (lo, hi) == pytest.approx((row.mean() - half, row.mean() + half), abs=1.5e-3)
