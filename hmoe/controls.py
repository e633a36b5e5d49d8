"""Controls the mixture must beat, and paired statistics against them.

Each control is a distribution per image built from the same frozen outputs as the
mixture, so differences come from how the experts are combined, not from extra
networks. The oracle routing is an upper bound for a better router, not a control.
"""

from __future__ import annotations

import numpy as np

from hmoe.mixture import Outputs, combine, route_weights
from hmoe.stats import compare

# Controls that a person could deploy instead of the mixture (the oracle needs labels);
# two_bases only when the pipeline trained a second base (`controls.second_base`).
FAIR_CONTROLS = ("base", "product", "equal_gates", "ensemble", "two_bases")


def product(out: Outputs) -> np.ndarray:
    """Router x specialist without gates: sum_g r_g * ŝ_g (a distribution)."""
    return sum(out.router[:, g : g + 1] * s for g, s in enumerate(out.specs))


def equal_gates(out: Outputs, routing: str) -> np.ndarray:
    """The mixture with every gate fixed at 1/2 base, 1/2 specialist."""
    half = np.full((len(out.base), 2), 0.5, dtype=np.float32)
    return combine(route_weights(out.router, routing), [half] * len(out.specs), out.base, out.specs)


def control_predictions(
    out: Outputs,
    routing: str,
    ensemble_probs: np.ndarray,
    two_bases: np.ndarray | None = None,
) -> dict:
    """Predicted labels of every fair control (``two_bases``: the two-network ensemble's
    probabilities, when a second base was trained).
    """
    probs = {
        "base": out.base,
        "product": product(out),
        "equal_gates": equal_gates(out, routing),
        "ensemble": ensemble_probs,
    }
    if two_bases is not None:
        probs["two_bases"] = two_bases
    return {k: np.argmax(p, axis=1) for k, p in probs.items()}


def paired_metrics(
    mixture_pred: np.ndarray, controls: dict[str, np.ndarray], y: np.ndarray, seed: int = 0
) -> dict[str, float | str]:
    """Mixture vs base and vs the best fair control: paired bootstrap CI and McNemar p."""
    acc = {k: float(np.mean(p == y)) for k, p in controls.items()}
    best = max((k for k in controls if k != "base"), key=acc.__getitem__)
    # base and ensemble accuracies are already headline metrics: add only the new controls
    out: dict[str, float | str] = {
        f"{k}_control_accuracy": v for k, v in acc.items() if k not in ("base", "ensemble")
    }
    out |= compare(mixture_pred, controls["base"], y, seed).as_metrics("vs_base")
    out |= compare(mixture_pred, controls[best], y, seed).as_metrics("vs_best_control")
    out["best_control"] = best
    return out
