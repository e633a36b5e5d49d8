"""The findings that need the saved per-image files, not just findings.csv: the
accuracy–inference-cost frontier of the two cascades (:mod:`hmoe.frontier`) and what the
learned gates do against fixed 1/2 gates. Seeds without an evidence file are left out,
and the text says how many seeds each figure rests on.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from hmoe.evidence import SplitEvidence, load_evidence
from hmoe.findings.tables import _row, header
from hmoe.frontier import Costs, seed_frontiers
from hmoe.stats import t_interval

logger = logging.getLogger("hmoe.findings")

Key = tuple[str, int]  # (configuration, seed)
_NAME = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)\.npz$")


def _files(folder: Path) -> dict[Key, Path]:
    found = {}
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        m = _NAME.match(path.name)
        if m:
            found[(m["config"], int(m["seed"]))] = path
    return found


def read_labels(out: Path) -> dict[Key, dict[str, np.ndarray]]:
    """``out``/labels: each configuration x seed's predicted test labels and the truth."""
    labels = {}
    for key, path in _files(out / "labels").items():
        with np.load(path) as f:
            labels[key] = {k: f[k] for k in f.files}
    return labels


def read_evidence(out: Path) -> dict[Key, dict[str, SplitEvidence]]:
    """``out``/evidence: each configuration x seed's per-image probabilities."""
    return {key: load_evidence(path) for key, path in _files(out / "evidence").items()}


def frontier_table(
    frame: pd.DataFrame, evidence: Mapping[Key, Mapping[str, SplitEvidence]], config: str
) -> pd.DataFrame:
    """Both cascades at every budget, per seed of ``config`` that has evidence and a
    second base (empty when none has)."""
    rows = frame[frame["config"] == config].set_index("seed")
    chosen = {
        seed: ev
        for (c, seed), ev in sorted(evidence.items())
        if c == config and seed in rows.index and ev["test"].second_base is not None
    }
    costs = {seed: Costs.from_row(rows.loc[seed]) for seed in chosen}
    return seed_frontiers(chosen, costs)


def budget_comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Per budget: each cascade's mean test accuracy and MMACs over seeds, and the
    paired difference mixture cascade - ensemble cascade with its t-interval over seeds.
    """
    out = []
    for budget, at in table.groupby("budget_mmacs"):
        wide = at.pivot(index="seed", columns="cascade", values="test_accuracy")
        mmacs = at.groupby("cascade")["test_mmacs"].mean()
        escalated = at.groupby("cascade")["test_escalated"].mean()
        mean, lo, hi, p = t_interval((wide["mixture"] - wide["ensemble"]).to_numpy())
        out.append(
            {
                "budget_mmacs": budget,
                "seeds": len(wide),
                "mixture_accuracy": wide["mixture"].mean(),
                "ensemble_accuracy": wide["ensemble"].mean(),
                "mixture_mmacs": mmacs["mixture"],
                "ensemble_mmacs": mmacs["ensemble"],
                "mixture_escalated": escalated["mixture"],
                "ensemble_escalated": escalated["ensemble"],
            }
            | {"diff": mean, "ci_low": lo, "ci_high": hi, "p": p}
        )
    return pd.DataFrame(out)


def frontier_markdown(table: pd.DataFrame, config: str) -> str:
    """The frontier section ('' without evidence)."""
    if table.empty:
        return ""
    cmp = budget_comparison(table)
    seeds = sorted(table["seed"].unique().tolist())
    head = [
        "budget (MMACs/image)",
        "mixture cascade: test % (MMACs, escalated)",
        "ensemble cascade: test % (MMACs, escalated)",
        "mixture - ensemble, points (95 % t-interval)",
    ]
    lines = header(head)
    for _, r in cmp.iterrows():
        lines.append(
            _row(
                [
                    f"{r['budget_mmacs']:.0f}",
                    _cascade_cell(r, "mixture"),
                    _cascade_cell(r, "ensemble"),
                    _interval(r["diff"], r["ci_low"], r["ci_high"]),
                ]
            )
        )
    note = (
        f"\nConfiguration {config!r}, {len(seeds)} seed(s) with saved probabilities "
        f"({', '.join(map(str, seeds))}). Both cascades run the base on every image and, "
        "where its top probability is below τ, a second opinion: the mixture cascade the "
        "router head and the routed specialist weighed by its gate (hard routing), the "
        "ensemble cascade a second base averaged in. For each budget τ is the threshold "
        "with the best val accuracy whose val escalation fits the budget; the test split "
        "only scores it, so a cascade's test MMACs may differ a little from the budget. "
        "Accuracy and MMACs: means over seeds; the difference: mean of the per-seed "
        "paired differences with its 95 % t-interval (n/a with one seed).\n"
    )
    return "\n".join(lines) + "\n" + note


def _cascade_cell(r: pd.Series, cascade: str) -> str:
    return (
        f"{100 * r[f'{cascade}_accuracy']:.2f} ({r[f'{cascade}_mmacs']:.0f}, "
        f"{100 * r[f'{cascade}_escalated']:.0f} %)"
    )


def gate_table(evidence: Mapping[Key, Mapping[str, SplitEvidence]], config: str) -> pd.DataFrame:
    """Per seed and split: accuracy and mean negative log-likelihood of the mixture
    (soft routing) with its learned gates and with fixed 1/2 gates, the mean weight the
    gates give the specialists, and each expert's expected calibration error.
    """
    rows = []
    for (c, seed), ev in sorted(evidence.items()):
        if c != config:
            continue
        for split, e in ev.items():
            learned, half = e.mixture("soft"), _equal_gates(e)
            rows.append(
                {
                    "seed": seed,
                    "split": split,
                    "learned_accuracy": _acc(learned, e.y),
                    "equal_accuracy": _acc(half, e.y),
                    "learned_nll": _nll(learned, e.y),
                    "equal_nll": _nll(half, e.y),
                    "specialist_weight": float(np.mean([w.mean() for w in e.gates])),
                    "base_ece": ece(e.base, e.y),
                    "specialist_ece": _specialist_ece(e),
                }
            )
    return pd.DataFrame(rows)


def gates_markdown(table: pd.DataFrame) -> str:
    """The gate diagnostics ('' without evidence)."""
    if table.empty:
        return ""
    head = [
        "seed",
        "split",
        "learned gates %",
        "1/2 gates %",
        "learned NLL",
        "1/2 NLL",
        "mean weight on specialist",
        "ECE base",
        "ECE specialists",
    ]
    lines = header(head)
    for _, r in table.iterrows():
        lines.append(
            _row(
                [
                    str(r["seed"]),
                    r["split"],
                    f"{100 * r['learned_accuracy']:.2f}",
                    f"{100 * r['equal_accuracy']:.2f}",
                    f"{r['learned_nll']:.4f}",
                    f"{r['equal_nll']:.4f}",
                    f"{r['specialist_weight']:.3f}",
                    f"{r['base_ece']:.4f}",
                    f"{r['specialist_ece']:.4f}",
                ]
            )
        )
    note = (
        "\nThe mixture under soft routing with the learned gates and with every gate fixed "
        "at 1/2, on val (the gates' early-stopping split) and test. NLL: mean negative "
        "log-likelihood of the true class. ECE: expected calibration error of the top "
        "probability (15 equal-width bins); for the specialists, over the images of their "
        "own group, on their own classes. Learned gates that beat 1/2 gates on val but not "
        "on test overfit; experts whose confidence runs above their accuracy (ECE) mislead "
        "gates that read their probabilities.\n"
    )
    return "\n".join(lines) + "\n" + note


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top probability (equal-width bins)."""
    conf, right = probs.max(axis=1), np.argmax(probs, axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - right[sel].mean())
    return float(total)


def _specialist_ece(e: SplitEvidence) -> float:
    """The specialists' ECE over their own group's images, weighted by image count."""
    errors, counts = [], []
    for spec in e.specialists:
        own = spec.sum(axis=0) > 0  # the group's classes (embedded: zeros elsewhere)
        sel = own[e.y]
        if sel.any():
            errors.append(ece(spec[sel], e.y[sel]))
            counts.append(int(sel.sum()))
    return float(np.average(errors, weights=counts)) if counts else float("nan")


def _equal_gates(e: SplitEvidence) -> np.ndarray:
    half = dataclasses.replace(e, gates=tuple(np.full_like(w, 0.5) for w in e.gates))
    return half.mixture("soft")


def _acc(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, axis=1) == y))


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-7))))


def _interval(mean: float, lo: float, hi: float) -> str:
    if not np.isfinite(lo):
        return f"{100 * mean:+.2f} (n/a)"
    return f"{100 * mean:+.2f} ({100 * lo:+.2f} .. {100 * hi:+.2f})"
