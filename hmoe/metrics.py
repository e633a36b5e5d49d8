"""Evaluation arithmetic on predicted distributions (numpy and scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, recall_score

# Every accuracy the evaluation reports (and the differences of two, in points), with
# what it measures: the one home of the figures' names. The run report's results table
# lists them in this order; findings.md's columns are a sweep's choice of them
# (hmoe.findings.tables.ACCURACIES, with the gates' val figures).
FIGURES = {
    "mixture_accuracy": "mixture",
    "base_accuracy": "base",
    "ensemble_accuracy": "ensemble (base + specialists, no routing)",
    "two_bases_control_accuracy": "two bases averaged (same recipe, another seed)",
    "product_control_accuracy": "router x specialist, no gates",
    "equal_gates_control_accuracy": "equal gates (1/2 base, 1/2 specialist)",
    "oracle_accuracy": "oracle routing (true group)",
    "oracle_two_bases_accuracy": "two bases told the true group (the oracle's control)",
    "hard_accuracy": "hard routing",
    "soft_accuracy": "soft routing",
    "router_accuracy": "routing (group accuracy, after mixture.router_fusion)",
    "router_net_accuracy": "router network alone (group accuracy)",
    "base_group_accuracy": "base's group marginal (group accuracy)",
    "routing_loss": "hard-routing loss (oracle - hard)",
    "lift_over_base": "lift over base",
    "lift_over_ensemble": "lift over ensemble",
}
# The headline, what users compare (`dvc exp show`, the log's last result line), in
# this order: the only keys of reports/metrics.json, so that `dvc exp show
# --only-changed` stays narrow. The rest (controls, paired statistics, costs, gate
# weights) goes to reports/eval/details.json and MLflow.
HEADLINE = (
    "mixture_accuracy",
    "base_accuracy",
    "hard_accuracy",
    "soft_accuracy",
    "router_accuracy",
    "oracle_accuracy",
    "two_bases_control_accuracy",
)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == y))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n))


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Recall of each class (NaN for a class absent from ``y_true``)."""
    return recall_score(
        y_true, y_pred, labels=np.arange(n), average=None, zero_division=np.nan
    ).astype(float)


def specialist_accuracy(
    spec_embedded: np.ndarray, y: np.ndarray, class_ids: Sequence[int]
) -> float:
    """Accuracy of a specialist on the images of its own group only."""
    mask = np.isin(y, class_ids)
    return accuracy(spec_embedded[mask], y[mask])


def summarise_history(history: dict[str, list[float]], *, monitor: str, mode: str) -> dict:
    """The best epoch's figures: ``monitor`` at its best, which epoch, how many ran."""
    values = history[monitor]
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return {
        monitor: float(values[best]),
        "best_epoch": best + 1,
        "epochs_run": len(values),
        **({"val_loss": float(history["val_loss"][best])} if "val_loss" in history else {}),
    }
