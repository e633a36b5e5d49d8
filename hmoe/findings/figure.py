"""findings.png: test accuracy against inference cost (every predictor's mean with its
t-interval, and the cascades' frontier when the sweep saved its evidence), beside the
paired differences against two bases, seed by seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hmoe.findings.tables import TWO_BASES, _has
from hmoe.stats import t_interval


@dataclass(frozen=True)
class Point:
    """A predictor drawn in findings.png: its accuracy and inference-cost columns."""

    kind: str
    accuracy: str
    cost: str
    label: str
    marker: str
    control: bool  # the same networks in every configuration (drawn once when equal)


# Oracle routing runs one specialist per image, as hard routing does: drawn at its cost.
ORACLE_LABEL = "oracle routing (told each image's group; not deployable)"
TOLD_LABEL = "two bases told the group (the oracle's control)"
POINTS = tuple(
    Point(kind, f"{accuracy}_accuracy", f"cost_inference_mmacs_{cost}", label, marker, control)
    for kind, accuracy, cost, label, marker, control in (
        ("base", "base", "base", "base", "s", True),
        ("two_bases", "two_bases_control", "two_bases", "two bases, averaged", "D", True),
        ("hard", "hard", "hard", "mixture, hard routing", "v", False),
        ("soft", "soft", "soft", "mixture, soft routing", "o", False),
        ("oracle", "oracle", "hard", ORACLE_LABEL, "o", False),
    )
)

# -- the picture ----------------------------------------------------------------------


def point_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and :data:`POINTS` predictor the CSV has: mean accuracy over
    seeds, its 95 % t-interval (fractions) and mean inference MMACs. A control whose
    per-seed accuracies and cost are the same in every configuration (the shared base)
    is kept once, under the first configuration.
    """
    rows, seen = [], set()
    for name, group in frame.groupby("config", sort=False):
        for pt in POINTS:
            if not _has(group, pt.accuracy, pt.cost):
                continue
            values = group.sort_values("seed")[pt.accuracy].to_numpy(dtype=float)
            mean, lo, hi, _ = t_interval(values)
            cost = float(group[pt.cost].mean())
            key = (pt.kind, tuple(np.round(values, 9)), round(cost, 6))
            if pt.control and key in seen:
                continue
            seen.add(key)
            n = int(np.isfinite(values).sum())
            rows.append(
                {"config": name, "kind": pt.kind, "seeds": n, "mmacs": cost}
                | {"mean": mean, "ci_low": lo, "ci_high": hi}
            )
    return pd.DataFrame(rows)


def _interval_bars(rows: pd.DataFrame) -> np.ndarray | None:
    """Error-bar lengths in % (below, above); None where there is no interval."""
    lo, hi = rows["ci_low"].to_numpy(), rows["ci_high"].to_numpy()
    if not np.isfinite(lo).all():
        return None
    mean = rows["mean"].to_numpy()
    return 100 * np.vstack([mean - lo, hi - mean])


# Paired differences against two bases drawn in the right panel: (column, label).
AGAINST_TWO_BASES = (
    ("base_accuracy", "base"),
    ("hard_accuracy", "mixture, hard"),
    ("soft_accuracy", "mixture, soft"),
    ("equal_gates_control_accuracy", "mixture, 1/2 gates"),
    ("oracle_accuracy", "oracle routing"),
)


def findings_figure(
    frame: pd.DataFrame,
    frontier: pd.DataFrame | None = None,
    told: pd.DataFrame | None = None,
) -> Figure | None:
    """Left: test accuracy (%) against inference MMACs per image, one point per
    configuration and predictor with its 95 % t-interval over seeds, and the cascades'
    mean frontier with each seed's points when ``frontier`` has them, and oracle
    routing's fair control (two bases told the true group, hollow) when ``told`` (the
    findings' oracle table, from the evidence) has it. Right: each
    predictor minus two bases, seed by seed, with the mean and its 95 % t-interval (the
    paired comparison, far tighter than the two intervals on the left). None if the CSV
    has no such point.
    """
    points = point_table(frame)
    if points.empty:
        return None
    fig, (ax, right) = plt.subplots(1, 2, figsize=(15, 7.5), gridspec_kw={"width_ratios": [1.3, 1]})
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.32, top=0.92, wspace=0.32)
    _points_panel(ax, frame, points)
    if frontier is not None and not frontier.empty:
        _frontier_curves(ax, frontier)
    if told is not None and not told.empty and _has(frame, "cost_inference_mmacs_two_bases"):
        _told_point(ax, told, float(frame["cost_inference_mmacs_two_bases"].mean()))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    _differences_panel(right, frame)
    seeds = sorted(frame["seed"].unique().tolist())
    fig.suptitle(
        f"{len(seeds)} seed{'s' * (len(seeds) > 1)} ({', '.join(map(str, seeds))}); "
        "bars: 95 % t-interval over seeds",
        fontsize=10,
    )
    return fig


def _points_panel(ax: Any, frame: pd.DataFrame, points: pd.DataFrame) -> None:
    """Every predictor's mean accuracy against its inference cost. One configuration: a
    colour per predictor. Several: a colour per configuration and a marker per
    predictor, set a little apart sideways. Oracle routing is hollow, beside hard
    routing's cost: not deployable.
    """
    configs = list(dict.fromkeys(points["config"]))
    multi = len(configs) > 1
    span = max(float(points["mmacs"].max()), 1.0)
    for i, pt in enumerate(POINTS):
        for j, config in enumerate(configs):
            rows = points[(points["kind"] == pt.kind) & (points["config"] == config)]
            if rows.empty:
                continue
            shared = multi and pt.control and (points["kind"] == pt.kind).sum() == 1
            colour = "black" if shared else f"C{j if multi else i}"
            dodge = 0.0 if shared or not multi else 0.012 * span * (j - (len(configs) - 1) / 2)
            dodge += 0.04 * span if pt.kind == "oracle" else 0.0
            label = pt.label if not multi or shared else f"{pt.label}, {config}"
            _draw(ax, rows, pt, colour, dodge, label)
    ax.set_title("Test accuracy against inference cost", fontsize=10)
    ax.set_xlabel("inference multiply-adds per image (millions, with the test-time views)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)


def _frontier_curves(ax: Any, frontier: pd.DataFrame) -> None:
    """Each cascade's mean test accuracy against its mean test MMACs over the budgets,
    with every seed's points faint behind it."""
    n = frontier["seed"].nunique()
    for cascade, colour in (("hard", "C6"), ("soft", "C8"), ("ensemble", "C7")):
        rows = frontier[frontier["cascade"] == cascade]
        if rows.empty:
            continue
        ax.plot(rows["test_mmacs"], 100 * rows["test_accuracy"], ".", color=colour, alpha=0.3)
        mean = rows.groupby("budget_mmacs")[["test_mmacs", "test_accuracy"]].mean()
        ax.plot(
            mean["test_mmacs"], 100 * mean["test_accuracy"], "-", color=colour,
            label=f"{cascade} cascade (mean of {n} seed{'s' * (n > 1)}; dots: seeds)",
        )  # fmt: skip


def _told_point(ax: Any, told: pd.DataFrame, mmacs: float) -> None:
    """Two bases told the true group: mean over its seeds with the t-interval, hollow
    (it needs the labels), just left of two bases' cost."""
    values = told.sort_values("seed")["two_bases_given_group"].to_numpy(dtype=float)
    mean, lo, hi, _ = t_interval(values)
    bars = None if not np.isfinite(lo) else 100 * np.array([[mean - lo], [hi - mean]])
    seeds = ", ".join(str(int(s)) for s in sorted(told["seed"]))  # may be fewer than all
    ax.errorbar(
        [mmacs * 0.96], [100 * mean], yerr=bars, fmt="D", color="C5", mfc="none", ms=8,
        capsize=4, label=f"{TOLD_LABEL}, seeds {seeds}",
    )  # fmt: skip


def _differences_panel(ax: Any, frame: pd.DataFrame) -> None:
    """Per predictor: each seed's paired difference to two bases, the mean and its
    t-interval, one configuration after another."""
    if TWO_BASES not in frame or frame[TWO_BASES].isna().all():
        ax.set_axis_off()
        return
    ticks, labels = [], []
    for j, (config, group) in enumerate(frame.groupby("config", sort=False)):
        for column, label in AGAINST_TWO_BASES:
            if column not in group or group[column].isna().all():
                continue
            y = len(ticks)
            d = 100 * (group[column] - group[TWO_BASES]).to_numpy(dtype=float)
            mean, lo, hi, _ = t_interval(d)
            ax.plot(d, np.full(len(d), y), "o", color=f"C{j}", alpha=0.45, ms=5)
            if np.isfinite(lo):
                ax.plot([lo, hi], [y, y], "-", color=f"C{j}", lw=2)
            ax.plot([mean], [y], "D", color=f"C{j}", ms=7)
            ticks.append(y)
            labels.append(label if frame["config"].nunique() == 1 else f"{label} ({config})")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("test accuracy minus two bases (points); dots: seeds, diamond: mean")
    ax.set_title("Paired by seed, against two bases", fontsize=10)
    ax.grid(alpha=0.3, axis="x")


def _draw(ax: Any, rows: pd.DataFrame, pt: Point, colour: str, dodge: float, label: str | None):
    """One predictor's point with its error bar (hollow for the oracle)."""
    ax.errorbar(
        rows["mmacs"] + dodge,
        100 * rows["mean"],
        yerr=_interval_bars(rows),
        fmt=pt.marker,
        color=colour,
        mfc="none" if pt.kind == "oracle" else colour,
        ms=8,
        capsize=4,
        label=label,
    )
