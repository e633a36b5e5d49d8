"""Issue 17's levers and accounting: the router fused with the base's group marginal,
the routing metrics and the multiply-add costs (tiny networks, pure maths)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from hmoe.costs import multiply_adds
from hmoe.gates import GateInput, build_gate
from hmoe.layers import fit_whitening
from hmoe.mixture import Mixture, fuse_routes, group_marginal
from hmoe.params import ParamsError, parse_params
from hmoe.recipe import build_classifier, build_network
from hmoe.steps.evaluate import evaluate, inference_cost
from tests.unit.test_recipe import ARCH, GROUPS


def _dist(rng, n, k):
    z = rng.random((n, k)).astype(np.float32) + 1e-3
    return z / z.sum(axis=1, keepdims=True)


def test_group_marginal_sums_the_base_over_each_group():
    base = _dist(np.random.default_rng(0), 5, 10)
    m = group_marginal(base, GROUPS)
    for g, name in enumerate(GROUPS.names):
        np.testing.assert_allclose(m[:, g], base[:, list(GROUPS.class_ids(name))].sum(axis=1))
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("fusion", ["none", "product"])
def test_fused_routes_are_distributions(fusion):
    rng = np.random.default_rng(1)
    r, m = _dist(rng, 8, 2), _dist(rng, 8, 2)
    fused = fuse_routes(r, m, fusion)
    np.testing.assert_allclose(fused.sum(axis=1), 1.0, atol=1e-6)
    if fusion == "product":
        np.testing.assert_allclose(fused, r * m / (r * m).sum(axis=1, keepdims=True), rtol=1e-6)


def test_product_fusion_lets_a_confident_base_overrule_a_hesitant_router():
    router = np.array([[0.55, 0.45]], np.float32)  # leans to group 0
    marginal = np.array([[0.05, 0.95]], np.float32)  # the base is sure of group 1
    assert fuse_routes(router, marginal, "product").argmax() == 1
    assert fuse_routes(router, marginal, "none").argmax() == 0


def test_unknown_fusion_is_a_params_error(raw_params):
    raw_params["mixture"]["router_fusion"] = "max"
    with pytest.raises(ParamsError, match="router_fusion"):
        parse_params(raw_params)


def _net(n):
    model = build_classifier(n, ARCH)
    fit_whitening(model, np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), np.uint8))
    return model


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_fused_mixture_is_the_same_routed_and_dense_and_reports_routing(routing):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 12)
    mix = Mixture(
        router=_net(2), base=_net(10), specialists={"a": _net(4), "b": _net(6)},
        gates={"a": build_gate(20, hidden=4), "b": build_gate(20, hidden=4)},
        groups=GROUPS, routing=routing, tta=1, router_fusion="product",
    )  # fmt: skip
    out = mix.outputs(images)
    expected = fuse_routes(out.router_net, group_marginal(out.base, GROUPS), "product")
    np.testing.assert_allclose(out.router, expected, rtol=1e-6)
    details = mix.predict_details(images)
    np.testing.assert_allclose(details.probs, mix.predict_dense(images), atol=1e-5)
    m = evaluate(mix, (images, y)).metrics
    assert m["routing_loss"] == pytest.approx(m["oracle_accuracy"] - m["hard_accuracy"])
    assert 0 <= m["router_net_accuracy"] <= 1 and 0 <= m["base_group_accuracy"] <= 1
    assert m["cost_inference_mmacs_soft"] > m["cost_inference_mmacs_hard"] > 0
    assert m["cost_inference_mmacs_two_bases"] == pytest.approx(2 * m["cost_inference_mmacs_base"])


def test_multiply_adds_counts_convolutions_and_dense_layers():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(10, use_bias=False)(x)
    model = keras.Model(inputs, outputs)
    assert multiply_adds(model) == 8 * 8 * 3 * 3 * 3 * 4 + 4 * 10
    # the default network at width 64: about 54 M multiply-adds per image (recipe.build_classifier)
    from hmoe.params import load_params
    from tests.conftest import ROOT

    full = build_classifier(10, load_params(ROOT / "params.yaml").net)
    assert 40e6 < multiply_adds(full) < 70e6


@pytest.mark.parametrize("inputs", ["probs", "both"])
def test_a_router_head_on_the_frozen_base_trunk_shares_its_pass(raw_params, inputs):
    """The default router is the base's trunk plus a head: the mixture runs that trunk
    once for both, with the outputs of running them apart.
    """
    p = parse_params(raw_params)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    arch = dataclasses.replace(p.net, width=4)
    base = build_network(10, arch, p.base, seed=0, name="base", whitening_images=images)
    head = build_network(2, arch, p.router, seed=1, name="router", init=base)
    apart = build_network(2, arch, p.router, seed=1, name="router", init=base)
    changed = next(layer for layer in apart.layers if layer.get_weights())
    changed.set_weights([w + 1e-3 for w in changed.get_weights()])  # any difference: apart
    specs = {"a": _net(4), "b": _net(6)}
    gate_in = GateInput(inputs).size(10, base.get_layer("features").output.shape[-1])
    gates = {"a": build_gate(gate_in, hidden=4), "b": build_gate(gate_in, hidden=4)}
    kw = {"specialists": specs, "gates": gates, "groups": GROUPS, "tta": 2, "routing": "hard"}
    kw["router_fusion"] = "none"
    kw["gate_input"] = GateInput(inputs)
    shared = Mixture(router=head, base=base, **kw)
    out = shared.outputs(images)
    assert shared.shared_router_head() is not None
    assert Mixture(router=apart, base=base, **kw).shared_router_head() is None
    np.testing.assert_allclose(out.router_net, shared.predict_network(head, images), atol=1e-6)
    np.testing.assert_allclose(out.base, shared.predict_network(base, images), atol=1e-6)
    np.testing.assert_allclose(out.router.sum(axis=1), 1.0, atol=1e-5)
    routed = shared.predict_details(images).probs
    np.testing.assert_allclose(routed, shared.predict_dense(images), atol=1e-5)
    cost = inference_cost(shared)  # the shared trunk is paid once: the router costs its head
    assert multiply_adds(shared.shared_router_head()) == 8 * 2  # 2 x width features, 2 groups
    views, spec = 6, max(multiply_adds(s) for s in specs.values())
    expected = views * (8 * 2 + multiply_adds(base) + spec) / 1e6
    assert cost["cost_inference_mmacs_hard"] == pytest.approx(expected)
