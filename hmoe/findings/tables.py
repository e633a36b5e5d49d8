"""The findings' tables, from a sweep's findings.csv: every accuracy per configuration,
the decisive paired comparisons over seeds, McNemar per seed, and the provenance.

Every "±" in them is a standard deviation over seeds, and says so; every interval is a
95 % t-interval of the per-seed paired differences (:func:`hmoe.stats.t_interval`), which
holds the test images fixed, or, where the labels allow and the column says so, a
bootstrap over seeds and test images together (:func:`hmoe.stats.seed_image_bootstrap`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hmoe.stats import compare, seed_image_bootstrap, t_interval

# What findings.md averages, in this order (those a configuration has): figures of
# hmoe.metrics.FIGURES, each next to the gates' val figure of the same name when a
# sweep has it (tests/unit/test_findings.py keeps the two in step).
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
    "oracle_two_bases_accuracy",
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
    """A mixture's accuracy against a control's, seed by seed: the accuracy columns of
    findings.csv (``a``, ``b``) and the predictors' names in the labels files (``a_key``,
    ``b_key``), from which McNemar is computed image by image.
    """

    name: str
    a: str  # the mixture's accuracy column
    b: str  # the control's
    a_label: str
    b_label: str
    a_key: str
    b_key: str

    @property
    def label(self) -> str:
        return f"{self.a_label} - {self.b_label}"


TWO_BASES = "two_bases_control_accuracy"
# The decisive comparisons: does the hierarchy beat an ensemble of similar cost (issue
# 23), its base, and the same mixture with every gate fixed at 1/2 (issue 33)?
DECISIVE = (
    Comparison(
        "soft_vs_two_bases", "soft_accuracy", TWO_BASES, "mixture (soft)", "two bases",
        "soft", "two_bases",
    ),
    Comparison(
        "hard_vs_two_bases", "hard_accuracy", TWO_BASES, "mixture (hard)", "two bases",
        "hard", "two_bases",
    ),
    Comparison(
        "mixture_vs_base", "mixture_accuracy", "base_accuracy", "mixture", "base",
        "mixture", "base",
    ),
    Comparison(
        "mixture_vs_equal_gates", "mixture_accuracy", "equal_gates_control_accuracy",
        "mixture", "fixed 1/2 gates", "mixture", "equal_gates",
    ),
)  # fmt: skip
Labels = Mapping[tuple[str, int], Mapping[str, np.ndarray]]  # (config, seed) -> name -> labels


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
    head = ["configuration", "seeds", *[f"{k.removesuffix('_accuracy')} (± sd)" for k in shown]]
    costs = [k for k in COSTS if k in table]
    head += [f"mixture - {reference} (95 % t-CI, p)", "mixture - base", "mixture - two bases"]
    head += [COSTS[k] for k in costs]
    lines = header(head)
    for _, r in table.iterrows():
        cells = [str(r["config"]), str(int(r["seeds"]))]
        cells += [_pm(r.get(f"{k}_mean"), r.get(f"{k}_std")) for k in shown]
        for prefix in ("vs_reference", "vs_base", "vs_two_bases"):
            cells.append(_diff(r, prefix))
        cells += [f"{r[k]:,.0f}" if np.isfinite(r[k]) else "n/a" for k in costs]
        lines.append(_row(cells))
    seeds = sorted(frame["seed"].unique().tolist())
    note = (
        f"\nAccuracies: mean ± sd (the standard deviation over seeds {seeds}, not an "
        "interval; test split unless marked val); "
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


def header(cells: Sequence[str]) -> list[str]:
    """A markdown table's first two lines."""
    return [_row(cells), "|" + "---|" * len(cells)]


# -- the decisive comparisons ---------------------------------------------------------


def _has(frame: pd.DataFrame, *columns: str) -> bool:
    """Whether every column is there with at least one number (old CSVs lack some)."""
    return all(c in frame and frame[c].notna().any() for c in columns)


def decisive_table(frame: pd.DataFrame, labels: Labels | None = None) -> pd.DataFrame:
    """Per configuration and :data:`DECISIVE` comparison the CSV can compute: the mean
    paired difference over seeds (a fraction), its 95 % t-interval and paired t-test p.
    Paired by seed because both sides share the seed's data split and base, so what
    moves both together cancels out. The t-interval treats the test set as fixed; where
    ``labels`` hold every seed's test labels of both sides, ``boot_low`` .. ``boot_high``
    is the interval with the test images' sampling added (NaN otherwise).
    """
    rows = []
    for name, group in frame.groupby("config", sort=False):
        for c in DECISIVE:
            if not _has(group, c.a, c.b):
                continue
            d = (group[c.a] - group[c.b]).to_numpy(dtype=float)
            mean, lo, hi, p = t_interval(d)
            n = int(np.isfinite(d).sum())
            boot = _image_bootstrap(name, group["seed"], c, labels or {})
            rows.append(
                {"config": name, "comparison": c.label, "seeds": n}
                | {"mean": mean, "ci_low": lo, "ci_high": hi, "p": p}
                | {"boot_low": boot[0], "boot_high": boot[1]}
            )
    return pd.DataFrame(rows)


def _image_bootstrap(
    config: str, seeds: Iterable[int], c: Comparison, labels: Labels
) -> tuple[float, float]:
    """The seeds-and-images bootstrap of one comparison, from every seed's test labels;
    NaN when a seed's labels are missing or the seeds were not scored on one test set."""
    found = [labels.get((config, int(s))) for s in seeds]
    if not found or any(f is None or c.a_key not in f or c.b_key not in f for f in found):
        return float("nan"), float("nan")
    y = found[0]["y"]
    if any(len(f["y"]) != len(y) or np.any(f["y"] != y) for f in found):
        return float("nan"), float("nan")
    d = np.stack([(f[c.a_key] == y).astype(float) - (f[c.b_key] == y) for f in found])
    return seed_image_bootstrap(d)


def machine_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per configuration, :data:`DECISIVE` comparison and machine: the seeds and their
    mean paired difference. Pooling seeds across CPUs assumes the difference depends on
    neither the CPU nor what else changed between the runs; this shows each part apart.
    """
    if "machine" not in frame or frame["machine"].nunique() < 2:
        return pd.DataFrame()
    rows = []
    for (name, machine), group in frame.groupby(["config", "machine"], sort=False):
        for c in DECISIVE:
            if _has(group, c.a, c.b):
                d = (group[c.a] - group[c.b]).to_numpy(dtype=float)
                seeds = ", ".join(str(s) for s in sorted(group["seed"]))
                rows.append(
                    {"config": name, "comparison": c.label, "machine": machine}
                    | {"seeds": seeds, "mean": float(np.nanmean(d))}
                )
    return pd.DataFrame(rows)


def mcnemar_table(labels: Labels) -> pd.DataFrame:
    """Per configuration x seed x comparison, from the saved test labels: the
    discordant counts (right only by the mixture, right only by the control) and
    McNemar's exact p (:func:`hmoe.stats.compare`), which a single seed's difference
    needs before it means anything.
    """
    rows = []
    for (config, seed), found in labels.items():
        for c in DECISIVE:
            if c.a_key not in found or c.b_key not in found:
                continue
            paired = compare(found[c.a_key], found[c.b_key], found["y"], seed)
            rows.append(
                {"config": config, "seed": int(seed), "comparison": c.name}
                | {"only_a": paired.only_a, "only_b": paired.only_b, "p": paired.mcnemar_p}
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


def _decisive_markdown(frame: pd.DataFrame, labels: Labels | None = None) -> str:
    """The across-seeds table of the decisive comparisons ('' when none can be computed),
    then, when the seeds ran on more than one machine, each machine's part."""
    table = decisive_table(frame, labels)
    if table.empty:
        return ""
    head = [
        "configuration",
        "comparison",
        "seeds",
        "mean difference (points)",
        "95 % t-interval (points)",
        "paired t-test p",
        "95 % bootstrap over seeds and test images (points)",
        "reading",
    ]
    lines = header(head)
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
            _span(r["boot_low"], r["boot_high"]),
            _reading(r["ci_low"], r["ci_high"]),
        ]
        lines.append(_row(cells))
    note = (
        "\nEach seed gives one paired difference of test accuracy (both sides share the "
        "seed's split and base); the table gives their mean in points, its 95 % "
        "t-interval over the seeds and the paired t-test p. That interval holds the "
        "10,000 test images fixed: it says how far another seed would move the "
        "difference on these images, not on new ones. The bootstrap column adds the "
        "test images' sampling (percentile interval; each of 10,000 replicates draws "
        "the seeds and, once for all of them, the test images with replacement, pairs "
        "kept; from the saved labels, n/a without them). The reading uses the t-interval "
        "and needs it to exclude 0.\n"
    )
    if table["comparison"].str.contains("two bases").any():
        note += (
            "Two bases: the base's softmax averaged with a second base's (same recipe, "
            "another seed), the plain ensemble the hierarchy has to beat.\n"
        )
    return "\n".join(lines) + "\n" + note + _machine_markdown(frame)


def _span(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    return f"{100 * lo:+.2f} .. {100 * hi:+.2f}"


def _machine_markdown(frame: pd.DataFrame) -> str:
    """Each machine's mean difference ('' when every seed ran on one machine)."""
    table = machine_table(frame)
    if table.empty:
        return ""
    machines = list(dict.fromkeys(table["machine"]))
    lines = ["", *header(["configuration", "comparison", *[f"{m}" for m in machines]])]
    for (config, comparison), at in table.groupby(["config", "comparison"], sort=False):
        by = at.set_index("machine")
        cells = [
            f"{100 * by.loc[m, 'mean']:+.2f} (seeds {by.loc[m, 'seeds']})"
            if m in by.index
            else "n/a"
            for m in machines
        ]
        lines.append(_row([str(config), comparison, *cells]))
    note = (
        "\nBy machine: the mean paired difference, in points, of the seeds each machine "
        "ran (too few for an interval each). The pooled figures above assume the "
        "difference depends neither on the CPU nor on whatever else changed between the "
        "machines' runs (the commit is in the provenance below).\n"
    )
    return "\n".join(lines) + "\n" + note


def _mcnemar_markdown(frame: pd.DataFrame, labels: Labels) -> str:
    """Per seed, the McNemar cells of each comparison present ('' when none)."""
    table = mcnemar_table(labels)
    if table.empty:
        return ""
    present = [c for c in DECISIVE if c.name in set(table["comparison"])]
    head = ["configuration", "seed", *[f"{c.a_label} vs {c.b_label}" for c in present]]
    lines = header(head)
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
        lines += ["", *header(head)]
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
