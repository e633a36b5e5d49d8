"""Behaviour of trained models, cheap enough for every CI run (tiny images, tiny nets).

Each check can fail for a real defect: a recipe that cannot learn, or gates that
cannot tell a good expert from a bad one.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from hmoe.gates import GateInput
from hmoe.metrics import accuracy
from hmoe.mixture import Outputs, embed
from hmoe.params import load_params
from hmoe.recipe import build_network, fit_classifier
from hmoe.steps.experts import train_base
from hmoe.steps.gates import train_gates
from tests.conftest import ROOT
from tests.support.synthetic import make_images

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def test_base_recipe_learns_synthetic_classes_well_above_chance(params):
    keras.utils.set_random_seed(0)
    x, y = make_images(40, seed=0)
    xv, yv = make_images(10, seed=1)
    p = dataclasses.replace(
        params,
        net=dataclasses.replace(params.net, width=8),
        base=dataclasses.replace(params.base, epochs=4, batch_size=32),
    )
    trained = train_base(p, (x, y), (xv, yv))
    summary = trained.summary
    assert summary["val_accuracy"] > 0.5  # chance is 0.1
    assert summary["epochs_run"] == 4
    assert accuracy(trained.model.predict(xv, verbose=0), yv) == pytest.approx(
        summary["val_accuracy"]
    )  # the best val epoch's weights are the ones kept


def test_router_head_on_frozen_trunk_changes_only_the_head(params):
    keras.utils.set_random_seed(0)
    x, y = make_images(12, seed=0)
    arch = dataclasses.replace(params.net, width=4)
    base = build_network(10, arch, params.base, seed=0, name="base", whitening_images=x)
    cfg = dataclasses.replace(params.router, batch_size=32)
    router = build_network(2, arch, cfg, seed=0, name="router", init=base)
    before = {w.path: np.asarray(w).copy() for w in router.weights}
    groups = params.groups.labels(y)
    fit_classifier(router, (x, groups), (x, groups), cfg)
    after = {w.path: np.asarray(w) for w in router.weights}
    changed = {p for p, w in before.items() if not np.array_equal(w, after[p])}
    changed -= {p for p in changed if "seed_generator" in p}  # augmentation's RNG state
    assert changed == {router.get_layer("logits").kernel.path}


class _FrozenExperts:
    """Stands in for the mixture without gates: the 'images' are row indices into
    precomputed outputs, so train_gates runs on exactly these outputs."""

    def __init__(self, out: Outputs):
        self.out = out

    def outputs(self, idx: np.ndarray) -> Outputs:
        o = self.out
        return Outputs(router=o.router[idx], base=o.base[idx], specs=tuple(s[idx] for s in o.specs))


def test_gates_learn_to_trust_a_perfect_specialist_over_a_random_base(params):
    keras.utils.set_random_seed(0)
    groups = params.groups
    rng = np.random.default_rng(0)

    def outputs(n):
        y = rng.integers(0, 10, n)
        true_group = groups.labels(y)
        base = rng.dirichlet(np.ones(10), n).astype(np.float32)
        specs = []
        for g, name in enumerate(groups.names):
            ids = groups.class_ids(name)
            local = np.full((n, len(ids)), 1.0 / len(ids), dtype=np.float32)
            mine = true_group == g
            local[mine] = 0.0
            local[mine, [ids.index(c) for c in y[mine]]] = 1.0
            specs.append(embed(local, ids, 10))
        router = np.eye(len(groups.names), dtype=np.float32)[true_group]
        return Outputs(router=router, base=base, specs=tuple(specs)), y

    (fit_out, y_fit), (val_out, y_val) = outputs(2000), outputs(500)
    both = Outputs(
        router=np.concatenate([fit_out.router, val_out.router]),
        base=np.concatenate([fit_out.base, val_out.base]),
        specs=tuple(np.concatenate(s) for s in zip(fit_out.specs, val_out.specs, strict=True)),
    )
    cfg = dataclasses.replace(
        params.gates, kind="learned", epochs=30, patience=30, learning_rate=0.01, inputs="probs"
    )
    p = dataclasses.replace(
        params, gates=cfg, mixture=dataclasses.replace(params.mixture, routing="hard")
    )
    fit, val = (np.arange(2000), y_fit), (np.arange(2000, 2500), y_val)
    trained = train_gates(p, groups, _FrozenExperts(both), fit, val)
    assert len(trained.gates) == len(groups.names)
    np.testing.assert_array_equal(trained.val_outputs.base, val_out.base)
    out, y = outputs(500)
    for g, gate in enumerate(trained.gates):
        weights = np.asarray(gate.predict(out.for_gate(g, GateInput("probs")), verbose=0))
        assert weights[:, 1].mean() > 0.9, groups.names[g]
    assert trained.summary["val_accuracy"] > 0.95
    assert trained.summary["val_accuracy"] == trained.summary[f"val_{p.mixture.routing}_accuracy"]
    assert 0 <= trained.summary["val_soft_accuracy"] <= 1  # both routings, for the default
    assert accuracy(out.base, y) < 0.3  # the base really is useless here
