"""The fair controls are distributions built from the same outputs as the mixture."""

import numpy as np
import pytest

from hmoe.controls import control_predictions, equal_gates, paired_metrics, product
from hmoe.mixture import Outputs, embed


@pytest.fixture
def out():
    rng = np.random.default_rng(0)
    n = 50

    def dist(k):
        z = rng.random((n, k)) + 1e-3
        return (z / z.sum(1, keepdims=True)).astype(np.float32)

    specs = (embed(dist(4), (0, 1, 8, 9), 10), embed(dist(6), (2, 3, 4, 5, 6, 7), 10))
    return Outputs(router=dist(2), base=dist(10), specs=specs)


def test_product_and_equal_gates_are_distributions(out):
    for p in (product(out), equal_gates(out, "hard"), equal_gates(out, "soft")):
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_equal_gates_hard_is_half_base_half_chosen_specialist(out):
    g = out.router.argmax(1)
    expected = 0.5 * out.base + 0.5 * np.where(g[:, None] == 0, out.specs[0], out.specs[1])
    np.testing.assert_allclose(equal_gates(out, "hard"), expected, atol=1e-6)


def test_paired_metrics_picks_the_best_fair_control(out):
    y = np.arange(50) % 10
    controls = control_predictions(out, "hard", out.base)
    controls["product"] = y.copy()  # a perfect control must be the best one
    m = paired_metrics(y, controls, y)
    assert m["best_control"] == "product"
    assert m["vs_best_control_diff"] == 0.0
    assert m["vs_base_diff"] == pytest.approx(1.0 - np.mean(controls["base"] == y))
    assert m["vs_base_ci_low"] <= m["vs_base_diff"] <= m["vs_base_ci_high"]
