"""The gates: what a gate sees, the gate network, and how all gates are fitted at once.

Gate g weights the base against specialist g for the images routed to group g; its
output is a softmax over {base, specialist}, so every branch, and so the mixture, is
a distribution. The gates are fitted on frozen outputs of the experts and router
(computed once), so a gate epoch costs only their small dense layers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers, ops

from hmoe.layers import PACKAGE, ConstantLogits
from hmoe.params import GATE_INPUTS, GATE_KINDS, GateParams


def cosine(learning_rate: float, steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """The gates' schedule: linear warm-up over the first 15 % of steps, then cosine
    decay to zero (Adam on a tiny network: no triangle to tune).
    """
    warmup = max(1, int(0.15 * steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


@dataclass(frozen=True)
class GateInput:
    """What one gate sees (``gates.inputs``), in its numpy and its Keras form.

    probs: the base's and the specialist's probabilities, concatenated; features: the
    frozen base trunk's pooled features; both: all three. The two forms below put the
    parts in the same order, so a gate trained in the joint trainer (Keras) scores the
    same on the precomputed arrays (numpy).
    """

    mode: str = "probs"

    def __post_init__(self) -> None:
        if self.mode not in GATE_INPUTS:
            raise ValueError(f"gates.inputs must be one of {list(GATE_INPUTS)}, got {self.mode!r}")

    @property
    def needs_features(self) -> bool:
        return self.mode != "probs"

    def size(self, n_classes: int, n_features: int) -> int:
        """Width of one gate's input."""
        probs = 2 * n_classes
        return {"probs": probs, "features": n_features, "both": probs + n_features}[self.mode]

    def _parts(self, base, spec, features) -> list:
        if self.needs_features and features is None:
            raise ValueError(f"gates.inputs={self.mode!r} needs the base features; none given")
        return {
            "probs": [base, spec],
            "features": [features],
            "both": [base, spec, features],
        }[self.mode]

    def numpy(self, base: np.ndarray, spec: np.ndarray, features: np.ndarray | None) -> np.ndarray:
        """(N, D) array from the precomputed outputs."""
        parts = self._parts(base, spec, features)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def keras(self, base, spec, features, *, name: str):
        """The same input inside a Functional model (``name``: the concatenation layer)."""
        parts = self._parts(base, spec, features)
        return parts[0] if len(parts) == 1 else layers.Concatenate(name=name)(parts)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ExpertMix(layers.Layer):
    """Gate-weighted sum of expert distributions: sum_e w[:, e] * p[:, e, :].

    With w a distribution over experts and every p[:, e] a distribution over
    classes, the result is itself a distribution (rows sum to 1).
    """

    def call(self, weights, experts):
        return ops.sum(ops.expand_dims(weights, -1) * experts, axis=1)

    def compute_output_shape(self, weights_shape, experts_shape):
        return (experts_shape[0], experts_shape[2])


def build_gate(
    n_inputs: int, *, hidden: int = 32, name: str = "gate", kind: str = "learned"
) -> keras.Model:
    """Gate of one group: from what it sees (``gates.inputs``) to 2 expert weights.

    Inputs are precomputed (N, n_inputs): the frozen experts' probabilities [base,
    specialist], the frozen base trunk's pooled features, or both, so the gate
    costs almost nothing per epoch. Output is a softmax over {base, specialist}:
    the mixture stays a distribution. ``kind`` (``gates.kind``): learned, a hidden
    layer on the input; constant, two trainable logits whatever the input (one weight
    per group); fixed, the same logits frozen at zero (every weight 1/2).
    """
    if kind not in GATE_KINDS:
        raise ValueError(f"gates.kind must be one of {list(GATE_KINDS)}, got {kind!r}")
    inputs = keras.Input((n_inputs,), name="gate_input")
    if kind == "learned":
        x = layers.Dense(hidden, activation="relu", name="hidden")(inputs)
        x = layers.Dense(2, name="expert_logits")(x)
    else:
        logits = ConstantLogits(2, name="expert_logits")
        logits.trainable = kind == "constant"
        x = logits(inputs)
    outputs = layers.Softmax(dtype="float32", name="expert_weights")(x)
    return keras.Model(inputs, outputs, name=name)


def build_gate_trainer(
    gates: Sequence[keras.Model], n_classes: int, seen: GateInput, n_features: int = 0
) -> keras.Model:
    """Joint model that trains all gates at once through the routed mixture.

    Inputs: route weights (N, G) (one-hot of the router's top group for hard
    routing, the router's probabilities for soft), base probs (N, C), every
    embedded specialist's probs (N, G, C) and, when the gates see them (``seen``),
    the base trunk's features (N, F). Output: the mixture distribution. With hard
    routing the one-hot route means gate g only learns from the images the router
    sends to g, which is what it sees at inference.
    """
    n_groups = len(gates)
    route = keras.Input((n_groups,), name="route")
    base = keras.Input((n_classes,), name="base_probs")
    specs = keras.Input((n_groups, n_classes), name="specialist_probs")
    inputs = [route, base, specs]
    features = None
    if seen.needs_features:
        features = keras.Input((n_features,), name="features")
        inputs.append(features)
    branches = []
    for g, gate in enumerate(gates):
        spec_g = layers.Reshape((n_classes,), name=f"spec_{g}")(
            layers.Cropping1D((g, n_groups - g - 1), name=f"pick_{g}")(specs)
        )
        w = gate(seen.keras(base, spec_g, features, name=f"gate_in_{g}"))
        pair = layers.Concatenate(axis=1, name=f"pair_{g}")(
            [layers.Reshape((1, n_classes))(base), layers.Reshape((1, n_classes))(spec_g)]
        )
        branches.append(layers.Reshape((1, n_classes))(ExpertMix(name=f"mix_{g}")(w, pair)))
    stacked = branches[0] if n_groups == 1 else layers.Concatenate(axis=1)(branches)
    outputs = ExpertMix(name="route_mix")(route, stacked)
    return keras.Model(inputs, outputs, name="gate_trainer")


def fit_gates(
    gates: Sequence[keras.Model],
    train_inputs: tuple[np.ndarray, ...],
    y_train: np.ndarray,
    val_inputs: tuple[np.ndarray, ...],
    y_val: np.ndarray,
    cfg: GateParams,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> keras.callbacks.History:
    """Train every gate jointly through the routed mixture on precomputed outputs.

    Inputs are (route weights, base probs, stacked embedded specialist probs) and,
    when the gates see them (``cfg.inputs``), the base trunk's features; see
    :func:`build_gate_trainer`. The gates are updated in place. Fixed gates (nothing to
    train) run one epoch, which only scores them: their epoch log and val loss.
    """
    n_classes = train_inputs[1].shape[1]
    n_features = train_inputs[3].shape[1] if len(train_inputs) > 3 else 0
    trainer = build_gate_trainer(gates, n_classes, GateInput(cfg.inputs), n_features)
    steps = cfg.epochs * math.ceil(len(y_train) / cfg.batch_size)
    trainer.compile(
        optimizer=keras.optimizers.Adam(cosine(cfg.learning_rate, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The model does not have any trainable weights")
        return trainer.fit(
            list(train_inputs),
            y_train,
            validation_data=(list(val_inputs), y_val),
            epochs=cfg.epochs if trainer.trainable_weights else 1,
            batch_size=cfg.batch_size,
            shuffle=True,
            callbacks=[*callbacks, stop],
            verbose=verbose,
        )
