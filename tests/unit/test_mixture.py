"""Gate maths: every way of combining experts must yield a distribution."""

import numpy as np
import pytest

from hmoe.gates import GateInput
from hmoe.mixture import (
    Outputs,
    branch_probs,
    combine,
    embed,
    ensemble,
    one_hot,
    route_weights,
)


def _dist(rng, n, k):
    z = rng.random((n, k)).astype(np.float32) + 1e-3
    return z / z.sum(axis=1, keepdims=True)


@pytest.fixture
def parts():
    rng = np.random.default_rng(0)
    n, c = 64, 10
    groups = [(0, 1, 8, 9), (2, 3, 4, 5, 6, 7)]
    base = _dist(rng, n, c)
    specs = [embed(_dist(rng, n, len(ids)), ids, c) for ids in groups]
    gate_ws = [_dist(rng, n, 2) for _ in groups]
    router = _dist(rng, n, len(groups))
    return router, base, specs, gate_ws, groups


def test_embed_places_probabilities_on_group_classes():
    s = np.array([[0.25, 0.75]], dtype=np.float32)
    out = embed(s, (3, 7), 10)
    assert out.shape == (1, 10)
    assert out[0, 3] == 0.25 and out[0, 7] == 0.75 and out.sum() == 1.0


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_mixture_rows_sum_to_one(parts, routing):
    router, base, specs, gate_ws, _ = parts
    p = combine(route_weights(router, routing), gate_ws, base, specs)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()


def test_hard_routing_uses_only_the_chosen_branch(parts):
    router, base, specs, gate_ws, _ = parts
    p = combine(route_weights(router, "hard"), gate_ws, base, specs)
    chosen = router.argmax(axis=1)
    for i in range(len(p)):
        g = chosen[i]
        expected = branch_probs(gate_ws[g][i : i + 1], base[i : i + 1], specs[g][i : i + 1])
        np.testing.assert_allclose(p[i], expected[0], rtol=1e-6)


def test_soft_routing_is_router_weighted_sum(parts):
    router, base, specs, gate_ws, _ = parts
    p = combine(route_weights(router, "soft"), gate_ws, base, specs)
    manual = sum(router[:, g : g + 1] * branch_probs(gate_ws[g], base, specs[g]) for g in (0, 1))
    np.testing.assert_allclose(p, manual, rtol=1e-5)


def test_gate_weight_extremes_select_an_expert(parts):
    _, base, specs, _, _ = parts
    all_base = np.tile([[1.0, 0.0]], (len(base), 1)).astype(np.float32)
    all_spec = np.tile([[0.0, 1.0]], (len(base), 1)).astype(np.float32)
    np.testing.assert_allclose(branch_probs(all_base, base, specs[0]), base)
    np.testing.assert_allclose(branch_probs(all_spec, base, specs[0]), specs[0])


def test_ensemble_is_a_distribution(parts):
    _, base, specs, _, _ = parts
    e = ensemble(base, specs)
    np.testing.assert_allclose(e.sum(axis=1), 1.0, atol=1e-5)
    # base weighs 1/2 of the mass; each specialist's mass stays on its own group
    expected = (base[:, [0, 1, 8, 9]].sum(1) + 1) / 3
    np.testing.assert_allclose(e[:, [0, 1, 8, 9]].sum(1), expected, rtol=1e-5)


def test_oracle_route_is_one_hot_of_true_group():
    r = one_hot(np.array([1, 0, 1]), 2)
    assert r.tolist() == [[0, 1], [1, 0], [0, 1]]


def test_unknown_routing_is_rejected(parts):
    with pytest.raises(ValueError, match="routing"):
        route_weights(parts[0], "fuzzy")


def test_outputs_for_gate_concatenate_base_and_specialist(parts):
    router, base, specs, _, _ = parts
    out = Outputs(router=router, base=base, specs=tuple(specs))
    gi = out.for_gate(1, GateInput("probs"))
    assert gi.shape == (len(base), 20)
    np.testing.assert_array_equal(gi[:, :10], base)
    np.testing.assert_array_equal(gi[:, 10:], specs[1])
    with pytest.raises(ValueError, match="needs the base features"):
        out.for_gate(1, GateInput("features"))
