"""The findings of a sweep, computed from its ``findings.csv`` alone.

    python -m hmoe.findings sweeps/results/decisive [--reference default]

``findings.csv`` has one row per configuration x seed (written by
:func:`hmoe.sweep.run_sweep`). From it this module writes, beside it:

- ``findings.md``: the table of every accuracy and cost per configuration (mean ±
  std over seeds, paired differences with their t-intervals); the decisive
  comparisons of issue 23 (mixture soft and hard against two bases, mixture against
  base: the mean paired difference with its 95 % t-interval and paired t-test p over
  seeds, and per seed McNemar's exact test on the test images); and the provenance
  (commits, machines, wall time per seed).
- ``findings.png``: test accuracy against inference multiply-adds per image, one point
  per configuration and predictor, with 95 % t-intervals over seeds.

The findings are a pure function of the CSV, so a finished sweep's findings can be
rebuilt with newer analysis code without training anything again. Older CSVs lack some
columns; a section that cannot be computed from what a CSV has is left out.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from hmoe.stats import t_interval

logger = logging.getLogger("hmoe.findings")

__all__ = [
    "ACCURACIES",
    "COSTS",
    "DECISIVE",
    "POINTS",
    "decisive_table",
    "findings_figure",
    "findings_markdown",
    "mcnemar_table",
    "point_table",
    "read_findings",
    "summary_table",
    "t_interval",
    "write_findings",
]

# What findings.md averages, in this order (those a configuration has).
ACCURACIES = (
    "mixture_accuracy",
    "val_mixture_accuracy",
    "base_accuracy",
    "val_base_accuracy",
    "val_hard_accuracy",
    "val_soft_accuracy",
    "hard_accuracy",
    "soft_accuracy",
    "oracle_accuracy",
    "router_accuracy",
    "router_net_accuracy",
    "base_group_accuracy",
    "ensemble_accuracy",
    "product_control_accuracy",
    "equal_gates_control_accuracy",
    "two_bases_control_accuracy",
)
# Costs shown beside the accuracies (means over seeds).
COSTS = {
    "cost_train_gmacs_mixture": "train GMACs (base + specialists + router)",
    "cost_train_s_mixture": "train s",
    "cost_inference_mmacs_hard": "MMACs/image hard",
    "cost_inference_mmacs_soft": "MMACs/image soft",
}


@dataclass(frozen=True)
class Comparison:
    """A mixture's accuracy against a control's, seed by seed; ``name`` is the prefix of
    the McNemar columns the sweep writes for it (:data:`hmoe.sweep.PAIRS`), ``older``
    the prefix older sweeps wrote for the same test (the evaluate step's).
    """

    name: str
    label: str
    a: str  # the mixture's accuracy column
    b: str  # the control's
    a_label: str
    b_label: str
    older: str | None = None


TWO_BASES = "two_bases_control_accuracy"
# Issue 23's decisive comparisons: does the hierarchy beat an ensemble of the same cost?
DECISIVE = tuple(
    Comparison(name, f"{a_label} - {b_label}", a, b, a_label, b_label, older)
    for name, a, b, a_label, b_label, older in (
        ("soft_vs_two_bases", "soft_accuracy", TWO_BASES, "mixture (soft)", "two bases", None),
        ("hard_vs_two_bases", "hard_accuracy", TWO_BASES, "mixture (hard)", "two bases", None),
        ("mixture_vs_base", "mixture_accuracy", "base_accuracy", "mixture", "base", "vs_base"),
    )
)


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
ORACLE_LABEL = "oracle routing (upper bound, not deployable)"
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


def read_findings(path: Path) -> pd.DataFrame:
    """A sweep's findings.csv; commits and machines stay text (``1234567`` is a commit)."""
    return pd.read_csv(path, dtype={"commit": str, "machine": str})


# -- the configuration table ----------------------------------------------------------


def summary_table(frame: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per configuration: mean and std over seeds of each accuracy, and the
    paired differences (per seed) against the reference and against two bases.
    """
    out = []
    ref = frame[frame["config"] == reference].set_index("seed")["mixture_accuracy"]
    for name, group in frame.groupby("config", sort=False):
        row: dict[str, Any] = {"config": name, "seeds": len(group)}
        for key in ACCURACIES:
            if key in group and group[key].notna().any():
                row[f"{key}_mean"] = group[key].mean()
                row[f"{key}_std"] = group[key].std(ddof=1) if len(group) > 1 else float("nan")
        for key in COSTS:
            if key in group:
                row[key] = group[key].mean()
        mine = group.set_index("seed")["mixture_accuracy"]
        common = mine.index.intersection(ref.index)
        diff = (mine[common] - ref[common]).to_numpy()
        row |= dict(zip(_diff_cols("vs_reference"), t_interval(diff), strict=True))
        two = group.get("two_bases_control_accuracy")
        if two is not None and two.notna().any():
            d2 = (group["mixture_accuracy"] - two).to_numpy()
            row |= dict(zip(_diff_cols("vs_two_bases"), t_interval(d2), strict=True))
        d3 = (group["mixture_accuracy"] - group["base_accuracy"]).to_numpy()
        row |= dict(zip(_diff_cols("vs_base"), t_interval(d3), strict=True))
        out.append(row)
    return pd.DataFrame(out)


def _diff_cols(prefix: str) -> list[str]:
    return [f"{prefix}_{k}" for k in ("mean", "ci_low", "ci_high", "p")]


def _configuration_table(frame: pd.DataFrame, reference: str) -> str:
    """The wide table (every accuracy and cost), with its note."""
    table = summary_table(frame, reference)
    shown = [k for k in ACCURACIES if f"{k}_mean" in table]
    head = ["configuration", "seeds", *[k.removesuffix("_accuracy") for k in shown]]
    costs = [k for k in COSTS if k in table]
    head += [f"mixture - {reference} (95 % t-CI, p)", "mixture - base", "mixture - two bases"]
    head += [COSTS[k] for k in costs]
    lines = [_row(head), "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [str(r["config"]), str(int(r["seeds"]))]
        cells += [_pm(r.get(f"{k}_mean"), r.get(f"{k}_std")) for k in shown]
        for prefix in ("vs_reference", "vs_base", "vs_two_bases"):
            cells.append(_diff(r, prefix))
        cells += [f"{r[k]:,.0f}" if np.isfinite(r[k]) else "n/a" for k in costs]
        lines.append(_row(cells))
    seeds = sorted(frame["seed"].unique().tolist())
    note = (
        f"\nAccuracies: mean ± std over seeds {seeds} (test split unless marked val); "
        "differences: mean over seeds of the per-seed paired difference, in points, with "
        "its 95 % t-interval and paired t-test p (n/a with one seed). Costs: training "
        "image passes x forward multiply-adds of the networks the mixture uses (a reused "
        "network counts in every configuration that uses it), wall seconds of their "
        "training, and multiply-adds per test image with the test-time views.\n"
    )
    return "\n".join(lines) + "\n" + note


def _pm(mean: Any, std: Any) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    if std is None or not np.isfinite(std):
        return f"{100 * mean:.2f}"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _diff(r: pd.Series, prefix: str) -> str:
    mean = r.get(f"{prefix}_mean")
    if mean is None or not np.isfinite(mean):
        return "n/a"
    lo, hi, p = r.get(f"{prefix}_ci_low"), r.get(f"{prefix}_ci_high"), r.get(f"{prefix}_p")
    if lo is None or not np.isfinite(lo):
        return f"{100 * mean:+.2f}"
    p_text = f", p={p:.2g}" if p is not None and np.isfinite(p) else ""
    return f"{100 * mean:+.2f} ({100 * lo:+.2f} .. {100 * hi:+.2f}{p_text})"


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# -- the decisive comparisons ---------------------------------------------------------


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    """Whether every column is there with at least one number (old CSVs lack some)."""
    return all(c in frame and frame[c].notna().any() for c in columns)


def decisive_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and :data:`DECISIVE` comparison the CSV can compute: the mean
    paired difference over seeds (a fraction), its 95 % t-interval and paired t-test p.
    Paired by seed because both sides share the seed's data split and base, so what
    moves both together cancels out.
    """
    rows = []
    for name, group in frame.groupby("config", sort=False):
        for c in DECISIVE:
            if not _has(group, c.a, c.b):
                continue
            d = (group[c.a] - group[c.b]).to_numpy(dtype=float)
            mean, lo, hi, p = t_interval(d)
            n = int(np.isfinite(d).sum())
            rows.append(
                {"config": name, "comparison": c.label, "seeds": n}
                | {"mean": mean, "ci_low": lo, "ci_high": hi, "p": p}
            )
    return pd.DataFrame(rows)


def _mcnemar_prefix(frame: pd.DataFrame, c: Comparison) -> str | None:
    """The prefix of the comparison's McNemar columns in this CSV, if any."""
    for prefix in (c.name, c.older):
        if prefix and _has(frame, *(f"{prefix}_{k}" for k in ("only_a", "only_b", "mcnemar_p"))):
            return prefix
    return None


def mcnemar_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration x seed x comparison: the discordant counts on the test images
    (right only by the mixture, right only by the control) and McNemar's exact p, which
    a single seed's difference needs before it means anything.
    """
    rows = []
    for c in DECISIVE:
        prefix = _mcnemar_prefix(frame, c)
        if prefix is None:
            continue
        for _, r in frame.iterrows():
            if pd.isna(r[f"{prefix}_mcnemar_p"]):
                continue
            counts = {k: int(r[f"{prefix}_{k}"]) for k in ("only_a", "only_b")}
            rows.append(
                {"config": r["config"], "seed": int(r["seed"]), "comparison": c.name}
                | counts
                | {"p": float(r[f"{prefix}_mcnemar_p"])}
            )
    return pd.DataFrame(rows)


def _reading(lo: float, hi: float) -> str:
    """What the interval says in words: only an interval that excludes 0 settles it."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "one seed: no interval"
    if lo > 0:
        return "mixture higher"
    if hi < 0:
        return "mixture lower"
    return "not settled (interval spans 0)"


def _decisive_markdown(frame: pd.DataFrame) -> str:
    """The across-seeds table of the decisive comparisons ('' when none can be computed)."""
    table = decisive_table(frame)
    if table.empty:
        return ""
    head = [
        "configuration",
        "comparison",
        "seeds",
        "mean difference (points)",
        "95 % t-interval (points)",
        "paired t-test p",
        "reading",
    ]
    lines = [_row(head), "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        interval = (
            f"{100 * r['ci_low']:+.2f} .. {100 * r['ci_high']:+.2f}"
            if np.isfinite(r["ci_low"])
            else "n/a"
        )
        p = f"{r['p']:.2g}" if np.isfinite(r["p"]) else "n/a"
        cells = [
            str(r["config"]),
            r["comparison"],
            str(r["seeds"]),
            f"{100 * r['mean']:+.2f}",
            interval,
            p,
            _reading(r["ci_low"], r["ci_high"]),
        ]
        lines.append(_row(cells))
    note = (
        "\nEach seed gives one paired difference of test accuracy (both sides share the "
        "seed's split and base); the table gives their mean in points, its 95 % "
        "t-interval over the seeds and the paired t-test p. A reading needs an interval "
        "that excludes 0.\n"
    )
    if table["comparison"].str.contains("two bases").any():
        note += (
            "Two bases: the base's softmax averaged with a second base's (same recipe, "
            "another seed), the plain ensemble the hierarchy has to beat.\n"
        )
    return "\n".join(lines) + "\n" + note


def _mcnemar_markdown(frame: pd.DataFrame) -> str:
    """Per seed, the McNemar cells of each comparison present ('' when none)."""
    table = mcnemar_table(frame)
    if table.empty:
        return ""
    present = [c for c in DECISIVE if c.name in set(table["comparison"])]
    head = ["configuration", "seed", *[f"{c.a_label} vs {c.b_label}" for c in present]]
    lines = [_row(head), "|" + "---|" * len(head)]
    cells = table.set_index(["config", "seed", "comparison"])
    order = {c: i for i, c in enumerate(dict.fromkeys(frame["config"]))}
    keys = table[["config", "seed"]].drop_duplicates()
    keys = keys.sort_values(
        ["config", "seed"], key=lambda s: s.map(order) if s.name == "config" else s
    )
    for config, seed in keys.itertuples(index=False):
        row = [str(config), str(seed)]
        for c in present:
            key = (config, seed, c.name)
            if key not in cells.index:
                row.append("n/a")
                continue
            r = cells.loc[key]
            row.append(f"{int(r['only_a'])} / {int(r['only_b'])} (p={r['p']:.2g})")
        lines.append(_row(row))
    note = (
        "\nMcNemar's exact test per seed, on the test images: each cell gives the images "
        "only the first predictor gets right / the images only the second gets right, and "
        "the two-sided exact p (the discordant images are Binomial(n, 1/2) under no "
        "difference).\n"
    )
    return "\n".join(lines) + "\n" + note


# -- provenance -----------------------------------------------------------------------


def _texts(values: pd.Series) -> str:
    """The distinct recorded values of a text column, in order ('not recorded' if none)."""
    seen = [str(v) for v in values.dropna().unique() if str(v) not in ("", "nan")]
    return ", ".join(seen) if seen else "not recorded"


def _provenance_markdown(frame: pd.DataFrame) -> str:
    """Commits, machines and the wall time per seed, so a number can be traced to the
    code and the hardware that produced it ('' when the CSV records none of them).
    """
    if not any(c in frame for c in ("commit", "machine", "wall_s")):
        return ""
    lines = []
    for column, label in (("commit", "Commit(s)"), ("machine", "Machine(s)")):
        lines.append(f"- {label}: {_texts(frame[column]) if column in frame else 'not recorded'}")
    if "wall_s" in frame:
        head = ["seed", "configurations", "wall time (min)", "commit", "machine"]
        lines += ["", _row(head), "|" + "---|" * len(head)]
        for seed, group in frame.groupby("seed"):
            minutes = group["wall_s"].sum() / 60
            commit = _texts(group["commit"]) if "commit" in group else "not recorded"
            machine = _texts(group["machine"]) if "machine" in group else "not recorded"
            lines.append(_row([str(seed), str(len(group)), f"{minutes:.1f}", commit, machine]))
        per_seed = frame.groupby("seed")["wall_s"].sum() / 60
        lines.append(
            f"\nWall time per seed: every configuration of the seed, networks reused "
            f"across configurations counted once; mean {per_seed.mean():.1f} min over "
            f"{len(per_seed)} seed(s).\n"
        )
    return "\n".join(lines) + "\n"


# -- the markdown ---------------------------------------------------------------------


def findings_markdown(frame: pd.DataFrame, reference: str, picture: str | None = None) -> str:
    """findings.md: the configuration table first (the wide one), then the decisive
    comparisons, the per-seed McNemar table, the picture and the provenance, each only
    when the CSV has what it needs.
    """
    parts = [_configuration_table(frame, reference)]
    decisive, mcnemar = _decisive_markdown(frame), _mcnemar_markdown(frame)
    if decisive or mcnemar:
        parts.append("## The decisive comparisons\n\n" + decisive)
        if mcnemar:
            parts.append("### Per seed: McNemar on the test images\n\n" + mcnemar)
    if picture:
        parts.append(
            "## Accuracy against inference cost\n\n"
            f"![test accuracy against inference multiply-adds per image]({picture})\n\n"
            "One point per configuration and predictor, with its 95 % t-interval over the "
            "seeds; oracle routing (hollow) knows each image's true group, so it is an "
            "upper bound, not a deployable model, drawn just right of hard routing's cost (it "
            "runs one specialist per image, as hard routing does). With "
            "several configurations their points are set a little apart sideways.\n"
        )
    provenance = _provenance_markdown(frame)
    if provenance:
        parts.append("## Provenance\n\n" + provenance)
    return "\n".join(parts)


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


def findings_figure(frame: pd.DataFrame) -> Figure | None:
    """Test accuracy (%) against inference MMACs per image, one point per configuration
    and predictor, with 95 % t-intervals over seeds (None if the CSV has no such point).
    One configuration: a colour per predictor. Several: a colour per configuration and
    a marker per predictor, set a little apart sideways so their bars stay readable.
    Oracle routing is hollow and drawn beside hard routing's cost: not deployable.
    """
    points = point_table(frame)
    if points.empty:
        return None
    configs = list(dict.fromkeys(points["config"]))
    multi = len(configs) > 1
    span = max(float(points["mmacs"].max()), 1.0)
    fig, ax = plt.subplots(figsize=(11, 5.5))
    fig.subplots_adjust(left=0.07, right=0.7, bottom=0.1, top=0.93)  # legends at the right
    shared_drawn = False
    for i, pt in enumerate(POINTS):
        for j, config in enumerate(configs):
            rows = points[(points["kind"] == pt.kind) & (points["config"] == config)]
            if rows.empty:
                continue
            shared = multi and pt.control and (points["kind"] == pt.kind).sum() == 1
            shared_drawn |= shared
            colour = "black" if shared else f"C{j if multi else i}"
            dodge = 0.0 if shared or not multi else 0.012 * span * (j - (len(configs) - 1) / 2)
            dodge += 0.04 * span if pt.kind == "oracle" else 0.0
            _draw(ax, rows, pt, colour, dodge, None if multi else pt.label)
    _legend(ax, configs if multi else [], shared_drawn)
    seeds = sorted(frame["seed"].unique().tolist())
    ax.set_title(
        f"Test accuracy against inference cost, {len(seeds)} seed{'s' * (len(seeds) > 1)} "
        f"({', '.join(map(str, seeds))}); bars: 95 % t-interval over seeds",
        fontsize=10,
    )
    ax.set_xlabel("inference multiply-adds per image (millions, with the test-time views)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    return fig


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


def _legend(ax: Any, configs: Sequence[str], shared: bool) -> None:
    """Beside the axes: the predictors, and with several configurations their colours."""
    outside = {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.01, 1.0)}
    if not configs:
        ax.legend(**outside)
        return
    kinds = [
        Line2D(
            [],
            [],
            marker=pt.marker,
            ls="",
            color="gray",
            label=pt.label,
            mfc="none" if pt.kind == "oracle" else "gray",
        )
        for pt in POINTS
    ]
    ax.add_artist(ax.legend(handles=kinds, title="predictor", **outside))
    colours = [Line2D([], [], color=f"C{j}", label=c) for j, c in enumerate(configs)]
    if shared:
        colours.append(Line2D([], [], color="black", label="shared by all configurations"))
    ax.legend(handles=colours, title="configuration", **(outside | {"bbox_to_anchor": (1.01, 0.6)}))


# -- writing --------------------------------------------------------------------------


def write_findings(frame: pd.DataFrame, out: Path, reference: str) -> list[Path]:
    """Write ``out``/findings.png (when it has a point) and ``out``/findings.md; return
    the files written. The sweep and the CLI both come here, so they agree.
    """
    out.mkdir(parents=True, exist_ok=True)
    frame = _as_text(frame, ("commit", "machine"))
    written = []
    fig = findings_figure(frame)
    if fig is not None:
        fig.savefig(out / "findings.png", dpi=120)
        plt.close(fig)
        written.append(out / "findings.png")
    else:
        logger.warning("no accuracy with an inference cost in the rows: no findings.png")
    picture = "findings.png" if fig is not None else None
    (out / "findings.md").write_text(findings_markdown(frame, reference, picture))
    written.append(out / "findings.md")
    logger.info("findings written: %s", ", ".join(map(str, written)))
    return written


def _as_text(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Text columns as text (a CSV read without dtypes may make a commit a number)."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = frame[column].map(lambda v: v if pd.isna(v) else str(v))
    return frame


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Rebuild a sweep's findings.md and findings.png from its findings.csv."
    )
    parser.add_argument("folder", type=Path, help="the sweep's output folder")
    parser.add_argument(
        "--reference", help="the configuration the others are compared with (default: first)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    csv = args.folder / "findings.csv"
    if not csv.is_file():
        raise SystemExit(f"hmoe.findings: {csv} not found (run `python -m hmoe.sweep` first)")
    frame = read_findings(csv)
    configs = list(dict.fromkeys(frame["config"]))
    reference = args.reference or configs[0]
    if reference not in configs:
        raise SystemExit(f"hmoe.findings: --reference {reference!r} is not one of {configs}")
    write_findings(frame, args.folder, reference)
    print((args.folder / "findings.md").read_text())  # noqa: T201  (a CLI's output)


if __name__ == "__main__":
    main()
