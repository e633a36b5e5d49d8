"""The report's figures: pure functions from the arrays the evaluate stage has to
matplotlib figures (:mod:`hmoe.report` writes them with the pages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from hmoe.metrics import confusion, per_class_accuracy

MARKED_EPOCHS = 20  # curves this short get a marker per epoch (one epoch: a lone point)


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
        marker = "o" if len(h) <= MARKED_EPOCHS else None
        for col, style in (("accuracy", "--"), ("val_accuracy", "-")):
            if col in h:
                ax.plot(
                    h["epoch"] + 1, h[col], style, marker=marker, markersize=4,
                    label=col.replace("_", " "),
                )  # fmt: skip
        ax.set_title(name, fontsize=10)
        _epoch_axis(ax, int(h["epoch"].max()) + 1 if len(h) else 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(histories) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _epoch_axis(ax, epochs: int) -> None:
    """Whole epochs on the x axis, with room around a lone point (one epoch)."""
    ax.set_xlim(0.5, epochs + 0.5)
    if epochs <= MARKED_EPOCHS:
        ax.set_xticks(range(1, epochs + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def routing_gates_figure(
    y: np.ndarray,
    router_probs: np.ndarray,
    gate_ws: Sequence[np.ndarray],
    classes: Sequence[str],
    group_names: Sequence[str],
):
    """Where the router sends each true class, and how much each gate trusts its
    specialist there.
    """
    n = len(classes)
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
    return fig


def save_figure(fig, path: Path) -> Path:
    """Save at the report's resolution and free the figure."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
