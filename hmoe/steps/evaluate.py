"""Step `evaluate`: the mixture and every control on the test split, with paired
statistics. The only step that reads the test split; it selects nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from hmoe.controls import FAIR_CONTROLS, ORACLE_CONTROL, ROUTED, all_probs
from hmoe.costs import multiply_adds
from hmoe.metrics import HEADLINE, accuracy, specialist_accuracy
from hmoe.mixture import Mixture, Outputs, group_marginal, tta_views
from hmoe.stats import compare


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # every figure, headline first (MLflow, the report)
    best_control: str  # the fair control with the highest accuracy
    labels: dict[str, np.ndarray]  # predicted labels: mixture, every routing and control
    router_probs: np.ndarray  # (N, G)
    gate_weights: list[np.ndarray]  # per group (N, 2): weight on base, on specialist
    outputs: Outputs  # every network's dense outputs, as scored (the evidence's)
    second_base: np.ndarray | None  # the second base's probabilities, when trained

    @property
    def headline(self) -> dict[str, float]:
        """What reports/metrics.json holds, the one DVC metric."""
        return {k: v for k, v in self.metrics.items() if k in HEADLINE}

    @property
    def details(self) -> dict[str, float]:
        """The other figures, a plain output (reports/eval/details.json)."""
        return {k: v for k, v in self.metrics.items() if k not in HEADLINE}


def evaluate(
    mixture: Mixture,
    test: tuple[np.ndarray, np.ndarray],
    *,
    second_base: keras.Model | None = None,
    seed: int = 0,
) -> Evaluation:
    """Score the mixture (its own routing), the other routings and every fair control;
    compare the mixture with the base and with the best control, image by image.
    """
    x, y = test
    groups = mixture.groups
    out = mixture.outputs(x)
    weights = mixture.gate_weights(out)
    true_group = groups.labels(y)
    second = None if second_base is None else mixture.predict_network(second_base, x)
    probs = all_probs(out, weights, true_group, mixture.routing, second, groups.group_of_label())
    mixed = probs[mixture.routing]
    metrics = {
        "base_accuracy": accuracy(out.base, y),
        "router_accuracy": accuracy(out.router, true_group),
        "mixture_accuracy": accuracy(mixed, y),
        **{f"{k}_accuracy": accuracy(probs[k], y) for k in (*ROUTED, "ensemble")},
    }
    for g, name in enumerate(groups.names):
        ids = groups.class_ids(name)
        metrics[f"specialist_{name}_accuracy"] = specialist_accuracy(out.specs[g], y, ids)
        metrics[f"gate_{name}_specialist_weight"] = float(weights[g][:, 1].mean())
    metrics["routing_loss"] = metrics["oracle_accuracy"] - metrics["hard_accuracy"]
    if ORACLE_CONTROL in probs:  # oracle routing against two bases told the same group
        metrics[f"{ORACLE_CONTROL}_accuracy"] = accuracy(probs[ORACLE_CONTROL], y)
    if out.router_net is not None:
        metrics["router_net_accuracy"] = accuracy(out.router_net, true_group)
    metrics["base_group_accuracy"] = accuracy(group_marginal(out.base, groups), true_group)
    metrics |= inference_cost(mixture)
    metrics["lift_over_base"] = metrics["mixture_accuracy"] - metrics["base_accuracy"]
    metrics["lift_over_ensemble"] = metrics["mixture_accuracy"] - metrics["ensemble_accuracy"]
    metrics["mixture_rows_sum_max_error"] = float(np.abs(mixed.sum(axis=1) - 1).max())
    labels = {k: np.argmax(p, axis=1) for k, p in probs.items()}
    labels["mixture"] = np.argmax(mixed, axis=1)
    paired, best = paired_metrics(labels, y, seed)
    metrics |= paired
    headline = {k: metrics[k] for k in HEADLINE if k in metrics}
    return Evaluation(headline | metrics, best, labels, out.router, weights, out, second)


def paired_metrics(
    labels: dict[str, np.ndarray], y: np.ndarray, seed: int = 0
) -> tuple[dict[str, float], str]:
    """Mixture vs base and vs the best fair control: paired bootstrap CI and McNemar p;
    and the name of that best control.
    """
    controls = [k for k in FAIR_CONTROLS if k in labels]
    acc = {k: float(np.mean(labels[k] == y)) for k in controls}
    best = max((k for k in controls if k != "base"), key=acc.__getitem__)
    # base and ensemble accuracies are already headline metrics: add only the others
    out = {f"{k}_control_accuracy": v for k, v in acc.items() if k not in ("base", "ensemble")}
    out |= compare(labels["mixture"], labels["base"], y, seed).as_metrics("vs_base")
    out |= compare(labels["mixture"], labels[best], y, seed).as_metrics("vs_best_control")
    return out, best


def inference_cost(mixture: Mixture) -> dict[str, float]:
    """Multiply-adds per test image (millions), with the mixture's test-time views:
    hard routing runs the router, the base and one specialist (the largest); soft
    routing runs every network; the two-bases control, two bases. A router that is a
    head on the base's trunk costs only its head: the mixture runs that trunk once.
    """
    views = len(tta_views(np.zeros((1, 32, 32, 3), np.uint8), mixture.tta))
    head = mixture.shared_router_head()
    router = multiply_adds(head if head is not None else mixture.router)
    base = multiply_adds(mixture.base)
    specs = [multiply_adds(s) for s in mixture.specialists]
    return {
        "cost_inference_mmacs_hard": views * (router + base + max(specs)) / 1e6,
        "cost_inference_mmacs_soft": views * (router + base + sum(specs)) / 1e6,
        "cost_inference_mmacs_two_bases": views * 2 * base / 1e6,
        "cost_inference_mmacs_base": views * base / 1e6,
    }
