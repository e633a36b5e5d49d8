"""Training loops: pure compute on arrays (no files, no tracking).

Callers pass callbacks for logging and checkpointing; these functions only build
the optimiser and schedule, and select on the validation split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
import numpy as np

from hmoe.nets import build_gate_trainer
from hmoe.params import GateParams, NetParams

logger = logging.getLogger(__name__)


def schedule(learning_rate: float, steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over the first 15% of steps, then cosine decay to zero.

    Why: short CPU budgets leave no room for a tuned step schedule; warm-up plus
    cosine is robust across batch sizes and epoch counts.
    """
    warmup = max(1, int(0.15 * steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: NetParams,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    jit_compile: bool = False,
    verbose: int = 2,
) -> keras.callbacks.History:
    """Train ``model`` on integer labels; keep the weights of the best val epoch."""
    n_classes = model.output_shape[-1]
    (x, y), (xv, yv) = train, val
    if len(x) == 0 or len(xv) == 0:
        raise ValueError("empty training or validation split")
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule(cfg.learning_rate, steps), weight_decay=0.0),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=cfg.patience, restore_best_weights=True
    )
    return model.fit(
        x,
        keras.utils.to_categorical(y, n_classes),
        validation_data=(xv, keras.utils.to_categorical(yv, n_classes)),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=[*callbacks, stop],
        verbose=verbose,
    )


def fit_gates(
    gates: Sequence[keras.Model],
    train_inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    y_train: np.ndarray,
    val_inputs: tuple[np.ndarray, np.ndarray, np.ndarray],
    y_val: np.ndarray,
    cfg: GateParams,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int = 2,
) -> keras.callbacks.History:
    """Train every gate jointly through the routed mixture on precomputed outputs.

    Inputs are (route weights, base probs, stacked embedded specialist probs), see
    :func:`hmoe.nets.build_gate_trainer`. The gates are updated in place.
    """
    n_classes = train_inputs[1].shape[1]
    trainer = build_gate_trainer(gates, n_classes)
    steps = cfg.epochs * math.ceil(len(y_train) / cfg.batch_size)
    trainer.compile(
        optimizer=keras.optimizers.Adam(schedule(cfg.learning_rate, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=cfg.patience, restore_best_weights=True
    )
    return trainer.fit(
        list(train_inputs),
        y_train,
        validation_data=(list(val_inputs), y_val),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=[*callbacks, stop],
        verbose=verbose,
    )
