"""The saved evidence (hmoe.evidence) and the cascades computed from it (hmoe.frontier,
hmoe.findings.cascades), on small synthetic probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hmoe.data.storage import atomic_write
from hmoe.evidence import SplitEvidence, embed, evidence_writer, load_evidence
from hmoe.findings import write_findings
from hmoe.findings.cascades import budget_comparison, ece
from hmoe.frontier import (
    Costs,
    Outcomes,
    cascade_correct,
    choose_tau,
    frontier,
    second_opinion,
)
from hmoe.stats import t_interval

IDS = {"artificial": [0, 1, 8, 9], "natural": [2, 3, 4, 5, 6, 7]}
COSTS = Costs(base=325.0, extra={"mixture": 326.0, "ensemble": 325.0})


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
    none, frac0 = cascade_correct(e, "mixture", 0.0)
    assert frac0 == 0.0 and np.array_equal(none, base_right)
    full, frac1 = cascade_correct(e, "mixture", np.inf)
    assert frac1 == 1.0
    assert np.array_equal(full, np.argmax(e.mixture("hard"), axis=1) == e.y)
    both, _ = cascade_correct(e, "ensemble", np.inf)
    assert np.array_equal(both, np.argmax(e.base + e.second_base, axis=1) == e.y)
    np.testing.assert_allclose(second_opinion(e, "mixture").sum(axis=1), 1.0, atol=1e-5)


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
        for cascade, acc in (("mixture", m), ("ensemble", e)):
            rows.append(
                {"budget_mmacs": 400.0, "cascade": cascade, "seed": seed, "tau": 0.5}
                | {"val_escalated": 0.2, "test_escalated": 0.2, "test_mmacs": 390.0}
                | {"test_accuracy": acc}
            )
    cmp = budget_comparison(pd.DataFrame(rows)).iloc[0]
    d = np.array([0.01, 0.015, 0.005])
    assert (cmp["diff"], cmp["ci_low"], cmp["ci_high"]) == pytest.approx(t_interval(d)[:3])
    assert cmp["mixture_accuracy"] == pytest.approx(np.mean([0.90, 0.91, 0.905]))


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
        )
    write_findings(pd.DataFrame(rows), tmp_path, "default")
    md = (tmp_path / "findings.md").read_text()
    assert "## The cascades' frontier" in md and "2 seed(s) with saved probabilities" in md
    assert "## The gates, learned against fixed 1/2" in md
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
