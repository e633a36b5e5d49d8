"""The saved evidence (hmoe.evidence) and the cascades computed from it (hmoe.frontier,
hmoe.findings.cascades), on small synthetic probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hmoe.data.storage import atomic_write
from hmoe.evidence import SplitEvidence, embed, evidence_writer, load_evidence
from hmoe.findings import write_findings
from hmoe.findings.cascades import (
    budget_comparison,
    calibration_markdown,
    calibration_table,
    ece,
    fit_temperature,
    gate_table,
    oracle_table,
    scaled,
)
from hmoe.frontier import (
    Costs,
    Outcomes,
    cascade_correct,
    choose_tau,
    frontier,
    second_opinion,
)
from hmoe.oracle import given_group, group_of_class, oracle, true_group
from hmoe.stats import t_interval

IDS = {"artificial": [0, 1, 8, 9], "natural": [2, 3, 4, 5, 6, 7]}
COSTS = Costs(base=325.0, extra={"hard": 326.0, "soft": 651.0, "ensemble": 325.0})


def synthetic(n: int, seed: int) -> SplitEvidence:
    """Random but valid distributions: a base, a second base, two specialists over their
    own classes, a routing distribution and gate weights."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)

    def dist(k: int, sharp: float) -> np.ndarray:
        logits = rng.normal(size=(n, k)) * sharp
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    base, second = dist(10, 2.0), dist(10, 2.0)
    base[np.arange(n), y] += 0.6  # right more often than not
    base /= base.sum(axis=1, keepdims=True)
    specs = tuple(embed(dist(len(ids), 3.0), ids, 10) for ids in IDS.values())
    return SplitEvidence(
        y=y, base=base, specialists=specs, router=dist(2, 2.0), router_net=dist(2, 1.0),
        gates=tuple(rng.uniform(0.2, 0.8, n).astype(np.float32) for _ in IDS),
        second_base=second,
    )  # fmt: skip


def test_evidence_round_trips_in_float16(tmp_path):
    ev = {"val": synthetic(50, 0), "test": synthetic(80, 1)}
    atomic_write(tmp_path / "e.npz", evidence_writer(ev, IDS))
    back = load_evidence(tmp_path / "e.npz")
    assert set(back) == {"val", "test"}
    for split, e in ev.items():
        got = back[split]
        np.testing.assert_array_equal(got.y, e.y)
        np.testing.assert_allclose(got.base, e.base, atol=1e-3)
        for a, b in zip(got.specialists, e.specialists, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-3)  # embedded again, zeros elsewhere
        np.testing.assert_allclose(got.mixture("soft"), e.mixture("soft"), atol=2e-3)
        np.testing.assert_allclose(got.second_base, e.second_base, atol=1e-3)
    assert [f.name for f in tmp_path.iterdir()] == ["e.npz"]  # no temporary file left


def test_a_cascade_at_its_ends_is_the_base_and_the_full_second_opinion():
    e = synthetic(300, 2)
    base_right = np.argmax(e.base, axis=1) == e.y
    for cascade, routing in (("hard", "hard"), ("soft", "soft")):
        none, frac0 = cascade_correct(e, cascade, 0.0)
        assert frac0 == 0.0 and np.array_equal(none, base_right)
        full, frac1 = cascade_correct(e, cascade, np.inf)
        assert frac1 == 1.0
        assert np.array_equal(full, np.argmax(e.mixture(routing), axis=1) == e.y)
        np.testing.assert_allclose(second_opinion(e, cascade).sum(axis=1), 1.0, atol=1e-5)
    both, _ = cascade_correct(e, "ensemble", np.inf)
    assert np.array_equal(both, np.argmax(e.base + e.second_base, axis=1) == e.y)
    with pytest.raises(ValueError, match="cascade must be one of"):
        second_opinion(e, "mixture")


def test_the_soft_cascade_escalates_only_the_unsure_images_to_the_soft_mixture():
    """Three images with known answers: the base is sure and right on the first, unsure
    and wrong on the other two; the soft mixture is right on the second only."""
    base = np.array([[0.9, 0.1], [0.55, 0.45], [0.6, 0.4]], np.float32)
    spec = (np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32),)
    e = SplitEvidence(
        y=np.array([0, 1, 1]), base=base, specialists=spec, router=np.ones((3, 1), np.float32),
        router_net=None, gates=(np.full(3, 0.5, np.float32),), second_base=None,
    )  # fmt: skip
    correct, fraction = cascade_correct(e, "soft", 0.7)  # escalates images 2 and 3
    assert fraction == pytest.approx(2 / 3)
    assert correct.tolist() == [True, True, False]


def test_costs_from_a_row_price_each_cascade_and_skip_a_missing_one():
    row = {"cost_inference_mmacs_base": 325.0, "cost_inference_mmacs_hard": 651.0}
    row |= {"cost_inference_mmacs_soft": 976.0, "cost_inference_mmacs_two_bases": 650.0}
    assert Costs.from_row(row).extra == {"hard": 326.0, "soft": 651.0, "ensemble": 325.0}
    del row["cost_inference_mmacs_soft"]
    costs = Costs.from_row(row)
    assert set(costs.extra) == {"hard", "ensemble"}
    table = frontier(synthetic(100, 7), synthetic(100, 8), costs, [325.0, 651.0])
    assert set(table["cascade"]) == {"hard", "ensemble"}


def test_the_soft_cascade_escalates_half_as_many_images_for_its_double_cost():
    """The base is wrong on every image and both second opinions are right, so each
    cascade escalates all its budget pays for: at two bases' cost, every image to a
    second base (325 MMACs more) but only half of them to the soft mixture (651 more)."""
    n = 200
    y = np.zeros(n, dtype=int)
    conf = np.linspace(0.51, 0.99, n).astype(np.float32)  # distinct confidences
    base = np.stack([1 - conf, conf], axis=1)  # always wrong
    right = np.tile(np.array([[1.0, 0.0]], np.float32), (n, 1))
    e = SplitEvidence(
        y=y, base=base, specialists=(np.tile(np.array([[1.0, 0.0]], np.float32), (n, 1)),),
        router=np.ones((n, 1), np.float32), router_net=None,
        gates=(np.full(n, 0.9, np.float32),), second_base=right,
    )  # fmt: skip
    costs = Costs(base=325.0, extra={"soft": 651.0, "ensemble": 325.0})
    by = frontier(e, e, costs, [650.0]).set_index("cascade")
    assert by.loc["soft", "val_escalated"] == pytest.approx(0.5, abs=0.01)
    assert by.loc["soft", "test_accuracy"] == pytest.approx(0.5, abs=0.01)
    assert by.loc["ensemble", "val_escalated"] == pytest.approx(1.0)
    assert by.loc["ensemble", "test_accuracy"] == 1.0


def test_tau_is_chosen_on_val_within_the_budget():
    val = synthetic(400, 3)
    for cap in (0.0, 0.1, 0.5, 1.0):
        tau = choose_tau(Outcomes.of(val, "ensemble"), cap)
        _, fraction = cascade_correct(val, "ensemble", tau)
        assert fraction <= cap + 1e-9
    table = frontier(val, synthetic(500, 4), COSTS, [325.0, 488.0, 651.0])
    first = table[table["budget_mmacs"] == 325.0]
    assert (first["test_escalated"] == 0).all()  # no budget: the base alone
    assert (table["test_mmacs"] >= 325.0).all()


def test_the_budget_comparison_is_paired_by_seed():
    rows = []
    for seed, (m, e) in enumerate(((0.90, 0.89), (0.91, 0.895), (0.905, 0.9))):
        for cascade, acc in (("hard", m), ("ensemble", e)):
            rows.append(
                {"budget_mmacs": 400.0, "cascade": cascade, "seed": seed, "tau": 0.5}
                | {"val_escalated": 0.2, "test_escalated": 0.2, "test_mmacs": 390.0}
                | {"test_accuracy": acc}
            )
    cmp = budget_comparison(pd.DataFrame(rows)).iloc[0]
    d = np.array([0.01, 0.015, 0.005])
    got = (cmp["hard_diff"], cmp["hard_ci_low"], cmp["hard_ci_high"])
    assert got == pytest.approx(t_interval(d)[:3])
    assert cmp["hard_accuracy"] == pytest.approx(np.mean([0.90, 0.91, 0.905]))
    assert "soft_diff" not in cmp  # no soft cascade in these rows


def test_ece_of_a_calibrated_and_an_overconfident_model():
    y = np.zeros(1000, dtype=int)
    right = np.arange(1000) < 700  # 70 % right
    probs = np.zeros((1000, 10), dtype=np.float32)
    probs[:, 0] = np.where(right, 0.7, 0.1)
    probs[~right, 1] = 0.7
    probs[:, 2:] = (1 - probs[:, :2].sum(axis=1, keepdims=True)) / 8
    assert ece(probs, y) == pytest.approx(0.0, abs=1e-6)
    sure = probs.copy()
    sure[:, :2] *= 0.99 / 0.7
    sure[:, 2:] = (1 - sure[:, :2].sum(axis=1, keepdims=True)) / 8
    assert ece(sure, y) == pytest.approx(0.29, abs=1e-3)


def test_findings_gain_the_frontier_and_gates_sections_from_the_evidence(tmp_path):
    rows = []
    for seed in (42, 43):
        ev = {"val": synthetic(300, seed), "test": synthetic(300, seed + 100)}
        path = tmp_path / "evidence" / f"default-s{seed}.npz"
        atomic_write(path, evidence_writer(ev, IDS))
        rows.append(
            {"config": "default", "seed": seed, "mixture_accuracy": 0.5, "base_accuracy": 0.4}
            | {"cost_inference_mmacs_base": 325.0, "cost_inference_mmacs_hard": 651.0}
            | {"cost_inference_mmacs_two_bases": 650.0, "two_bases_control_accuracy": 0.45}
            | {"cost_inference_mmacs_soft": 976.0}
        )
    write_findings(pd.DataFrame(rows), tmp_path, "default")
    md = (tmp_path / "findings.md").read_text()
    assert "## The cascades' frontier" in md and "2 seed(s) with saved probabilities" in md
    assert "soft cascade: test %" in md and "soft - ensemble" in md
    assert "## Oracle routing against two bases told the same group" in md
    assert "## The gates, learned against fixed 1/2" in md
    assert "## The experts' confidence against their accuracy" in md
    assert (tmp_path / "findings.png").read_bytes()[:4] == b"\x89PNG"


def test_the_evidence_arithmetic_is_the_mixtures():
    """hmoe.evidence repeats hmoe.mixture's few lines (that module loads Keras): the two
    must give the same distributions."""
    from hmoe import mixture

    e = synthetic(200, 5)
    for routing in ("hard", "soft"):
        route = mixture.route_weights(e.router, routing)
        expected = mixture.combine(route, e.gate_weights(), e.base, e.specialists)
        np.testing.assert_allclose(e.mixture(routing), expected, atol=1e-6)
    spec = e.specialists[1][:, IDS["natural"]]
    np.testing.assert_array_equal(
        embed(spec, IDS["natural"], 10), mixture.embed(spec, IDS["natural"], 10)
    )


def test_the_findings_and_the_sweeps_driver_load_no_keras():
    """The Ray engine's driver and `python -m hmoe.findings` read these files without
    starting TensorFlow (seconds of CPU, and a GPU's memory on a GPU host)."""
    import subprocess
    import sys

    code = (
        "import sys, hmoe.sweep, hmoe.findings, hmoe.frontier, hmoe.evidence; "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny(y, base, second, router, gates, specs) -> SplitEvidence:
    f = np.float32
    return SplitEvidence(
        y=np.array(y), base=np.array(base, f), specialists=tuple(np.array(s, f) for s in specs),
        router=np.array(router, f), router_net=None, gates=tuple(np.array(w, f) for w in gates),
        second_base=np.array(second, f),
    )  # fmt: skip


def test_two_bases_told_the_true_group_keep_only_its_classes():
    """Classes 0 and 1 form group 0, class 2 group 1. Image 1 (class 1): two bases put
    most mass on class 2 (wrong); told group 0, they choose between 0 and 1 (right).
    Image 2 (class 2): told group 1, only class 2 is left."""
    e = _tiny(
        y=[1, 2],
        base=[[0.1, 0.3, 0.6], [0.5, 0.1, 0.4]],
        second=[[0.1, 0.3, 0.6], [0.5, 0.1, 0.4]],
        router=[[1, 0], [1, 0]],
        gates=[[0.5, 0.5], [0.5, 0.5]],
        specs=[[[0.2, 0.8, 0.0], [0.9, 0.1, 0.0]], [[0, 0, 1.0], [0, 0, 1.0]]],
    )
    assert group_of_class(e).tolist() == [0, 0, 1]
    assert true_group(e).tolist() == [0, 1]
    told = given_group((e.base + e.second_base) / 2, true_group(e), group_of_class(e))
    np.testing.assert_allclose(told, [[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]], atol=1e-6)
    table = oracle_table({("default", 1): {"test": e}}, "default").iloc[0]
    assert table["two_bases"] == 0.0 and table["two_bases_given_group"] == 1.0
    # the oracle takes the true group's branch: 1/2 base + 1/2 its specialist
    np.testing.assert_allclose(oracle(e)[1], [0.25, 0.05, 0.7], atol=1e-6)
    assert table["oracle"] == 1.0


def test_the_oracle_in_the_evidence_is_evaluates():
    """evaluate scores oracle routing as combine(one_hot(true group), ...); the evidence's
    oracle (which the oracle control's findings use) must be the same distribution."""
    from hmoe import mixture

    e = synthetic(200, 11)
    group = true_group(e)
    assert group.tolist() == [0 if c in IDS["artificial"] else 1 for c in e.y]
    expected = mixture.combine(mixture.one_hot(group, 2), e.gate_weights(), e.base, e.specialists)
    np.testing.assert_allclose(oracle(e), expected, atol=1e-6)


def test_an_under_confident_expert_shows_confidence_below_accuracy():
    """A base right on every image at top probability 0.6: confidence 0.6, accuracy 1;
    each specialist is scored on its own group's images and classes only."""
    e = _tiny(
        y=[0, 2],
        base=[[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
        second=[[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
        router=[[1, 0], [0, 1]],
        gates=[[0.5, 0.5], [0.5, 0.5]],
        specs=[[[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], [[0, 0, 1.0], [0, 0, 1.0]]],
    )
    found = {("default", 1): {"test": e}}
    table = calibration_table(found, "default", {("default", 1): ["a", "b"]})
    table = table.set_index("expert")
    assert table.loc["base", "confidence"] == pytest.approx(0.6)
    assert table.loc["base", "accuracy"] == 1.0
    assert table.loc["specialist a", "images"] == 1  # image 1 alone is group a's
    assert table.loc["specialist a", "confidence"] == pytest.approx(0.9)
    assert table.loc["specialist b", "accuracy"] == 1.0
    assert "In 2 of 3 rows the mean top probability is below" in calibration_markdown(
        table.reset_index()
    )


def test_a_temperature_fitted_to_under_confident_probabilities_sharpens_them():
    rng = np.random.default_rng(12)
    y = rng.integers(0, 3, 2000)
    top = np.where(rng.random(2000) < 0.96, y, (y + 1) % 3)  # right on 96 % of images
    sharp = np.full((2000, 3), 0.02, np.float32)
    sharp[np.arange(2000), top] = 0.96  # calibrated: 0.96 sure, 96 % right
    soft = scaled(sharp, 3.0)  # the same ranking, far less sure
    assert fit_temperature(soft, y) == pytest.approx(1 / 3, rel=0.05)
    np.testing.assert_allclose(scaled(sharp, 1.0), sharp, atol=1e-6)


def test_the_routed_gate_is_the_one_the_routing_picks():
    e = _tiny(
        y=[0, 2],
        base=[[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
        second=[[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]],
        router=[[0.9, 0.1], [0.2, 0.8]],
        gates=[[0.8, 0.1], [0.0, 0.9]],
        specs=[[[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], [[0, 0, 1.0], [0, 0, 1.0]]],
    )
    table = gate_table({("default", 1): {"test": e}}, "default").iloc[0]
    assert table["routed_weight"] == pytest.approx(0.85)  # 0.8 (gate 0), 0.9 (gate 1)
    assert table["specialist_weight"] == pytest.approx(0.45)  # mean over both gates


def test_the_picture_draws_the_oracles_control_beside_two_bases():
    from hmoe.findings.figure import TOLD_LABEL, findings_figure

    row = {"config": "default", "two_bases_control_accuracy": 0.89, "oracle_accuracy": 0.894}
    row |= {"cost_inference_mmacs_two_bases": 650.0, "cost_inference_mmacs_hard": 651.0}
    frame = pd.DataFrame([row | {"seed": s} for s in (44, 45)])
    told = pd.DataFrame({"seed": [44, 45], "two_bases_given_group": [0.905, 0.906]})
    for given, drawn in ((told, True), (None, False)):
        fig = findings_figure(frame, None, given)
        texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert any(t.startswith(TOLD_LABEL) for t in texts) is drawn
