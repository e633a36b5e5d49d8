"""Accuracy against inference cost: confidence cascades from the saved probabilities.

Every cascade runs the base on every image and asks for a second opinion only where the
base's top probability is below a threshold τ:

- **hard cascade** (``hard``): the router head and the routed specialist, weighed with
  the base by that group's gate (hard routing, on the escalated images only);
- **soft cascade** (``soft``): the whole mixture under soft routing (the router head and
  every specialist, each branch weighed by the routing distribution), the default
  mixture's own output, bought only for the escalated images;
- **ensemble cascade** (``ensemble``): a second base, averaged with the first.

τ is chosen on val, for each inference budget (average multiply-adds per image), as the
threshold with the best val accuracy among those whose val escalation fits the budget;
the test split is then only scored. The comparison at equal budget asks whether the
specialists are a better second opinion than a second base, with the same networks.
Pure numpy over :class:`hmoe.evidence.SplitEvidence`: nothing is trained or run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hmoe.evidence import SplitEvidence, branch

CASCADES = ("hard", "soft", "ensemble")
# The candidate escalated fractions on val: fine steps, so that a budget is used closely.
FRACTIONS = np.linspace(0.0, 1.0, 201)


@dataclass(frozen=True)
class Costs:
    """Multiply-adds per image (millions, with the test-time views): the base, and what a
    second opinion adds (the router head and one specialist; the router head and every
    specialist; a second base). A cascade without its cost is left out of the frontier.
    """

    base: float
    extra: Mapping[str, float]  # cascade -> added MMACs of an escalated image

    @classmethod
    def from_row(cls, row: Mapping[str, float]) -> Costs:
        """From a findings row's inference costs (evaluate's ``cost_inference_mmacs_*``)."""
        base = float(row["cost_inference_mmacs_base"])
        extra = {}
        for cascade, name in (("hard", "hard"), ("soft", "soft"), ("ensemble", "two_bases")):
            cost = row.get(f"cost_inference_mmacs_{name}")
            if cost is not None and np.isfinite(cost):
                extra[cascade] = float(cost) - base
        return cls(base, extra)


def second_opinion(ev: SplitEvidence, cascade: str) -> np.ndarray:
    """The distribution an escalated image gets (every image computed; pure arithmetic)."""
    if cascade == "ensemble":
        if ev.second_base is None:
            raise ValueError("the ensemble cascade needs a second base (controls.second_base)")
        return (ev.base + ev.second_base) / 2
    if cascade == "soft":
        return ev.mixture("soft")
    if cascade != "hard":
        raise ValueError(f"cascade must be one of {CASCADES}, got {cascade!r}")
    route = np.argmax(ev.router, axis=1)
    out = np.empty_like(ev.base)
    for g, (spec, w) in enumerate(zip(ev.specialists, ev.gate_weights(), strict=True)):
        rows = route == g
        out[rows] = branch(w[rows], ev.base[rows], spec[rows])
    return out


@dataclass(frozen=True)
class Outcomes:
    """Per image of one split: the base's top probability, whether the base is right,
    and whether the cascade's second opinion is right (computed once, for every τ)."""

    confidence: np.ndarray
    base_right: np.ndarray
    second_right: np.ndarray

    @classmethod
    def of(cls, ev: SplitEvidence, cascade: str) -> Outcomes:
        return cls(
            ev.base.max(axis=1),
            np.argmax(ev.base, axis=1) == ev.y,
            np.argmax(second_opinion(ev, cascade), axis=1) == ev.y,
        )

    def at(self, tau: float) -> tuple[np.ndarray, float]:
        """(per-image correctness, fraction escalated) at threshold ``tau``: an image is
        escalated when the base's top probability is below it."""
        escalate = self.confidence < tau
        return np.where(escalate, self.second_right, self.base_right), float(escalate.mean())


def cascade_correct(ev: SplitEvidence, cascade: str, tau: float) -> tuple[np.ndarray, float]:
    """(per-image correctness, fraction escalated) of a cascade at threshold ``tau``."""
    return Outcomes.of(ev, cascade).at(tau)


def thresholds(confidence: np.ndarray) -> np.ndarray:
    """Candidate τ: the val confidence quantiles that escalate each of :data:`FRACTIONS`
    (τ above every confidence escalates all)."""
    qs = np.quantile(confidence, FRACTIONS[1:-1])
    return np.concatenate([[0.0], qs, [np.inf]])


def choose_tau(val: Outcomes, max_fraction: float) -> float:
    """The τ with the best val accuracy whose val escalated fraction is at most
    ``max_fraction`` (the cheaper one on a tie)."""
    best_tau, best_acc = 0.0, -1.0
    for tau in thresholds(val.confidence):
        correct, fraction = val.at(tau)
        if fraction > max_fraction + 1e-12:
            continue
        if correct.mean() > best_acc:
            best_tau, best_acc = float(tau), float(correct.mean())
    return best_tau


def budgets(costs: Costs, n: int = 11) -> np.ndarray:
    """An even grid of inference budgets from one base to two bases' cost."""
    return np.linspace(costs.base, costs.base + costs.extra["ensemble"], n)


def frontier(
    val: SplitEvidence, test: SplitEvidence, costs: Costs, grid: Sequence[float]
) -> pd.DataFrame:
    """For each budget and cascade with a cost in ``costs``: τ (chosen on val), val and
    test escalated fractions, test accuracy and test MMACs per image; one row each.
    """
    rows = []
    cascades = [c for c in CASCADES if c in costs.extra]
    outcomes = {c: (Outcomes.of(val, c), Outcomes.of(test, c)) for c in cascades}
    for budget in grid:
        for cascade in cascades:
            on_val, on_test = outcomes[cascade]
            extra = costs.extra[cascade]
            allowed = (budget - costs.base) / extra if extra > 0 else 1.0
            tau = choose_tau(on_val, min(max(allowed, 0.0), 1.0))
            _, val_fraction = on_val.at(tau)
            correct, fraction = on_test.at(tau)
            rows.append(
                {
                    "budget_mmacs": float(budget),
                    "cascade": cascade,
                    "tau": tau,
                    "val_escalated": val_fraction,
                    "test_escalated": fraction,
                    "test_mmacs": costs.base + fraction * extra,
                    "test_accuracy": float(correct.mean()),
                }
            )
    return pd.DataFrame(rows)


def seed_frontiers(
    evidence: Mapping[int, Mapping[str, SplitEvidence]],
    costs: Mapping[int, Costs],
    n_budgets: int = 11,
) -> pd.DataFrame:
    """:func:`frontier` per seed on one budget grid (the first seed's costs: the networks
    have one architecture, so every seed's costs are the same), with a ``seed`` column.
    """
    if not evidence:
        return pd.DataFrame()
    grid = budgets(costs[next(iter(evidence))], n_budgets)
    frames = [
        frontier(ev["val"], ev["test"], costs[seed], grid).assign(seed=seed)
        for seed, ev in evidence.items()
    ]
    return pd.concat(frames, ignore_index=True)
