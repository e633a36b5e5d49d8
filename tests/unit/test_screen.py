"""The specialist screen's figures (hmoe.findings.screen) on arrays with known answers."""

import numpy as np
import pytest

from hmoe.evidence import SplitEvidence
from hmoe.findings.screen import design_row, error_correlation, in_group_correct


def test_in_group_scoring_asks_only_about_the_group_s_classes():
    y = np.array([0, 1, 2, 0])
    # image 0: the best class overall is 2 (outside the group), within {0, 1} it is 0
    probs = np.array(
        [[0.3, 0.1, 0.6], [0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]], dtype=np.float32
    )
    correct = in_group_correct(probs, y, [0, 1])
    assert correct.tolist() == [True, False, False]  # image 2 is not in the group


def test_error_correlation_is_one_for_the_same_errors_and_nan_without_any():
    a = np.array([True, False, True, False])
    assert error_correlation(a, a) == pytest.approx(1.0)
    assert error_correlation(a, ~a) == pytest.approx(-1.0)
    assert np.isnan(error_correlation(np.ones(4, bool), a))


def test_a_specialist_that_is_right_where_the_base_is_wrong_shows_a_positive_condition():
    n, c = 40, 4
    y = np.tile(np.arange(c), n // c)
    onehot = np.eye(c, dtype=np.float32)
    base = onehot[y].copy()
    base[y == 0] = [0.2, 0.8, 0.0, 0.0]  # the base gets every class-0 image wrong
    spec_a = onehot[y] * np.isin(y, [0, 1])[:, None]  # group a = {0, 1}, always right
    spec_b = onehot[y] * np.isin(y, [2, 3])[:, None]
    ev = SplitEvidence(
        y=y,
        base=base,
        specialists=(spec_a, spec_b),
        router=np.isin(y, [2, 3]).astype(np.float32)[:, None] * [0, 1] + [1, 0] * (y < 2)[:, None],
        router_net=None,
        gates=(np.full(n, 0.5, np.float32), np.full(n, 0.5, np.float32)),
        second_base=base,
    )
    cost = {
        "specialists": {
            g: {"train_gmacs": 1.0, "inference_mmacs_trunk_shared": 2.0, "epochs_run": 3}
            for g in ("a", "b")
        },
        "base": {"train_gmacs": 4.0, "inference_mmacs": 5.0},
        "params": {"specialists.start": "branch", "gates.kind": "fixed"},
    }
    row = design_row(("d", 1), ev, {"a": [0, 1], "b": [2, 3]}, cost)
    assert row["a_specialist"] == 1.0 and row["a_base"] == 0.5
    assert row["a_diff"] == pytest.approx(0.5) and row["a_diff_low"] > 0
    assert row["b_diff"] == 0.0
    assert row["val_base"] == 0.75
    assert row["val_mixture_fixed_gates"] == 1.0  # the sure specialist outweighs the base
    assert (row["train_gmacs_specialists"], row["inference_mmacs_specialists"]) == (2.0, 4.0)
