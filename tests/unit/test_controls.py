"""The fair controls are distributions built from the same outputs as the mixture."""

import numpy as np
import pytest

from hmoe.controls import (
    FAIR_CONTROLS,
    ORACLE_CONTROL,
    ROUTED,
    all_probs,
    equal_gates,
    product,
)
from hmoe.mixture import Outputs, combine, embed, one_hot, route_weights
from hmoe.steps.evaluate import paired_metrics


def _dist(rng, n, k):
    z = rng.random((n, k)) + 1e-3
    return (z / z.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture
def out():
    rng = np.random.default_rng(0)
    n = 50
    specs = (
        embed(_dist(rng, n, 4), (0, 1, 8, 9), 10),
        embed(_dist(rng, n, 6), (2, 3, 4, 5, 6, 7), 10),
    )
    return Outputs(router=_dist(rng, n, 2), base=_dist(rng, n, 10), specs=specs)


@pytest.fixture
def weights(out):
    rng = np.random.default_rng(1)
    return [_dist(rng, len(out.base), 2) for _ in out.specs]


def test_product_and_equal_gates_are_distributions(out):
    for p in (product(out), equal_gates(out, "hard"), equal_gates(out, "soft")):
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_equal_gates_hard_is_half_base_half_chosen_specialist(out):
    g = out.router.argmax(1)
    expected = 0.5 * out.base + 0.5 * np.where(g[:, None] == 0, out.specs[0], out.specs[1])
    np.testing.assert_allclose(equal_gates(out, "hard"), expected, atol=1e-6)


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_all_probs_are_the_routed_mixtures_and_every_fair_control(out, weights, routing):
    true_group = np.arange(len(out.base)) % 2
    second = _dist(np.random.default_rng(2), len(out.base), 10)
    probs = all_probs(out, weights, true_group, routing, second)
    assert set(probs) == set(ROUTED) | set(FAIR_CONTROLS)
    for name, p in probs.items():
        assert p.shape == out.base.shape, name
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5, err_msg=name)
    for r in ("hard", "soft"):
        expected = combine(route_weights(out.router, r), weights, out.base, out.specs)
        np.testing.assert_allclose(probs[r], expected, atol=1e-6)
    oracle = combine(one_hot(true_group, 2), weights, out.base, out.specs)
    np.testing.assert_allclose(probs["oracle"], oracle, atol=1e-6)
    np.testing.assert_array_equal(probs["base"], out.base)
    np.testing.assert_allclose(probs["product"], product(out), atol=1e-6)
    np.testing.assert_allclose(probs["equal_gates"], equal_gates(out, routing), atol=1e-6)
    np.testing.assert_allclose(probs["two_bases"], (out.base + second) / 2, atol=1e-6)
    assert "two_bases" not in all_probs(out, weights, true_group, routing)


def test_the_oracles_control_is_two_bases_told_the_true_group(out, weights):
    """Given each class's group, two bases keep only the true group's classes, each row
    renormalised; the control is never a fair one (it needs the labels)."""
    true_group = np.arange(len(out.base)) % 2
    second = _dist(np.random.default_rng(2), len(out.base), 10)
    of_class = (0, 0, 1, 1, 1, 1, 1, 1, 0, 0)
    probs = all_probs(out, weights, true_group, "soft", second, of_class)
    told = probs[ORACLE_CONTROL]
    two = (out.base + second) / 2
    artificial = [0, 1, 8, 9]
    expected = two[0, artificial] / two[0, artificial].sum()  # image 0: group 0
    np.testing.assert_allclose(told[0, artificial], expected, atol=1e-6)
    assert told[0, 2:8].sum() == 0.0
    assert told[1, artificial].sum() == 0.0  # image 1: group 1
    np.testing.assert_allclose(told.sum(axis=1), 1.0, atol=1e-5)
    assert ORACLE_CONTROL not in FAIR_CONTROLS
    assert ORACLE_CONTROL not in all_probs(out, weights, true_group, "soft", None, of_class)


def test_paired_metrics_picks_the_best_fair_control(out, weights):
    y = np.arange(50) % 10
    probs = all_probs(out, weights, np.arange(50) % 2, "hard")
    labels = {k: np.argmax(p, axis=1) for k, p in probs.items()}
    labels["mixture"] = y.copy()  # a perfect mixture
    labels["product"] = y.copy()  # a perfect control must be the best one
    labels["oracle"] = y.copy()  # not a fair control: never the best one
    m, best = paired_metrics(labels, y)
    assert best == "product"
    assert m["vs_best_control_diff"] == 0.0
    assert m["vs_base_diff"] == pytest.approx(1.0 - np.mean(labels["base"] == y))
    assert m["vs_base_ci_low"] <= m["vs_base_diff"] <= m["vs_base_ci_high"]
    assert m["product_control_accuracy"] == 1.0
    assert "base_control_accuracy" not in m and "ensemble_control_accuracy" not in m
