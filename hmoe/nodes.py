"""The pipeline's pure nodes: arrays and params in, models and numbers out.

No file, DVC or MLflow here: stages (``stages/``) read inputs, call these nodes,
then write and log; ``bench/pipeline_compute.py`` chains the same nodes in one
process. That keeps one implementation of every step.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from hmoe.metrics import accuracy, specialist_accuracy
from hmoe.mixture import Mixture, Outputs, combine, ensemble, one_hot, route_weights
from hmoe.nets import build_classifier, build_gate, copy_trunk, fit_whitening, freeze_trunk
from hmoe.params import GateParams, Groups, NetArch, NetParams
from hmoe.train import fit_classifier, fit_gates

logger = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]
# Images used to fit the whitening layer: enough for a stable 12x12 covariance.
WHITENING_SAMPLE = 5000


def specialist_subset(
    x: np.ndarray, y: np.ndarray, class_ids: Sequence[int], *, dustbin: float = 0.0, seed: int = 0
) -> Split:
    """Images of the group's classes, labels renumbered 0..k-1 in group order.

    With ``dustbin`` > 0, also a random ``dustbin`` x (group size) of the other
    groups' images, labelled k: the "none of mine" output of Hinton et al. (2015).
    """
    keep = np.isin(y, class_ids)
    local = np.full(max(*class_ids, int(y.max(initial=0))) + 1, -1, dtype=np.int64)
    local[list(class_ids)] = np.arange(len(class_ids))
    if dustbin <= 0:
        return x[keep], local[y[keep]]
    others = np.flatnonzero(~keep)
    n_other = min(len(others), round(dustbin * int(keep.sum())))
    extra = np.sort(np.random.default_rng(seed).choice(others, n_other, replace=False))
    local[np.setdiff1d(np.unique(y), class_ids)] = len(class_ids)
    idx = np.sort(np.concatenate([np.flatnonzero(keep), extra]))
    return x[idx], local[y[idx]]


def specialist_outputs(class_ids: Sequence[int], dustbin: float) -> int:
    """A specialist's output count: its classes, plus the dustbin when it has one."""
    return len(class_ids) + (1 if dustbin > 0 else 0)


def network_arch(net: NetArch, cfg: NetParams) -> NetArch:
    """The architecture of a network: the shared one, or the specialists' own width."""
    width = getattr(cfg, "width", None)
    return net if width is None else dataclasses.replace(net, width=width)


def group_labels(y: np.ndarray, groups: Groups) -> np.ndarray:
    """Group index of every label (the router's targets)."""
    return np.asarray(groups.group_of_label(), dtype=np.int64)[y]


def build_network(
    n_outputs: int,
    arch: NetArch,
    cfg: NetParams,
    *,
    seed: int,
    name: str,
    init: keras.Model | None = None,
    whitening_images: np.ndarray | None = None,
) -> keras.Model:
    """A classifier ready to train: from the base's trunk when ``init`` is given
    (frozen if ``cfg.freeze_trunk``), else with its whitening fitted on the images.
    """
    model = build_classifier(
        n_outputs,
        network_arch(arch, cfg),
        translate=cfg.translate if cfg.augment else None,
        seed=seed,
        name=name,
    )
    if init is not None:
        copied = copy_trunk(init, model)
        logger.info("%s: %d layers copied from %s", name, copied, init.name)
        if cfg.freeze_trunk:
            freeze_trunk(model)
    elif whitening_images is not None:
        fit_whitening(model, whitening_images[:WHITENING_SAMPLE])
    return model


def train_network(
    model: keras.Model,
    cfg: NetParams,
    train: Split,
    val: Split,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    jit_compile: bool = False,
    seed: int = 0,
    state_dir: Path | None = None,
) -> dict[str, float]:
    """Fit ``model`` in place (best val epoch kept); return its training summary.

    ``state_dir``: where the resume state lives (see :mod:`hmoe.resume`); the summary
    then covers only this process's epochs, so resumable callers summarise their CSV.
    """
    history = fit_classifier(
        model, train, val, cfg, seed=seed, state_dir=state_dir, callbacks=callbacks,
        jit_compile=jit_compile,
    )  # fmt: skip
    return summarise_history(history.history, monitor="val_accuracy", mode="max")


def summarise_history(history: dict[str, list[float]], *, monitor: str, mode: str) -> dict:
    values = history[monitor]
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return {
        monitor: float(values[best]),
        "best_epoch": best + 1,
        "epochs_run": len(values),
        **({"val_loss": float(history["val_loss"][best])} if "val_loss" in history else {}),
    }


def gate_inputs(out: Outputs, routing: str, mode: str = "probs") -> tuple[np.ndarray, ...]:
    """What the gate trainer takes: route weights, base probs, stacked specialist probs,
    and the base trunk's features when the gates see them (``mode`` features or both).
    """
    arrays = (route_weights(out.router, routing), out.base, np.stack(out.specs, axis=1))
    if mode == "probs":
        return arrays
    if out.features is None:
        raise ValueError(f"gates.inputs={mode!r} needs the base features in the outputs")
    return (*arrays, out.features)


def gate_input_size(out: Outputs, mode: str) -> int:
    """Width of one gate's input under ``mode``."""
    return out.gate_inputs(0, mode).shape[1]


def gate_fit_split(fit_on: str, gate: Split, train: Split | None) -> Split:
    """The images the gates are fitted on (``gates.fit_on``): the held-out gate split,
    or, as the in-sample control, as many of the experts' own training images.
    """
    if fit_on == "gate":
        return gate
    n = len(gate[1])
    return train[0][:n], train[1][:n]


def train_gates(
    groups: Groups,
    cfg: GateParams,
    routing: str,
    train: tuple[Outputs, np.ndarray],
    val: tuple[Outputs, np.ndarray],
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> tuple[list[keras.Model], dict[str, float]]:
    """One gate per group, fitted jointly through the routed mixture on frozen outputs."""
    (out_tr, y), (out_val, yv) = train, val
    n_in = gate_input_size(out_tr, cfg.inputs)
    gates = [build_gate(n_in, hidden=cfg.hidden, name=f"gate_{g}") for g in groups.names]
    history = fit_gates(
        gates, gate_inputs(out_tr, routing, cfg.inputs), y,
        gate_inputs(out_val, routing, cfg.inputs), yv, cfg, callbacks=callbacks,
    )  # fmt: skip
    weights = [
        np.asarray(g.predict(out_val.gate_inputs(i, cfg.inputs), verbose=0))
        for i, g in enumerate(gates)
    ]
    summary = summarise_history(history.history, monitor="val_loss", mode="min")
    summary["val_accuracy"] = accuracy(
        combine(route_weights(out_val.router, routing), weights, out_val.base, out_val.specs), yv
    )
    summary["val_base_accuracy"] = accuracy(out_val.base, yv)
    return gates, summary


def control_probs(out: Outputs, weights: list[np.ndarray], true_group: np.ndarray) -> dict:
    """The mixture under each routing, plus the controls it must beat."""
    n_groups = out.router.shape[1]
    return {
        "hard": combine(route_weights(out.router, "hard"), weights, out.base, out.specs),
        "soft": combine(route_weights(out.router, "soft"), weights, out.base, out.specs),
        "oracle": combine(one_hot(true_group, n_groups), weights, out.base, out.specs),
        "ensemble": ensemble(out.base, out.specs),
    }


def evaluate_mixture(
    mixture: Mixture, x: np.ndarray, y: np.ndarray, second_base: keras.Model | None = None
) -> tuple[dict, dict]:
    """Test metrics of the mixture and its controls, and the predicted labels.

    Returns (metrics, predictions) with predictions ``{"base", "mixture"}`` -> labels,
    the router's probabilities and every gate's weights for the report, and the frozen
    ``outputs`` and ``ensemble`` probabilities, from which evaluate builds its controls
    (plus ``two_bases``, the base averaged with ``second_base``, when one is given).
    """
    groups = mixture.groups
    out = mixture.outputs(x)
    weights = mixture.gate_weights(out)
    true_group = group_labels(y, groups)
    probs = control_probs(out, weights, true_group)
    mixed = probs[mixture.routing]
    metrics = {
        "base_accuracy": accuracy(out.base, y),
        "router_accuracy": accuracy(out.router, true_group),
        "mixture_accuracy": accuracy(mixed, y),
        **{f"{k}_accuracy": accuracy(p, y) for k, p in probs.items()},
    }
    for g, name in enumerate(groups.names):
        ids = groups.class_ids(name)
        metrics[f"specialist_{name}_accuracy"] = specialist_accuracy(out.specs[g], y, ids)
        metrics[f"gate_{name}_specialist_weight"] = float(weights[g][:, 1].mean())
    metrics["lift_over_base"] = metrics["mixture_accuracy"] - metrics["base_accuracy"]
    metrics["lift_over_ensemble"] = metrics["mixture_accuracy"] - metrics["ensemble_accuracy"]
    metrics["mixture_rows_sum_max_error"] = float(np.abs(mixed.sum(axis=1) - 1).max())
    predictions = {
        "base": np.argmax(out.base, axis=1),
        "mixture": np.argmax(mixed, axis=1),
        "router_probs": out.router,
        "gate_weights": weights,
        "outputs": out,
        "ensemble": probs["ensemble"],
    }
    if second_base is not None:
        predictions["two_bases"] = (out.base + mixture.predict_network(second_base, x)) / 2
    return metrics, predictions
