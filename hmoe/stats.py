"""Paired comparisons of two classifiers on the same test images.

A lift of a fraction of a point on 10,000 images can be noise. The statistics
here are paired: they use, image by image, whether each model was right, which
is far more sensitive than comparing two accuracies with separate intervals; and
across seeds (:func:`t_interval`), one difference per seed, so that what moves both
models together cancels out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats
from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same images."""

    diff: float  # accuracy(A) - accuracy(B)
    ci_low: float  # paired bootstrap 95 % interval of diff
    ci_high: float
    only_a: int  # images A gets right and B wrong
    only_b: int  # images B gets right and A wrong
    mcnemar_p: float  # exact (binomial) McNemar test, two-sided

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) for k, v in asdict(self).items()}


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: discordant pairs ~ Binomial(n, 1/2) under H0."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(binomtest(only_a, n, 0.5, alternative="two-sided").pvalue)


def paired_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of mean(correct_a - correct_b), resampling images in pairs."""
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 200):  # chunks keep memory flat for 10,000 images
        stop = min(n_boot, start + 200)
        idx = rng.integers(0, d.size, size=(stop - start, d.size))
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def compare(
    pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray, seed: int = 0
) -> PairedComparison:
    """Paired comparison of two label predictions against the truth ``y``."""
    a, b = np.asarray(pred_a) == y, np.asarray(pred_b) == y
    lo, hi = paired_bootstrap(a, b, seed=seed)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return PairedComparison(
        diff=float(a.mean() - b.mean()),
        ci_low=lo,
        ci_high=hi,
        only_a=only_a,
        only_b=only_b,
        mcnemar_p=mcnemar_exact(only_a, only_b),
    )


def t_interval(d: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, 95 % t-interval low, high, paired t-test p) of per-seed differences.

    The one implementation of the across-seeds statistic (the sweep's findings and
    :mod:`hmoe.summary` both call it), so that every table agrees. Non-finite
    differences are dropped; with fewer than two the interval and p are NaN, and with
    no spread at all p is NaN (the t statistic is undefined).
    """
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        mean = float(d.mean()) if len(d) else float("nan")
        return mean, float("nan"), float("nan"), float("nan")
    if d.std() == 0:  # scipy's interval is NaN with no spread: it is the point itself
        return float(d.mean()), float(d.mean()), float(d.mean()), float("nan")
    test = stats.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(0.95)
    return float(d.mean()), float(low), float(high), float(test.pvalue)


def seed_image_bootstrap(
    d: np.ndarray, *, n_boot: int = 10000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean paired difference over seeds *and* test images.

    ``d`` is (seeds, images): per seed, per test image, correct(A) - correct(B), every
    seed scored on the same test images. Each replicate draws the seeds with replacement
    and, once for all of them, the images with replacement, so the interval carries both
    the seed-to-seed spread and the sampling of the 10,000 test images, which
    :func:`t_interval` (the test set held fixed) leaves out. The pairs stay pairs: a
    drawn image brings every predictor's answer on it. With one seed it is the paired
    bootstrap over images.
    """
    d = np.asarray(d, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        return float("nan"), float("nan")
    n_seeds, n_images = d.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # chunks keep memory flat for 10,000 images
        stop = min(n_boot, start + 500)
        images = rng.integers(0, n_images, size=(stop - start, n_images))
        per_seed = np.stack([row[images].mean(axis=1) for row in d], axis=1)  # (chunk, seeds)
        drawn = rng.integers(0, n_seeds, size=(stop - start, n_seeds))
        means[start:stop] = np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
