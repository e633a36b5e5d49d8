"""The one-minute report: PNG figures plus Markdown and HTML pages.

Pure plotting over arrays the evaluate stage already has; writing happens in
:func:`write_report`, which returns the files it wrote.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hmoe.metrics import confusion, per_class_accuracy

logger = logging.getLogger(__name__)

HEADLINE = (
    ("mixture_accuracy", "mixture"),
    ("base_accuracy", "base"),
    ("ensemble_accuracy", "ensemble (base + specialists, no routing)"),
    ("two_bases_control_accuracy", "two bases averaged (same recipe, another seed)"),
    ("product_control_accuracy", "router x specialist, no gates"),
    ("equal_gates_control_accuracy", "equal gates (1/2 base, 1/2 specialist)"),
    ("oracle_accuracy", "oracle routing (true group)"),
    ("hard_accuracy", "hard routing"),
    ("soft_accuracy", "soft routing"),
    ("router_accuracy", "routing (group accuracy, after mixture.router_fusion)"),
    ("router_net_accuracy", "router network alone (group accuracy)"),
    ("base_group_accuracy", "base's group marginal (group accuracy)"),
    ("routing_loss", "hard-routing loss (oracle - hard)"),
    ("lift_over_base", "lift over base"),
    ("lift_over_ensemble", "lift over ensemble"),
)


def _heat(ax, matrix, xlabels, ylabels, title, fmt="{:.0f}", cmap="Blues"):
    ax.imshow(matrix, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(ylabels)), ylabels, fontsize=8)
    ax.set_title(title, fontsize=10)
    hi = np.nanmax(matrix) if matrix.size else 1
    for (i, j), v in np.ndenumerate(matrix):
        color = "white" if v > 0.6 * hi else "black"
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color=color)


def confusion_figure(y, base_pred, mix_pred, classes: Sequence[str]):
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    n = len(classes)
    for ax, pred, name in zip(axes, (base_pred, mix_pred), ("base", "mixture"), strict=True):
        _heat(ax, confusion(y, pred, n), classes, classes, f"{name}: rows true, cols predicted")
    fig.tight_layout()
    return fig


def per_class_figure(y, base_pred, mix_pred, classes: Sequence[str]):
    n = len(classes)
    fig, ax = plt.subplots(figsize=(9, 4))
    idx = np.arange(n)
    ax.bar(idx - 0.2, per_class_accuracy(y, base_pred, n), 0.4, label="base")
    ax.bar(idx + 0.2, per_class_accuracy(y, mix_pred, n), 0.4, label="mixture")
    ax.set_xticks(idx, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend()
    fig.tight_layout()
    return fig


def routing_matrix(y, router_probs, n_classes: int) -> np.ndarray:
    """Fraction of each true class the router sends to each group (rows sum to 1)."""
    route = np.argmax(router_probs, axis=1)
    counts = confusion(y, route, max(n_classes, router_probs.shape[1]))[:n_classes]
    counts = counts[:, : router_probs.shape[1]]
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def gate_matrix(y, gate_ws: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Mean weight each group's gate gives its specialist, per true class."""
    out = np.full((n_classes, len(gate_ws)), np.nan)
    for c in range(n_classes):
        mask = y == c
        if mask.any():
            out[c] = [w[mask, 1].mean() for w in gate_ws]
    return out


def curves_figure(histories: Mapping[str, pd.DataFrame]):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, h in histories.items():
        for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
            for col, style in ((metric, "--"), (f"val_{metric}", "-")):
                if col in h:
                    ax.plot(h["epoch"] + 1, h[col], style, label=f"{name} {col}")
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def write_report(
    out_dir: Path,
    *,
    metrics: Mapping[str, float],
    y: np.ndarray,
    base_pred: np.ndarray,
    mix_pred: np.ndarray,
    router_probs: np.ndarray,
    gate_ws: Sequence[np.ndarray],
    classes: Sequence[str],
    group_names: Sequence[str],
    histories: Mapping[str, pd.DataFrame],
    best_control: str | None = None,
    partition: Mapping[str, Sequence[str]] | None = None,
    partition_source: str = "params",
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(classes)
    figures = {
        "confusion.png": confusion_figure(y, base_pred, mix_pred, classes),
        "per_class.png": per_class_figure(y, base_pred, mix_pred, classes),
        "curves.png": curves_figure(histories),
    }
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    _heat(
        axes[0],
        routing_matrix(y, router_probs, n),
        group_names,
        classes,
        "router: share of each true class sent to each group",
        "{:.2f}",
    )
    _heat(
        axes[1],
        gate_matrix(y, gate_ws, n),
        group_names,
        classes,
        "gates: mean weight on the specialist",
        "{:.2f}",
        cmap="Oranges",
    )
    fig.tight_layout()
    figures["routing_gates.png"] = fig
    written = []
    for name, f in figures.items():
        f.savefig(out_dir / name, dpi=110)
        plt.close(f)
        written.append(out_dir / name)
    rows = [(label, metrics[key]) for key, label in HEADLINE if key in metrics]
    rows += [
        (f"specialist {g} (on its classes)", metrics[f"specialist_{g}_accuracy"])
        for g in group_names
        if f"specialist_{g}_accuracy" in metrics
    ]
    md = ["# hmoe report (test split)", "", "| figure | value |", "|---|---|"]
    md += [f"| {label} | {value:.4f} |" for label, value in rows]
    md += _lift_table(metrics, best_control)
    if partition:
        md += ["", f"## Groups ({partition_source})", "", "| group | classes |", "|---|---|"]
        md += [f"| {g} | {', '.join(members)} |" for g, members in partition.items()]
    for name in figures:
        md += ["", f"![{name}]({name})"]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    table = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{value:.4f}</td></tr>" for label, value in rows
    )
    imgs = "".join(f'<p><img src="{name}" style="max-width:100%"></p>' for name in figures)
    (out_dir / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>hmoe report</title></head>"
        f"<body><h1>hmoe report (test split)</h1><table border='1'>{table}</table>{imgs}"
        "</body></html>\n"
    )
    written += [out_dir / "report.md", out_dir / "report.html"]
    logger.info("report written to %s", out_dir)
    return written


def _lift_table(metrics: Mapping[str, float], best_control: str | None) -> list[str]:
    """Paired statistics of the mixture's lift (bootstrap 95 % interval, McNemar p)."""
    against = [("vs_base", "base"), ("vs_best_control", f"best control ({best_control})")]
    lines = [
        "",
        "## Is the lift real? (paired, on the same test images)",
        "",
        "| mixture vs | difference | 95 % interval | only mixture right | only other right "
        "| McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in against:
        if f"{key}_diff" not in metrics:
            continue
        lines.append(
            f"| {label} | {metrics[f'{key}_diff']:+.4f} | {metrics[f'{key}_ci_low']:+.4f} .. "
            f"{metrics[f'{key}_ci_high']:+.4f} | {metrics[f'{key}_only_a']:.0f} | "
            f"{metrics[f'{key}_only_b']:.0f} | {metrics[f'{key}_mcnemar_p']:.3g} |"
        )
    return lines if len(lines) > 5 else []


def read_histories(reports: Path) -> dict[str, pd.DataFrame]:
    """Every training stage's history (CSV) under reports/, by stage (and group) name."""
    out = {}
    for path in sorted(reports.glob("train_*/**/*.csv")):
        name = "/".join(path.relative_to(reports).with_suffix("").parts)
        name = name.removesuffix("/history").replace("/history/", "/")
        if name != "train_gates":
            out[name] = pd.read_csv(path)
    return out
