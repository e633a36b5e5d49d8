"""The hierarchy's options: auto groups, specialist width and dustbin, what gates see,
and the two-network control (params, pure maths and the assembled mixture).
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from hmoe import grouping
from hmoe.controls import control_predictions, paired_metrics
from hmoe.mixture import Mixture, Outputs, combine, embed
from hmoe.nets import build_classifier, build_gate, build_gate_trainer, fit_whitening
from hmoe.nodes import network_arch, specialist_outputs, specialist_subset
from hmoe.params import ParamsError, flatten, parse_groups, parse_params
from tests.unit.test_nets import ARCH, GROUPS

NOT_CAT = [c for c in GROUPS.classes if c != "cat"]


def test_auto_groups_parse_and_log(raw_params):
    raw_params["groups"] = "auto"
    raw_params["grouping"]["count"] = 4
    p = parse_params(raw_params)
    assert p.groups is None
    assert p.grouping.count == 4
    assert flatten(p)["groups"] == "auto"


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["grouping"].update(count=1), "`grouping.count`"),
        (lambda r: r["grouping"].update(count=6), "`grouping.count`"),
        (lambda r: r["specialists"].update(width=32), "`specialists.width`"),
        (lambda r: r["specialists"].update(dustbin=1.5), "`specialists.dustbin`"),
        (lambda r: r["gates"].update(inputs="pixels"), "`gates.inputs`"),
        (lambda r: r["gates"].update(fit_on="test"), "`gates.fit_on`"),
        (lambda r: r["controls"].update(second_base="yes"), "`controls.second_base`"),
        (lambda r: r.update(groups="automatic"), "`groups`"),
        (lambda r: r.update(groups={"cats": ["cat"], "rest": NOT_CAT}), "one class"),
    ],
)
def test_bad_hierarchy_options_are_named(raw_params, mutate, needle):
    mutate(raw_params)
    with pytest.raises(ParamsError, match=needle):
        parse_params(raw_params)


def test_scratch_specialists_may_have_their_own_width(raw_params):
    raw_params["specialists"].update(init_from_base=False, width=32)
    p = parse_params(raw_params)
    assert network_arch(p.net, p.specialists).width == 32
    assert network_arch(p.net, p.base).width == p.net.width


def test_dustbin_subset_adds_a_share_of_other_groups_labelled_k():
    y = np.repeat(np.arange(10), 20)
    x = np.arange(len(y))[:, None]
    ids = (0, 1, 8, 9)
    xs, ys = specialist_subset(x, y, ids, dustbin=0.5, seed=3)
    assert (ys < 4).sum() == 80 and (ys == 4).sum() == 40
    assert set(y[xs[ys == 4, 0]]) <= {2, 3, 4, 5, 6, 7}
    np.testing.assert_array_equal(ys[ys < 4], np.searchsorted(ids, y[xs[ys < 4, 0]]))
    plain = specialist_subset(x, y, ids)
    assert len(plain[0]) == 80 and plain[1].max() == 3
    assert specialist_outputs(ids, 0.5) == 5 and specialist_outputs(ids, 0.0) == 4


def test_embed_drops_and_renormalises_the_dustbin():
    probs = np.array([[0.2, 0.2, 0.6], [0.5, 0.5, 0.0]], np.float32)
    out = embed(probs, (3, 7), 10)
    np.testing.assert_allclose(out[:, [3, 7]], [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="outputs for a group of 2"):
        embed(np.ones((1, 5), np.float32) / 5, (3, 7), 10)


def _net(n: int) -> keras.Model:
    model = build_classifier(n, ARCH)
    fit_whitening(model, np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), np.uint8))
    return model


@pytest.mark.parametrize("mode", ["features", "both"])
@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_gates_that_see_features_give_the_same_routed_and_dense_mixture(mode, routing):
    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    n_features = 2 * ARCH.width
    n_in = n_features + (20 if mode == "both" else 0)
    mix = Mixture(
        router=_net(2),
        base=_net(10),
        specialists={"a": _net(5), "b": _net(6)},  # "a" has a dustbin output
        gates={"a": build_gate(n_in, hidden=4), "b": build_gate(n_in, hidden=4)},
        groups=GROUPS,
        routing=routing,
        tta=1,
        gate_inputs=mode,
    )
    out = mix.outputs(images)
    assert out.features.shape == (6, n_features)
    assert out.gate_inputs(0, mode).shape == (6, n_in)
    details = mix.predict_details(images)
    np.testing.assert_allclose(details.probs, mix.predict_dense(images), atol=1e-5)
    np.testing.assert_allclose(details.probs.sum(axis=1), 1.0, atol=1e-5)


def test_gate_trainer_with_features_matches_numpy_mixture():
    rng = np.random.default_rng(0)
    n, c, f = 8, 10, 6
    gates = [build_gate(2 * c + f, hidden=4, name=f"g{g}") for g in range(2)]
    trainer = build_gate_trainer(gates, c, "both", f)
    route = rng.dirichlet(np.ones(2), n).astype(np.float32)
    base = rng.dirichlet(np.ones(c), n).astype(np.float32)
    specs = rng.dirichlet(np.ones(c), (n, 2)).astype(np.float32)
    feats = rng.normal(size=(n, f)).astype(np.float32)
    got = np.asarray(trainer.predict([route, base, specs, feats], verbose=0))
    out = Outputs(router=route, base=base, specs=(specs[:, 0], specs[:, 1]), features=feats)
    ws = [np.asarray(g.predict(out.gate_inputs(i, "both"), verbose=0)) for i, g in enumerate(gates)]
    np.testing.assert_allclose(got, combine(route, ws, base, list(out.specs)), atol=1e-5)


def test_merge_singletons_moves_a_lone_class_to_its_closest_group():
    affinity = np.full((5, 5), 0.01)
    affinity[4, 2] = affinity[2, 4] = 0.5
    labels = grouping.merge_singletons(np.array([0, 0, 1, 1, 2]), affinity, list("abcde"))
    assert labels.tolist() == [0, 0, 1, 1, 1]


def test_groups_file_round_trip_and_bad_file(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(grouping.groups_record(GROUPS, "params")))
    assert grouping.load_groups(path) == parse_groups(
        {"a": list(GROUPS.members[0]), "b": list(GROUPS.members[1])}
    )
    path.write_text(json.dumps({"groups": {"a": ["cat"]}}))
    with pytest.raises(ValueError, match="rerun `dvc repro groups`"):
        grouping.load_groups(path)
    with pytest.raises(FileNotFoundError, match="dvc repro groups"):
        grouping.load_groups(tmp_path / "missing.json")


def test_two_bases_control_is_a_fair_control():
    rng = np.random.default_rng(0)
    n, c = 200, 10
    y = rng.integers(0, c, n)
    base = rng.dirichlet(np.ones(c), n).astype(np.float32)
    good = np.eye(c, dtype=np.float32)[y] * 0.9 + 0.01
    out = Outputs(
        router=rng.dirichlet(np.ones(2), n).astype(np.float32),
        base=base,
        specs=(
            embed(rng.dirichlet(np.ones(4), n), (0, 1, 8, 9), c),
            embed(rng.dirichlet(np.ones(6), n), (2, 3, 4, 5, 6, 7), c),
        ),
    )
    controls = control_predictions(out, "hard", base, two_bases=good)
    assert "two_bases" in controls
    stats = paired_metrics(np.argmax(base, axis=1), controls, y)
    assert stats["best_control"] == "two_bases"
    assert stats["vs_best_control_diff"] < 0
