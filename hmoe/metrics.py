"""Evaluation arithmetic on predicted distributions (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    if len(y) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probs, axis=1) == y))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    out = np.zeros((n, n), dtype=np.int64)
    np.add.at(out, (y_true, y_pred), 1)
    return out


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    cm = confusion(y_true, y_pred, n)
    totals = cm.sum(axis=1)
    return np.divide(np.diag(cm), totals, out=np.full(n, np.nan), where=totals > 0)


def specialist_accuracy(
    spec_embedded: np.ndarray, y: np.ndarray, class_ids: Sequence[int]
) -> float:
    """Accuracy of a specialist on the images of its own group only."""
    mask = np.isin(y, class_ids)
    return accuracy(spec_embedded[mask], y[mask])
