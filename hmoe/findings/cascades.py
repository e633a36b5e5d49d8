"""The findings that need the saved per-image files, not just findings.csv: the
accuracy–inference-cost frontier of the cascades (:mod:`hmoe.frontier`), oracle routing
against its fair control (two bases told the same true group), what the learned gates
do against fixed 1/2 gates, and how the experts' confidence compares with their
accuracy. Seeds without an evidence file are left out, and the text says how many seeds
each figure rests on.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar

from hmoe.evidence import SplitEvidence, load_evidence
from hmoe.findings.tables import _row, header
from hmoe.frontier import CASCADES, Costs, seed_frontiers
from hmoe.oracle import given_group, group_of_class, oracle, true_group
from hmoe.stats import t_interval

logger = logging.getLogger("hmoe.findings")

Key = tuple[str, int]  # (configuration, seed)
_NAME = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)\.npz$")
# The oracle table's accuracy columns, in order, and their names in its note.
_ORACLE_COLUMNS = {
    "oracle": "oracle routing",
    "two_bases": "two bases",
    "two_bases_given_group": "two bases given the true group",
    "base_given_group": "the base given the true group",
}


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


def read_group_names(out: Path) -> dict[Key, list[str]]:
    """``out``/evidence: each file's group names, in the specialists' order."""
    names = {}
    for key, path in _files(out / "evidence").items():
        with np.load(path) as f:
            names[key] = [str(g) for g in f["groups"]]
    return names


def frontier_table(
    frame: pd.DataFrame, evidence: Mapping[Key, Mapping[str, SplitEvidence]], config: str
) -> pd.DataFrame:
    """Every cascade at every budget, per seed of ``config`` that has evidence and a
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
    """Per budget: each cascade's mean test accuracy, MMACs and escalated fraction over
    seeds, and for each specialist cascade the paired difference to the ensemble cascade
    (``<cascade>_diff``) with its t-interval over seeds.
    """
    out = []
    for budget, at in table.groupby("budget_mmacs"):
        wide = at.pivot(index="seed", columns="cascade", values="test_accuracy")
        mmacs = at.groupby("cascade")["test_mmacs"].mean()
        escalated = at.groupby("cascade")["test_escalated"].mean()
        row = {"budget_mmacs": budget, "seeds": len(wide)}
        for c in _present(wide.columns):
            row |= {f"{c}_accuracy": wide[c].mean(), f"{c}_mmacs": mmacs[c]}
            row[f"{c}_escalated"] = escalated[c]
            if c != "ensemble" and "ensemble" in wide:
                mean, lo, hi, p = t_interval((wide[c] - wide["ensemble"]).to_numpy())
                row |= {f"{c}_diff": mean, f"{c}_ci_low": lo, f"{c}_ci_high": hi, f"{c}_p": p}
        out.append(row)
    return pd.DataFrame(out)


def _present(columns: Iterable[str]) -> list[str]:
    """The cascades among ``columns``, in :data:`hmoe.frontier.CASCADES`'s order."""
    found = set(columns)
    return [c for c in CASCADES if c in found]


def frontier_markdown(table: pd.DataFrame, config: str) -> str:
    """The frontier section ('' without evidence)."""
    if table.empty:
        return ""
    cmp = budget_comparison(table)
    seeds = sorted(table["seed"].unique().tolist())
    cascades = _present(table["cascade"].unique())
    against = [c for c in cascades if c != "ensemble" and f"{c}_diff" in cmp]
    head = ["budget (MMACs/image)"]
    head += [f"{c} cascade: test % (MMACs, escalated)" for c in cascades]
    head += [f"{c} - ensemble, points (95 % t-interval)" for c in against]
    lines = header(head)
    for _, r in cmp.iterrows():
        cells = [f"{r['budget_mmacs']:.0f}"] + [_cascade_cell(r, c) for c in cascades]
        cells += [_interval(r[f"{c}_diff"], r[f"{c}_ci_low"], r[f"{c}_ci_high"]) for c in against]
        lines.append(_row(cells))
    note = (
        f"\nConfiguration {config!r}, {len(seeds)} seed(s) with saved probabilities "
        f"({', '.join(map(str, seeds))}). Every cascade runs the base on every image and, "
        "where its top probability is below τ, a second opinion: the hard cascade the "
        "router head and the routed specialist weighed by its gate (hard routing), the "
        "soft cascade the whole mixture under soft routing (the router head and every "
        "specialist; it costs twice the hard cascade's second opinion, so within two "
        "bases' budget it escalates at most half the images), the ensemble cascade a "
        "second base averaged in. For each budget τ is the threshold "
        "with the best val accuracy whose val escalation fits the budget; the test split "
        "only scores it, so a cascade's test MMACs may differ a little from the budget. "
        "Accuracy and MMACs: means over seeds; the difference: mean of the per-seed "
        "paired differences with its 95 % t-interval over seeds, the test images held "
        "fixed (n/a with one seed).\n"
    )
    return "\n".join(lines) + "\n" + note


def _cascade_cell(r: pd.Series, cascade: str) -> str:
    return (
        f"{100 * r[f'{cascade}_accuracy']:.2f} ({r[f'{cascade}_mmacs']:.0f}, "
        f"{100 * r[f'{cascade}_escalated']:.0f} %)"
    )


def oracle_table(evidence: Mapping[Key, Mapping[str, SplitEvidence]], config: str) -> pd.DataFrame:
    """Per seed with a second base, on test: oracle routing against the controls told
    the same true group. The oracle is handed each image's group; two bases (or the
    base) cut to that group's classes are handed the same, so the oracle's lead over
    them is what the specialists and gates add to that knowledge.
    """
    rows = []
    for (c, seed), ev in sorted(evidence.items()):
        e = ev.get("test")
        if c != config or e is None or e.second_base is None:
            continue
        group, of_class = true_group(e), group_of_class(e)
        two = (e.base + e.second_base) / 2
        rows.append(
            {
                "seed": seed,
                "oracle": _acc(oracle(e), e.y),
                "two_bases": _acc(two, e.y),
                "two_bases_given_group": _acc(given_group(two, group, of_class), e.y),
                "base_given_group": _acc(given_group(e.base, group, of_class), e.y),
            }
        )
    return pd.DataFrame(rows)


def oracle_markdown(table: pd.DataFrame) -> str:
    """The oracle's fair control ('' without evidence)."""
    if table.empty:
        return ""
    head = [
        "seed",
        "oracle routing %",
        "two bases %",
        "two bases given the true group %",
        "base given the true group %",
        "oracle - two bases given the group (points)",
    ]
    lines = header(head)
    for _, r in table.iterrows():
        cells = [str(int(r["seed"]))]
        cells += [f"{100 * r[k]:.2f}" for k in _ORACLE_COLUMNS]
        cells.append(f"{100 * (r['oracle'] - r['two_bases_given_group']):+.2f}")
        lines.append(_row(cells))
    d = (table["oracle"] - table["two_bases_given_group"]).to_numpy()
    mean, lo, hi, _ = t_interval(d)
    means = ", ".join(
        f"{name} {100 * table[k].mean():.2f} %" for k, name in _ORACLE_COLUMNS.items()
    )
    note = (
        f"\nMeans over the {len(table)} seed(s): {means}. Oracle routing is handed each "
        "image's true group and takes that group's branch (its gate's blend of the base, "
        "which still spreads mass over every class, and the group's specialist); the "
        "controls are handed the same group and keep only its classes (renormalised), "
        "which is the fair comparison for it. Oracle - two bases given the group: "
        f"{_interval(mean, lo, hi)} points (mean of the per-seed differences, 95 % "
        "t-interval over seeds, test images held fixed). Neither is deployable: both "
        "need the labels.\n"
    )
    return "\n".join(lines) + "\n" + note


def gate_table(evidence: Mapping[Key, Mapping[str, SplitEvidence]], config: str) -> pd.DataFrame:
    """Per seed and split: accuracy and mean negative log-likelihood of the mixture
    (soft routing) with its learned gates and with fixed 1/2 gates, before and after
    temperature scaling (one temperature per predictor, fitted on val), and the weight
    the gates give the specialists: over every gate and image (an unrouted gate's weight
    barely counts under routing) and the routed gate's alone (the group the routing's top
    choice names), which is the one that decides.
    """
    rows = []
    for (c, seed), ev in sorted(evidence.items()):
        if c != config:
            continue
        mixed = {split: (e.mixture("soft"), _equal_gates(e)) for split, e in ev.items()}
        temps = _temperatures(ev["val"].y, *mixed["val"]) if "val" in ev else (1.0, 1.0)
        for split, e in ev.items():
            learned, half = mixed[split]
            weights = np.concatenate(e.gates)
            rows.append(
                {
                    "seed": seed,
                    "split": split,
                    "learned_accuracy": _acc(learned, e.y),
                    "equal_accuracy": _acc(half, e.y),
                    "learned_nll": _nll(learned, e.y),
                    "equal_nll": _nll(half, e.y),
                    "learned_nll_scaled": _nll(scaled(learned, temps[0]), e.y),
                    "equal_nll_scaled": _nll(scaled(half, temps[1]), e.y),
                    "learned_temperature": temps[0],
                    "equal_temperature": temps[1],
                    "specialist_weight": float(np.mean([w.mean() for w in e.gates])),
                    "specialist_weight_sd": float(weights.std()),
                    "routed_weight": float(_routed_weight(e).mean()),
                }
            )
    return pd.DataFrame(rows)


def _routed_weight(e: SplitEvidence) -> np.ndarray:
    """(N,) the weight on its specialist of the gate whose group the routing ranks first."""
    top = np.argmax(e.router, axis=1)
    return np.stack(e.gates, axis=1)[np.arange(len(top)), top]


def scaled(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` at ``temperature``: p^(1/T), renormalised (T < 1 sharpens)."""
    logits = np.log(np.maximum(probs, 1e-7)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``y`` (bounded
    search over 0.05 .. 20). It cannot change a prediction, only its confidence."""
    found = minimize_scalar(
        lambda t: _nll(scaled(probs, t), y), bounds=(0.05, 20.0), method="bounded"
    )
    return float(found.x)


def _temperatures(y: np.ndarray, learned: np.ndarray, half: np.ndarray) -> tuple[float, float]:
    return fit_temperature(learned, y), fit_temperature(half, y)


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
        "learned NLL, T-scaled",
        "1/2 NLL, T-scaled",
        "T learned / 1/2",
        "weight on specialist: mean (sd), every gate",
        "routed gate's weight on specialist",
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
                    f"{r['learned_nll_scaled']:.4f}",
                    f"{r['equal_nll_scaled']:.4f}",
                    f"{r['learned_temperature']:.2f} / {r['equal_temperature']:.2f}",
                    f"{r['specialist_weight']:.3f} ({r['specialist_weight_sd']:.3f})",
                    f"{r['routed_weight']:.3f}",
                ]
            )
        )
    note = (
        "\nThe mixture under soft routing with the learned gates and with every gate fixed "
        "at 1/2, on val (the gates' early-stopping split) and test. NLL: mean negative "
        "log-likelihood of the true class. T-scaled: each predictor's output at the one "
        "temperature T (p^(1/T), renormalised; T < 1 sharpens) that minimises its val "
        "NLL (fitted on val, so the val rows are in-sample; scaling moves no prediction, "
        "so accuracy is unchanged). The weight "
        "on the specialist: mean and sd over every gate and image, which mixes the routed "
        "gate with the one the routing all but ignores; and the mean of the routed gate's "
        "(the group the routing ranks first). The evidence holds no probabilities on the "
        "gate split the gates were fitted on, so whether they overfit it cannot be read "
        "here.\n"
    )
    return "\n".join(lines) + "\n" + note


def calibration_table(
    evidence: Mapping[Key, Mapping[str, SplitEvidence]],
    config: str,
    names: Mapping[Key, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Per seed, split and expert: mean top probability, accuracy and expected
    calibration error. The base over every image; a specialist over its own group's
    images, on its own classes (what it is asked when routed there), named by its group
    where ``names`` has the file's group names (by its index otherwise).
    """
    rows = []
    for (c, seed), ev in sorted(evidence.items()):
        if c != config:
            continue
        for split, e in ev.items():
            for expert, probs, y in _experts(e, (names or {}).get((c, seed), ())):
                rows.append(
                    {"seed": seed, "split": split, "expert": expert}
                    | {"confidence": float(probs.max(axis=1).mean()), "accuracy": _acc(probs, y)}
                    | {"ece": ece(probs, y), "images": len(y)}
                )
    return pd.DataFrame(rows)


def _experts(e: SplitEvidence, names: Sequence[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, probabilities, labels): the base on every image, each specialist on its
    group's images over its own classes (labels re-indexed into them)."""
    found = [("base", e.base, e.y)]
    of_class = group_of_class(e)
    for g, spec in enumerate(e.specialists):
        own = np.flatnonzero(of_class == g)
        sel = of_class[e.y] == g
        name = names[g] if g < len(names) else str(g)
        found.append((f"specialist {name}", spec[sel][:, own], np.searchsorted(own, e.y[sel])))
    return found


def calibration_markdown(table: pd.DataFrame) -> str:
    """The experts' confidence against their accuracy ('' without evidence)."""
    if table.empty:
        return ""
    head = ["seed", "split", "expert", "mean top probability", "accuracy %", "ECE"]
    lines = header(head)
    for _, r in table.iterrows():
        cells = [str(r["seed"]), r["split"], r["expert"], f"{r['confidence']:.3f}"]
        cells += [f"{100 * r['accuracy']:.2f}", f"{r['ece']:.4f}"]
        lines.append(_row(cells))
    under = (table["confidence"] < table["accuracy"]).sum()
    note = (
        f"\nIn {under} of {len(table)} rows the mean top probability is below the accuracy: "
        "an expert whose confidence runs below its accuracy is under-confident (label "
        "smoothing does this), and a gate that reads its probabilities sees less certainty "
        "than there is. ECE: expected calibration error of the top probability (15 "
        "equal-width bins), which says how far, not in which direction.\n"
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
