"""Step `train_gates`: one gate per group, fitted with the experts and router frozen.

The gates are fitted on the `gate` split, which no expert or router trained on (their
outputs there are as confident as on new images), and early-stopped on `val`.
`gates.fit_on: train` fits them on as many of the experts' own training images
instead: the in-sample control that shows what held-out fitting is worth. The frozen
networks' outputs are computed once, with the test-time views evaluate uses.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import numpy as np

from hmoe import feed
from hmoe.gates import GateInput, build_gate, fit_gates
from hmoe.groups import Groups
from hmoe.metrics import accuracy, summarise_history
from hmoe.mixture import Mixture, Outputs, combine, route_weights
from hmoe.params import ROUTINGS, Params
from hmoe.resume import reseed
from hmoe.steps.hooks import NO_HOOKS, Hooks, NetworkJob

logger = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class TrainedGates:
    gates: list[keras.Model]  # in the groups' order
    summary: dict[str, float]
    val_outputs: Outputs  # the frozen outputs on val (examples for a model signature)
    val_weights: list[np.ndarray]  # each gate's (N, 2) weights on val: base, specialist


def gate_fit_split(fit_on: str, gate: Split, train: Split | None) -> Split:
    """The images the gates are fitted on (``gates.fit_on``): the held-out gate split,
    or, as the in-sample control, as many of the experts' own training images.
    """
    if fit_on == "gate":
        return gate
    if train is None:
        raise ValueError("gates.fit_on: train needs the train split")
    n = len(gate[1])
    return train[0][:n], train[1][:n]


def trainer_inputs(out: Outputs, routing: str, seen: GateInput) -> tuple[np.ndarray, ...]:
    """What the joint gate trainer takes: route weights, base probs, stacked specialist
    probs, and the base trunk's features when the gates see them.
    """
    arrays = (route_weights(out.router, routing), out.base, np.stack(out.specs, axis=1))
    if not seen.needs_features:
        return arrays
    if out.features is None:
        raise ValueError(f"gates.inputs={seen.mode!r} needs the base features in the outputs")
    return (*arrays, out.features)


def train_gates(
    params: Params,
    groups: Groups,
    experts: Mixture,
    fit: Split,
    val: Split,
    *,
    hooks: Hooks = NO_HOOKS,
) -> TrainedGates:
    """Frozen outputs on the fitting and val images, then every gate fitted jointly
    through the routed mixture (``experts``: the mixture without gates), inside the
    caller's ``hooks`` as one network: its run, epoch log and cost. The gates' summary
    is the best val-loss epoch's, with the val accuracies of both routings.
    """
    cfg, routing = params.gates, params.mixture.routing
    seen = GateInput(cfg.inputs)
    start = time.perf_counter()
    out_fit, out_val = experts.outputs(fit[0]), experts.outputs(val[0])
    logger.info(
        "frozen outputs on %d + %d images (TTA level %d) in %.1fs",
        len(fit[0]),
        len(val[0]),
        params.mixture.tta,
        time.perf_counter() - start,
    )
    n_in = out_fit.for_gate(0, seen).shape[1]
    job = NetworkJob(
        "gates", params.seed, 2, len(fit[1]), len(val[1]), init_from_base=False,
        monitor="val_loss", mode="min", resumable=False, parallel=False,
    )  # fmt: skip
    with hooks.network(job) as fitting:
        reseed(params.seed)  # the gates depend on the seed alone (hmoe.resume.reseed)
        gates = [
            build_gate(n_in, hidden=cfg.hidden, name=f"gate_{g}", kind=cfg.kind)
            for g in groups.names
        ]
        history = fit_gates(
            gates,
            trainer_inputs(out_fit, routing, seen),
            fit[1],
            trainer_inputs(out_val, routing, seen),
            val[1],
            cfg,
            callbacks=fitting.callbacks,
        )
        # Keras's default predict batch (32), without tf.data (hmoe.feed)
        weights = [feed.predict(g, out_val.for_gate(i, seen), 32) for i, g in enumerate(gates)]
        summary = summarise_history(history.history, monitor=job.monitor, mode=job.mode)
        for r in ROUTINGS:  # both routings with these gates: the evidence for the default
            probs = combine(route_weights(out_val.router, r), weights, out_val.base, out_val.specs)
            summary[f"val_{r}_accuracy"] = accuracy(probs, val[1])
        summary["val_accuracy"] = summary[f"val_{routing}_accuracy"]
        summary["val_base_accuracy"] = accuracy(out_val.base, val[1])
        for g, w in zip(groups.names, weights, strict=True):  # the trust in each specialist
            summary[f"val_specialist_weight_{g}"] = float(w[:, 1].mean())
        summary = hooks.finished(job, gates, summary)
    logger.info(
        "gates: val mixture accuracy %.4f (base %.4f)",
        summary["val_accuracy"],
        summary["val_base_accuracy"],
    )
    return TrainedGates(gates, summary, out_val, weights)
