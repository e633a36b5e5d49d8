"""The recipe, top to bottom as airbench94 reads: its fixed numbers, the network, the
optimizer and schedule, weight averaging, and the training loop. The numbers a run may
move live in params.yaml (`net`, `recipe` and each network's section).

The classifier follows the fast-training literature (airbench94, Page's ResNet-9):
a frozen 2x2 patch-whitening first layer, three conv groups (conv, max-pool,
BatchNorm, GELU, conv, BatchNorm, GELU), identity-initialised convolutions,
BatchNorm without a learnable scale whose bias learns faster, and scaled logits;
Nesterov SGD with decoupled weight decay on a triangular schedule, label smoothing,
and lookahead weight averaging.

All networks take uint8 images (N, 32, 32, 3), so a saved model is usable as is, and
use only ``keras.ops``, so they run on the TensorFlow and JAX backends alike. Custom
layers are registered, so ``keras.saving.load_model(..., safe_mode=True)`` restores
them without Lambda layers (:mod:`hmoe.layers`). Pure compute: no files except the
resume state a caller asks for with ``state_dir`` (:mod:`hmoe.resume`), no tracking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from hmoe import feed
from hmoe.layers import (
    CIFAR_MEAN,
    CIFAR_STD,
    PACKAGE,
    TRUNK_OUTPUT,
    PadCropFlip,
    PartialDirac,
    PatchWhitening,
    Scale,
    ScaledBias,
    fit_whitening,
)
from hmoe.params import NetArch, NetParams
from hmoe.resume import BestKeeper, EpochBatches, EpochSeeds, StopOnNaN
from hmoe.transfer import copy_trunk, freeze_trunk

logger = logging.getLogger(__name__)

# -- the fixed numbers -------------------------------------------------------------
# airbench94's, which no run of this project has moved (so they are not params: every
# params.yaml key must change an output in some run, and these stay one value each).

# (CIFAR-10's per-channel mean and std, which normalise every input: hmoe.layers.)
WHITENING_SAMPLE = 5000  # images that fit the whitening layer: a stable 12x12 covariance
# The triangular schedule, as fractions of the peak learning rate: start, peak at this
# share of the steps, end.
TRIANGLE_START, TRIANGLE_PEAK_AT, TRIANGLE_END = 0.2, 0.23, 0.07
# Lookahead: from this epoch on, every EVERY steps, the average moves towards the
# weights with decay BASE ** EVERY x progress ** POWER.
LOOKAHEAD_START_EPOCH = 2
LOOKAHEAD_EVERY = 5
LOOKAHEAD_BASE = 0.95
LOOKAHEAD_POWER = 3.0
BN_RECALIBRATION_BATCHES = 4  # forward batches that re-estimate BatchNorm for the average


# -- the network --------------------------------------------------------------------


def _conv(x, filters: int, name: str, seed: int | None):
    return layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=PartialDirac(seed), name=name
    )(x)


def _norm_act(x, name: str, cfg: NetArch):
    """BatchNorm in float32 without scale; its bias learns ``bn_bias_lr`` times faster."""
    x = layers.BatchNormalization(
        momentum=cfg.bn_momentum,
        epsilon=1e-5,
        center=False,
        scale=False,
        dtype="float32",
        name=f"{name}_bn",
    )(x)
    x = ScaledBias(float(np.sqrt(cfg.bn_bias_lr)), name=f"{name}_bias")(x)
    return layers.Activation("gelu", name=f"{name}_act")(x)


def _group(x, filters: int, name: str, cfg: NetArch, seed: int | None):
    x = _conv(x, filters, f"{name}_conv1", seed)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = _norm_act(x, f"{name}_1", cfg)
    x = _conv(x, filters, f"{name}_conv2", seed)
    return _norm_act(x, f"{name}_2", cfg)


def build_classifier(
    n_outputs: int,
    cfg: NetArch,
    *,
    translate: int | None = 2,
    seed: int | None = None,
    name: str = "classifier",
) -> keras.Model:
    """The fast-CIFAR classifier: whitening stem, three conv groups of widths w, 2w, 2w.

    At width 64 it costs about 54 M multiply-adds per image. Layer names are fixed so
    :func:`copy_trunk` can initialise a specialist or the router from the trained base;
    the pooled features layer is named ``features``. ``translate`` is the pixels of
    random translation in training (with random flips); None builds no augmentation.
    Call :func:`fit_whitening` before training.
    """
    if n_outputs < 2:
        raise ValueError(f"a classifier needs at least 2 outputs, got {n_outputs}")
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    if translate is not None:
        x = PadCropFlip(pad=translate, seed=seed, name="augment")(x)
    x = layers.Normalization(
        mean=list(CIFAR_MEAN), variance=[s * s for s in CIFAR_STD], name="normalize"
    )(x)
    x = PatchWhitening(name="whiten")(x)
    x = layers.Activation("gelu", name="stem_act")(x)
    w = cfg.width
    for i, filters in enumerate((w, 2 * w, 2 * w), start=1):
        x = _group(x, filters, f"group{i}", cfg, seed)
    x = layers.GlobalMaxPooling2D(name=TRUNK_OUTPUT)(x)
    x = layers.Dense(n_outputs, use_bias=False, name="logits")(x)
    x = Scale(cfg.logit_scale, name="scale_logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


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
    (frozen but for the new layers if ``cfg.freeze_trunk``: the head, and the last conv
    group for `branch`), else with its whitening fitted on the images.
    """
    model = build_classifier(
        n_outputs,
        arch,
        translate=cfg.translate,
        seed=seed,
        name=name,
    )
    if init is not None:
        copied = copy_trunk(init, model, cfg.start)
        logger.info("%s: %d layers copied from %s", name, copied, init.name)
        if cfg.freeze_trunk:
            freeze_trunk(model, cfg.start)
    elif whitening_images is not None:
        fit_whitening(model, whitening_images[:WHITENING_SAMPLE])
    return model


# -- optimizer and schedule --------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class Triangle(keras.optimizers.schedules.LearningRateSchedule):
    """Piecewise-linear schedule: ``start`` x peak -> peak at ``peak_at`` -> ``end`` x peak.

    Why: airbench's triangular schedule (0.2 -> 1 at 23 % of steps -> 0.07) reaches
    high accuracy in a fixed, short budget without a warm-up/decay search.
    """

    def __init__(
        self,
        peak: float,
        steps: int,
        start: float = TRIANGLE_START,
        end: float = TRIANGLE_END,
        peak_at: float = TRIANGLE_PEAK_AT,
    ):
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


def make_optimizer(cfg: NetParams, steps: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Nesterov SGD with decoupled weight decay on the triangular schedule, with
    lookahead averaging inside its update when ``cfg.lookahead``.
    """
    lr = Triangle(cfg.learning_rate, steps)
    if not cfg.lookahead:
        return keras.optimizers.SGD(
            lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    return LookaheadSGD(
        lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
        total_steps=steps,
        start_step=LOOKAHEAD_START_EPOCH * steps_per_epoch,
    )


# -- weight averaging --------------------------------------------------------------


class _Lookahead:
    """Lookahead weight averaging inside the optimizer's update (airbench94's schedule).

    From ``start_step`` on, every ``every`` steps the average moves towards the weights
    with decay ``base**every * progress**power`` (weak early, strong at the end; the
    first time it just copies them) and the weights continue from the average. Written
    with ``keras.ops.where`` on optimizer variables, so it runs inside the compiled
    training step on every backend, with no host round trip and no batch callback; the
    average is optimizer state, so ``BackupAndRestore`` resumes it exactly.

    Unlike airbench, BatchNorm's running statistics are not averaged (an optimizer sees
    trainable variables only): :class:`RecalibrateBatchNorm` re-estimates them for the
    averaged weights before each validation.
    """

    def __init__(
        self,
        *args,
        total_steps: int = 1,
        start_step: int = 0,
        every: int = LOOKAHEAD_EVERY,
        base: float = LOOKAHEAD_BASE,
        power: float = LOOKAHEAD_POWER,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.total_steps, self.start_step = max(1, int(total_steps)), int(start_step)
        self.every, self.base, self.power = int(every), float(base), float(power)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._averages = self.add_optimizer_variables(variables, "lookahead")
        self._started = self.add_variable((), initializer="zeros", dtype="float32", name="la_on")

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        step = ops.cast(self.iterations + 1, "float32")
        due = ops.logical_and(step > self.start_step, ops.equal(ops.mod(step, self.every), 0.0))
        rho = self.base**self.every * (step / self.total_steps) ** self.power
        started = ops.convert_to_tensor(self._started)
        rho = ops.where(started > 0, rho, 0.0)  # the first update copies the weights
        if keras.backend.backend() == "tensorflow":
            # a graph conditional runs the averaging on its steps only (1 in `every`)
            ops.cond(due, lambda: self._average(trainable_variables, rho), lambda: rho)
            return
        # JAX: no side effects inside a traced conditional; a select is fused by XLA
        for var in trainable_variables:
            avg = self._averages[self._get_variable_index(var)]
            a, v = ops.convert_to_tensor(avg), ops.convert_to_tensor(var)
            new = ops.cast(rho, a.dtype) * a + ops.cast(1.0 - rho, a.dtype) * ops.cast(v, a.dtype)
            avg.assign(ops.where(due, new, a))
            var.assign(ops.where(due, ops.cast(new, v.dtype), v))
        self._started.assign(ops.where(due, 1.0, started))

    def _average(self, trainable_variables, rho):
        for var in trainable_variables:
            avg = self._averages[self._get_variable_index(var)]
            new = ops.cast(rho, avg.dtype) * avg + ops.cast(1.0 - rho, avg.dtype) * ops.cast(
                var, avg.dtype
            )
            avg.assign(new)
            var.assign(ops.cast(new, var.dtype))
        self._started.assign(1.0)
        return rho

    def get_config(self):
        return {
            **super().get_config(),
            "total_steps": self.total_steps,
            "start_step": self.start_step,
            "every": self.every,
            "base": self.base,
            "power": self.power,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class LookaheadSGD(_Lookahead, keras.optimizers.SGD):
    """Nesterov SGD with lookahead averaging in its update (see :class:`_Lookahead`)."""


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Before each validation, once the lookahead averaging has started: BatchNorm's
    running statistics re-estimated for the averaged weights, from a few training
    batches run forward in training mode (no weight changes).

    Why: airbench averages the running statistics with the weights; an optimizer sees
    trainable variables only (and on JAX nothing else), so the statistics are brought
    in line with the averaged weights instead, as SWA's ``bn_update`` does. With
    ``net.bn_momentum`` 0.4 a handful of batches replace them; at an epoch's end the
    cost is that of ``batches`` forward passes. An epoch-level hook: no per-step sync.
    """

    def __init__(self, data: keras.utils.PyDataset, batches: int = BN_RECALIBRATION_BATCHES):
        super().__init__()
        self.data, self.batches = data, batches

    def on_test_begin(self, logs=None):
        started = getattr(self.model.optimizer, "_started", None)
        if started is None or float(ops.convert_to_numpy(started)) <= 0:
            return
        for i in range(min(self.batches, len(self.data))):
            self.model(self.data[i][0], training=True)


# -- training ---------------------------------------------------------------------


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
    steps_per_execution: int = 1,
    verbose: int | str = "auto",
) -> keras.callbacks.History:
    """Train ``model`` on integer labels (or target rows); keep the best val epoch's weights.

    Every batch has ``cfg.batch_size`` images (the remainder of an epoch's shuffled
    order is left for a later epoch), so a compiled step is traced once. Batch order
    and augmentation depend only on (``seed``, epoch), the averaging lives in the
    optimizer, and the early stopping state is saved in ``state_dir`` (when given,
    beside a ``BackupAndRestore`` backup), so a killed run resumes exactly
    (:mod:`hmoe.resume`). Only epoch-level callbacks: no per-step host round trip.
    ``verbose`` "auto": a progress bar on a terminal, one line per epoch otherwise.
    """
    n_classes = model.output_shape[-1]
    (x, y), (xv, yv) = train, val
    if len(x) == 0 or len(xv) == 0:
        raise ValueError("empty training or validation split")
    batches = EpochBatches(x, y, cfg.batch_size, n_classes, seed)
    steps = cfg.epochs * len(batches)
    model.compile(
        optimizer=make_optimizer(cfg, steps, len(batches)),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    extra: list[keras.callbacks.Callback] = [
        StopOnNaN(),
        EpochSeeds(seed, batches),
        BestKeeper("val_accuracy", cfg.epochs, state_dir),  # the best epoch; no early stop
    ]
    if cfg.lookahead:
        extra.insert(2, RecalibrateBatchNorm(batches))
    if verbose == "auto":
        import sys

        verbose = 1 if sys.stdout.isatty() else 2
    val_pair = (xv, keras.utils.to_categorical(yv, n_classes))
    return model.fit(
        **feed.fit_inputs(batches, val_pair, cfg.batch_size),  # no tf.data autotune stall
        epochs=cfg.epochs,
        shuffle=False,  # EpochBatches shuffles by (seed, epoch); Keras' own would not resume
        callbacks=[*extra, *callbacks],
        verbose=verbose,
    )
