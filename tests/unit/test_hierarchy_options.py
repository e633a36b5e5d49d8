"""The hierarchy's options: learned groups, the specialists' dustbin, what gates see,
and the two-network control (params, pure maths and the assembled mixture).
"""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest

from hmoe import grouping
from hmoe.controls import all_probs
from hmoe.edge.start import StageError, groups_from
from hmoe.edge.store import FileStore
from hmoe.gates import GateInput, build_gate, build_gate_trainer
from hmoe.groups import Groups, GroupsError
from hmoe.layers import fit_whitening
from hmoe.mixture import Mixture, Outputs, combine, embed
from hmoe.params import ParamsError, flatten, load_params, parse_groups, parse_params
from hmoe.recipe import build_classifier
from hmoe.steps.evaluate import paired_metrics
from hmoe.steps.experts import specialist_outputs, specialist_subset
from hmoe.steps.groups import learn_groups
from tests.conftest import ROOT
from tests.unit.test_recipe import ARCH, GROUPS

NOT_CAT = [c for c in GROUPS.classes if c != "cat"]


def test_learned_groups_parse_and_log(raw_params):
    raw_params["groups"] = 4
    p = parse_params(raw_params)
    assert p.learned_groups == 4
    assert flatten(p)["groups"] == 4


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r.update(groups=1), "`groups`"),
        (lambda r: r.update(groups=6), "`groups`"),
        (lambda r: r.update(groups="auto"), "`groups: N`"),
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
        router_fusion="none",
        tta=1,
        gate_input=GateInput(mode),
    )
    out = mix.outputs(images)
    assert out.features.shape == (6, n_features)
    assert out.for_gate(0, GateInput(mode)).shape == (6, n_in)
    details = mix.predict_details(images)
    np.testing.assert_allclose(details.probs, mix.predict_dense(images), atol=1e-5)
    np.testing.assert_allclose(details.probs.sum(axis=1), 1.0, atol=1e-5)


def test_gate_trainer_with_features_matches_numpy_mixture():
    rng = np.random.default_rng(0)
    n, c, f = 8, 10, 6
    gates = [build_gate(2 * c + f, hidden=4, name=f"g{g}") for g in range(2)]
    seen = GateInput("both")
    trainer = build_gate_trainer(gates, c, seen, f)
    route = rng.dirichlet(np.ones(2), n).astype(np.float32)
    base = rng.dirichlet(np.ones(c), n).astype(np.float32)
    specs = rng.dirichlet(np.ones(c), (n, 2)).astype(np.float32)
    feats = rng.normal(size=(n, f)).astype(np.float32)
    got = np.asarray(trainer.predict([route, base, specs, feats], verbose=0))
    out = Outputs(router=route, base=base, specs=(specs[:, 0], specs[:, 1]), features=feats)
    ws = [np.asarray(g.predict(out.for_gate(i, seen), verbose=0)) for i, g in enumerate(gates)]
    np.testing.assert_allclose(got, combine(route, ws, base, list(out.specs)), atol=1e-5)


def test_merge_singletons_moves_a_lone_class_to_its_closest_group():
    affinity = np.full((5, 5), 0.01)
    affinity[4, 2] = affinity[2, 4] = 0.5
    labels = grouping.merge_singletons(np.array([0, 0, 1, 1, 2]), affinity, list("abcde"))
    assert labels.tolist() == [0, 0, 1, 1, 1]


def test_groups_file_round_trip_and_bad_file(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"source": "params", "groups": GROUPS.to_dict()}))
    assert read_groups(path) == parse_groups(
        {"a": list(GROUPS.members[0]), "b": list(GROUPS.members[1])}
    )
    path.write_text(json.dumps({"groups": {"a": ["cat"]}}))
    with pytest.raises(StageError, match="rerun `dvc repro groups`"):
        read_groups(path)
    path.write_text(json.dumps({"source": "params"}))
    with pytest.raises(StageError, match="rerun `dvc repro groups`"):
        read_groups(path)
    with pytest.raises(FileNotFoundError, match="missing: run `dvc repro`"):
        read_groups(tmp_path / "missing.json")


def read_groups(path):
    """The partition in a groups file, as every stage after `groups` reads it."""
    return groups_from(FileStore().read(path), path)


def test_explicit_groups_record_round_trips_through_the_groups_file(tmp_path):
    params = load_params(ROOT / "params.yaml")
    groups, record = learn_groups(params)
    assert groups == params.groups
    assert record == {"source": "params", "groups": params.groups.to_dict()}
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(record))
    assert read_groups(path) == params.groups
    auto = dataclasses.replace(params, groups=3)
    with pytest.raises(ValueError, match="needs the trained base"):
        learn_groups(auto)


def test_groups_dict_round_trip_labels_and_errors():
    raw = {"b": list(GROUPS.members[1]), "a": list(GROUPS.members[0])}
    groups = Groups.from_dict(raw)
    assert groups.names == ("b", "a")  # the order given
    assert groups.to_dict() == raw
    assert Groups.from_dict(groups.to_dict()) == groups
    y = np.arange(10)
    np.testing.assert_array_equal(groups.labels(y), [1, 1, 0, 0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(groups.labels(np.array([3, 8, 3])), [0, 1, 0])
    assert groups.labels(y).dtype == np.int64
    with pytest.raises(GroupsError, match="unknown group"):
        groups.class_ids("c")
    with pytest.raises(ValueError, match="one class"):  # GroupsError is a ValueError
        Groups.from_dict({"cats": ["cat"], "rest": NOT_CAT})
    with pytest.raises(ParamsError, match="one class"):
        parse_groups({"cats": ["cat"], "rest": NOT_CAT})


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
    n_groups = out.router.shape[1]
    weights = [np.full((n, 2), 0.5, np.float32)] * n_groups
    true_group = rng.integers(0, n_groups, n)
    without = all_probs(out, weights, true_group, "hard")
    assert "two_bases" not in without
    probs = all_probs(out, weights, true_group, "hard", second_base=good)
    np.testing.assert_allclose(probs["two_bases"], (base + good) / 2)
    labels = {k: np.argmax(p, axis=1) for k, p in probs.items()}
    labels["mixture"] = np.argmax(base, axis=1)
    stats, best = paired_metrics(labels, y)
    assert best == "two_bases"
    assert stats["two_bases_control_accuracy"] == pytest.approx(np.mean(labels["two_bases"] == y))
    assert stats["vs_best_control_diff"] < 0
