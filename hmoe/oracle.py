"""Oracle routing and its fair control, in numpy alone (the findings and `evaluate` both
use it; :mod:`hmoe.mixture` loads Keras through its gates).

Oracle routing is handed each image's true group and takes that group's branch. Its lead
over two averaged bases mixes two things: what the specialists and gates add, and the
label information it is handed. The fair control is handed the same information: two
bases' average cut to the true group's classes and renormalised (:func:`given_group`).
It lives apart from :mod:`hmoe.evidence`, so that the evidence format, a dep of
`train_gates`, does not change with an analysis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hmoe.evidence import SplitEvidence, branch


def given_group(
    probs: np.ndarray, true_group: np.ndarray, group_of_class: Sequence[int]
) -> np.ndarray:
    """``probs`` told each image's true group: cut to that group's classes and
    renormalised (a row with no mass left stays all zeros)."""
    allowed = np.asarray(group_of_class)[None, :] == np.asarray(true_group)[:, None]
    cut = np.where(allowed, probs, 0.0).astype(np.float32)
    return cut / np.maximum(cut.sum(axis=1, keepdims=True), np.float32(1e-12))


def group_of_class(ev: SplitEvidence) -> np.ndarray:
    """(C,) each class's group in saved evidence: the group whose specialist covers it
    (an embedded specialist is exactly zero outside its classes)."""
    owner = np.stack([spec.sum(axis=0) > 0 for spec in ev.specialists])
    return np.argmax(owner, axis=0)


def true_group(ev: SplitEvidence) -> np.ndarray:
    """(N,) each image's true group, what oracle routing is handed."""
    return group_of_class(ev)[ev.y]


def oracle(ev: SplitEvidence) -> np.ndarray:
    """Oracle routing's distribution: the true group's gated branch, as `evaluate`
    scores it (``combine(one_hot(true group), ...)`` in :mod:`hmoe.mixture`)."""
    route = np.eye(len(ev.specialists), dtype=np.float32)[true_group(ev)]
    return sum(
        route[:, g : g + 1] * branch(w, ev.base, spec)
        for g, (w, spec) in enumerate(zip(ev.gate_weights(), ev.specialists, strict=True))
    )
