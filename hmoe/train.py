"""Training loops: compute on arrays (no tracking; files only for the resume state a
caller asks for with ``state_dir``).

Callers pass callbacks for logging and checkpointing; these functions only build
the optimiser and schedule, and select on the validation split.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from hmoe.data.storage import atomic_write
from hmoe.nets import build_gate_trainer
from hmoe.params import GateParams, NetParams
from hmoe.resume import BestKeeper, EpochBatches, EpochSeeds

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="hmoe")
class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear schedule: ``start`` x peak -> peak at ``peak_at`` -> ``end`` x peak.

    Why: airbench's triangular schedule (0.2 -> 1 at 23 % of steps -> 0.07) reaches
    high accuracy in a fixed, short budget without a warm-up/decay search.
    """

    def __init__(self, peak: float, steps: int, start=0.2, end=0.07, peak_at=0.23):
        self.peak, self.steps = float(peak), int(steps)
        self.start, self.end, self.peak_at = float(start), float(end), float(peak_at)

    def __call__(self, step):
        t = keras.ops.cast(step, "float32") / max(1, self.steps)
        up = self.start + (1.0 - self.start) * t / self.peak_at
        down = 1.0 + (self.end - 1.0) * (t - self.peak_at) / (1.0 - self.peak_at)
        frac = keras.ops.where(t < self.peak_at, up, keras.ops.maximum(down, self.end))
        return self.peak * frac

    def get_config(self):
        return {
            "peak": self.peak,
            "steps": self.steps,
            "start": self.start,
            "end": self.end,
            "peak_at": self.peak_at,
        }


def cosine(learning_rate: float, steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up over the first 15% of steps, then cosine decay to zero."""
    warmup = max(1, int(0.15 * steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=learning_rate / 10,
        decay_steps=max(1, steps - warmup),
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def make_optimizer(cfg: NetParams, steps: int) -> keras.optimizers.Optimizer:
    """The optimizer and schedule ``cfg`` names (``weight_decay`` is decoupled in both)."""
    lr = (Triangle if cfg.schedule == "triangle" else cosine)(cfg.learning_rate, steps)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(
            lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    return keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay)


class Lookahead(keras.callbacks.Callback):
    """Weight averaging that is copied back into the model (airbench's lookahead EMA).

    From ``start_epoch`` on, every ``every`` steps the average moves towards the current
    weights with decay ``base**every * progress**power`` (weak early, strong at the end)
    and the model continues from the average. Backend-agnostic: plain variable assigns.
    """

    def __init__(
        self,
        total_steps: int,
        start_epoch: int = 2,
        every: int = 5,
        base=0.95,
        power=3.0,
        state_dir: Path | None = None,
    ):
        super().__init__()
        self.total, self.start_epoch, self.every = max(1, total_steps), start_epoch, every
        self.base, self.power = base, power
        self.step, self.epoch, self.avg = 0, 0, None
        self.state = None if state_dir is None else Path(state_dir) / "lookahead.npz"

    def _vars(self):
        return [v for v in self.model.weights if "float" in str(v.dtype)]

    def on_train_begin(self, logs=None):
        if self.state is not None and self.state.is_file():  # a resumed run
            with np.load(self.state) as f:
                self.avg = [f[f"a{i}"] for i in range(len(f.files))] or None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.step = epoch * self.params["steps"]  # also right after a resume

    def on_epoch_end(self, epoch, logs=None):
        if self.state is not None:
            arrays = {f"a{i}": a for i, a in enumerate(self.avg or [])}
            atomic_write(self.state, lambda tmp: np.savez(tmp, **arrays))

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        last_of_epoch = batch + 1 == self.params.get("steps")
        if self.epoch >= self.start_epoch and self.step % self.every == 0:
            current = [keras.ops.convert_to_numpy(v) for v in self._vars()]
            if self.avg is None:
                self.avg = current
            else:
                rho = self.base**self.every * (self.step / self.total) ** self.power
                self.avg = [rho * a + (1 - rho) * c for a, c in zip(self.avg, current, strict=True)]
                self._copy_back()
        if last_of_epoch and self.avg is not None:
            self._copy_back()  # validation and checkpoints see the averaged weights

    def _copy_back(self):
        for v, a in zip(self._vars(), self.avg, strict=True):
            v.assign(a)


def fit_classifier(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: NetParams,
    *,
    seed: int = 0,
    state_dir: Path | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    jit_compile: bool = False,
    verbose: int = 2,
) -> keras.callbacks.History:
    """Train ``model`` on integer labels; keep the weights of the best val epoch.

    Batch order and augmentation depend only on (``seed``, epoch), and the early
    stopping and lookahead state is saved in ``state_dir`` (when given, beside a
    ``BackupAndRestore`` backup), so a killed run resumes exactly (:mod:`hmoe.resume`).
    """
    n_classes = model.output_shape[-1]
    (x, y), (xv, yv) = train, val
    if len(x) == 0 or len(xv) == 0:
        raise ValueError("empty training or validation split")
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    model.compile(
        optimizer=make_optimizer(cfg, steps),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    batches = EpochBatches(x, y, cfg.batch_size, n_classes, seed)
    extra: list[keras.callbacks.Callback] = [
        EpochSeeds(seed, batches),
        BestKeeper("val_accuracy", cfg.patience, state_dir),
    ]
    if cfg.lookahead:
        extra.insert(0, Lookahead(steps, state_dir=state_dir))
    return model.fit(
        batches,
        validation_data=(xv, keras.utils.to_categorical(yv, n_classes)),
        epochs=cfg.epochs,
        shuffle=False,  # EpochBatches shuffles by (seed, epoch); Keras' own would not resume
        callbacks=[*extra, *callbacks],
        verbose=verbose,
    )


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
    :func:`hmoe.nets.build_gate_trainer`. The gates are updated in place.
    """
    n_classes = train_inputs[1].shape[1]
    n_features = train_inputs[3].shape[1] if len(train_inputs) > 3 else 0
    trainer = build_gate_trainer(gates, n_classes, cfg.inputs, n_features)
    steps = cfg.epochs * math.ceil(len(y_train) / cfg.batch_size)
    trainer.compile(
        optimizer=keras.optimizers.Adam(cosine(cfg.learning_rate, steps)),
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
