"""Groups as a discovery: partition the classes by how often the base confuses them.

HD-CNN (arXiv 1410.0736) builds its coarse categories by spectral clustering of the
base network's confusion matrix on held-out images: classes the base mixes up end
in one group, where a specialist can learn to tell them apart.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import SpectralClustering

from hmoe.groups import Groups

logger = logging.getLogger(__name__)


def confusion_affinity(confusion: np.ndarray) -> np.ndarray:
    """Symmetric affinity between classes: row-normalised confusion, plus its transpose."""
    cm = np.asarray(confusion, dtype=np.float64)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    np.fill_diagonal(rates, 0.0)
    affinity = (rates + rates.T) / 2.0
    return affinity + 1e-6  # keep the graph connected so the spectrum is defined


def spectral_groups(
    confusion: np.ndarray, classes: Sequence[str], n_groups: int, seed: int = 0
) -> dict[str, list[str]]:
    """``n_groups`` named groups of class names, ordered by their first class."""
    if not 2 <= n_groups < len(classes):
        raise ValueError(f"n_groups must be in 2..{len(classes) - 1}, got {n_groups}")
    affinity = confusion_affinity(confusion)
    labels = SpectralClustering(
        n_clusters=n_groups, affinity="precomputed", random_state=seed, assign_labels="discretize"
    ).fit_predict(affinity)
    labels = merge_singletons(labels, affinity, classes)
    order = sorted(set(labels.tolist()), key=lambda g: int(np.flatnonzero(labels == g)[0]))
    return {
        f"group{i + 1}": [classes[c] for c in np.flatnonzero(labels == g)]
        for i, g in enumerate(order)
    }


def merge_singletons(
    labels: np.ndarray, affinity: np.ndarray, classes: Sequence[str]
) -> np.ndarray:
    """Move every one-class cluster into the cluster it is most confused with.

    A one-class group cannot have a specialist (nothing to tell apart), so the
    discovered partition may have fewer groups than asked; a warning says so.
    """
    labels = np.asarray(labels).copy()
    while True:
        ids, counts = np.unique(labels, return_counts=True)
        singles = ids[counts == 1]
        if singles.size == 0 or ids.size <= 2:
            return labels
        c = int(np.flatnonzero(labels == singles[0])[0])
        others = [g for g in ids if g != singles[0]]
        target = max(others, key=lambda g: affinity[c, labels == g].sum())
        logger.warning("auto groups: %s alone in a group, merged into its closest", classes[c])
        labels[c] = target


def discover(confusion: np.ndarray, classes: Sequence[str], count: int, seed: int) -> Groups:
    """``groups: auto``: the partition from the base's held-out confusions."""
    found = spectral_groups(confusion, classes, count, seed)
    if len(found) < count:
        logger.warning("auto groups: %d groups found of %d asked", len(found), count)
    return Groups.from_dict(found, classes)
