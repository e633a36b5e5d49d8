"""Evaluation arithmetic on predicted distributions (numpy and scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, recall_score

# What users compare (`dvc exp show`, the report), in this order: the only keys of
# reports/metrics.json, so that `dvc exp show --only-changed` stays narrow. The rest
# (controls, paired statistics, costs, gate weights) goes to reports/eval/details.json
# and MLflow.
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
