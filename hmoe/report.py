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
    """One panel per network of this run: train (dashed) and val (solid) accuracy."""
    n = max(1, len(histories))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, h) in zip(axes.flat, histories.items(), strict=False):
        for col, style in (("accuracy", "--"), ("val_accuracy", "-")):
            if col in h:
                ax.plot(h["epoch"] + 1, h[col], style, label=col.replace("_", " "))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


CAPTIONS = {
    "confusion.png": "Confusion matrices on the test split, base (left) and mixture (right): "
    "rows are the true class, columns the predicted one.",
    "per_class.png": "Test accuracy per class, base against mixture.",
    "routing_gates.png": "Left: the share of each true class the router sends to each group "
    "(a perfect router puts 1.00 in its group's column). Right: the mean weight each group's "
    "gate puts on its specialist, per true class.",
    "curves.png": "Training curves of every network this run trained: train (dashed) and "
    "validation (solid) accuracy per epoch.",
}


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
    provenance: Mapping[str, str] | None = None,
) -> list[Path]:
    """The figures, report.md and report.html: provenance first, then the results with
    their intervals and costs, then the captioned figures.
    """
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
    prov = list((provenance or {}).items())
    md = ["# hmoe report", "", "## Provenance", "", "| what | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in prov]
    md += ["", "## Results (test split)", "", "| figure | value |", "|---|---|"]
    md += [f"| {label} | {value:.4f} |" for label, value in rows]
    lift = _lift_table(metrics, best_control)
    md += lift
    costs = [(k, v) for k, v in metrics.items() if k.startswith("cost_")]
    if costs:
        md += ["", "## Costs", "", "| cost | value |", "|---|---|"]
        md += [f"| {k.removeprefix('cost_')} | {v:,.1f} |" for k, v in costs]
    if partition:
        md += ["", f"## Groups ({partition_source})", "", "| group | classes |", "|---|---|"]
        md += [f"| {g} | {', '.join(members)} |" for g, members in partition.items()]
    md += ["", "## Figures"]
    for name in figures:
        md += ["", f"![{name}]({name})", "", f"*{CAPTIONS.get(name, name)}*"]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")
    (out_dir / "report.html").write_text(_html(md))
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


def read_histories(files: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    """The epoch logs of the networks this run trained (label -> history CSV); a
    missing file (a network not trained, e.g. no second base) is left out.
    """
    return {name: pd.read_csv(path) for name, path in files.items() if Path(path).is_file()}


def _html(md: Sequence[str]) -> str:
    """A small, dependency-free rendering of the report's Markdown lines: headings,
    tables, figures with captions.
    """
    out, table = [], []

    def flush() -> None:
        if not table:
            return
        cells = [[c.strip() for c in row.strip("|").split("|")] for row in table]
        head, body = cells[0], [r for r in cells[1:] if not set("".join(r)) <= {"-"}]
        out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head)
                   + "</tr></thead><tbody>" + "".join(
                       "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                       for r in body) + "</tbody></table>")  # fmt: skip
        table.clear()

    for line in md:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            out.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(src)}">')
        elif line.startswith("*") and line.endswith("*"):
            out.append(f"<figcaption>{html.escape(line.strip('*'))}</figcaption></figure>")
        elif line:
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;"
        "padding:.2em .6em;text-align:left}img{max-width:100%}figcaption{color:#444}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hmoe report</title>"
        f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n"
    )
