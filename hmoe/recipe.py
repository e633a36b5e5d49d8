"""The recipe, top to bottom: the network's layers and builder, its optimizer and
schedule, weight averaging, and the training loop. The numbers live in params.yaml.

The classifier follows the fast-training literature (airbench94, Page's ResNet-9):
a frozen 2x2 patch-whitening first layer, three conv groups (conv, max-pool,
BatchNorm, GELU, conv, BatchNorm, GELU), identity-initialised convolutions,
BatchNorm without a learnable scale whose bias learns faster, and scaled logits;
Nesterov SGD with decoupled weight decay on a triangular schedule, label smoothing,
and lookahead weight averaging. Each piece is switchable through
:class:`hmoe.params.NetArch` / :class:`hmoe.params.NetParams` for ablations.

All networks take uint8 images (N, 32, 32, 3), so a saved model is usable as is, and
use only ``keras.ops``, so they run on the TensorFlow and JAX backends alike. Custom
layers are registered, so ``keras.saving.load_model(..., safe_mode=True)`` restores
them without Lambda layers. Pure compute: no files except the resume state a caller
asks for with ``state_dir`` (:mod:`hmoe.resume`), no tracking.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from hmoe.params import NetArch, NetParams
from hmoe.resume import BestKeeper, EpochBatches, EpochSeeds

logger = logging.getLogger(__name__)

# Per-channel mean and std of the CIFAR-10 training set, on the 0..255 scale.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)

PACKAGE = "hmoe"
WHITEN_KERNEL = 2
HEAD_LAYERS = ("logits", "scale_logits", "probs")
TRUNK_OUTPUT = "features"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadCropFlip(layers.Layer):
    """Random translation (reflect padding, then crop) plus horizontal flip; training only.

    Written with keras.ops (not tf.image) so it runs on every backend, and per image,
    so each sample in a batch gets its own shift.
    """

    def __init__(self, pad: int = 2, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        n = ops.shape(x)[0]
        h, w = x.shape[1], x.shape[2]
        p = self.pad
        if p > 0:
            padded = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
            dy = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
            dx = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
            rows = ops.expand_dims(ops.expand_dims(dy + ops.arange(h), -1), -1)
            x = ops.take_along_axis(padded, ops.broadcast_to(rows, (n, h, w + 2 * p, 3)), 1)
            cols = ops.expand_dims(ops.expand_dims(dx + ops.arange(w), 1), -1)
            x = ops.take_along_axis(x, ops.broadcast_to(cols, (n, h, w, 3)), 2)
        flip = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < 0.5
        return ops.where(flip, ops.flip(x, axis=2), x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PatchWhitening(layers.Layer):
    """A 2x2 'valid' convolution whose kernel is frozen to whiten image patches.

    Why: decorrelating the input patches (kernel = eigenvectors of the patch covariance
    scaled by 1/sqrt(eigenvalue), and their negatives) lets the first trained layer
    learn fast; airbench measures it as the largest single saving in epochs. The kernel
    is fitted from training images by :func:`fit_whitening`; only the bias trains.
    """

    def __init__(self, kernel_size: int = WHITEN_KERNEL, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.filters = 2 * 3 * kernel_size * kernel_size

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, 3, self.filters), initializer="zeros", trainable=False
        )
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, x):
        return ops.conv(x, ops.cast(self.kernel, x.dtype), padding="valid") + ops.cast(
            self.bias, x.dtype
        )

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        k = self.kernel_size
        return (n, None if h is None else h - k + 1, None if w is None else w - k + 1, self.filters)

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledBias(layers.Layer):
    """Per-channel bias stored divided by ``scale``: its effective learning rate is scale**2.

    Why: airbench trains BatchNorm biases with a 64x learning rate; Keras optimizers
    have one rate for all variables, and this reparametrisation (bias = scale * v)
    gives the same update for any optimizer and backend, with no custom optimizer.
    """

    def __init__(self, scale: float = 8.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x):
        return x + ops.cast(self.bias * self.scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.saving.register_keras_serializable(package=PACKAGE)
class Scale(layers.Layer):
    """Multiply by a constant (airbench scales its logits by 1/9): no Lambda needed."""

    def __init__(self, factor: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package=PACKAGE)
class PartialDirac(keras.initializers.Initializer):
    """He-uniform kernel whose first min(in, out) filters are the identity (dirac).

    Why: an identity-initialised conv starts as an implicit residual connection, so a
    plain (non-residual) stack trains like a ResNet in its first epochs.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, c_in, c_out = shape
        kernel = keras.initializers.HeUniform(seed=self.seed)(shape, dtype=dtype)
        n = min(c_in, c_out)
        eye = np.zeros((kh, kw, c_in, c_out), dtype="float32")
        eye[kh // 2, kw // 2, np.arange(n), np.arange(n)] = 1.0
        mask = np.ones_like(eye)
        mask[:, :, :, :n] = 0.0
        return kernel * ops.convert_to_tensor(mask, dtype) + ops.convert_to_tensor(eye, dtype)

    def get_config(self):
        return {"seed": self.seed}


# -- the network --------------------------------------------------------------------


def _conv(x, filters: int, name: str, cfg: NetArch, seed: int | None):
    init = PartialDirac(seed) if cfg.dirac else keras.initializers.HeUniform(seed)
    return layers.Conv2D(
        filters, 3, padding="same", use_bias=False, kernel_initializer=init, name=name
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
    x = _conv(x, filters, f"{name}_conv1", cfg, seed)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = _norm_act(x, f"{name}_1", cfg)
    x = _conv(x, filters, f"{name}_conv2", cfg, seed)
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
    Call :func:`fit_whitening` before training when ``cfg.whiten`` is set.
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
    if cfg.whiten:
        x = PatchWhitening(name="whiten")(x)
    else:
        x = layers.Conv2D(24, WHITEN_KERNEL, name="stem")(x)
    x = layers.Activation("gelu", name="stem_act")(x)
    w = cfg.width
    for i, filters in enumerate((w, 2 * w, 2 * w), start=1):
        x = _group(x, filters, f"group{i}", cfg, seed)
    x = layers.GlobalMaxPooling2D(name=TRUNK_OUTPUT)(x)
    x = layers.Dense(n_outputs, use_bias=False, name="logits")(x)
    x = Scale(cfg.logit_scale, name="scale_logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def whitening_kernel(images: np.ndarray, kernel_size: int = WHITEN_KERNEL, eps: float = 5e-4):
    """(k, k, 3, 2*3*k*k) kernel that whitens the k x k patches of normalised ``images``.

    Pure numpy: eigen-decomposition of the patch covariance; filters are the
    eigenvectors scaled by 1/sqrt(eigenvalue + eps), then their negatives (GELU
    follows, so both signs carry information).
    """
    x = (images.astype(np.float32) - np.array(CIFAR_MEAN, np.float32)) / np.array(
        CIFAR_STD, np.float32
    )
    k = kernel_size
    _, h, w, c = x.shape
    patches = np.stack(
        [x[:, i : h - k + 1 + i, j : w - k + 1 + j, :] for i in range(k) for j in range(k)],
        axis=3,
    )  # (n, h', w', k*k, c): patch element order (i, j, channel)
    flat = patches.reshape(-1, k * k * c).astype(np.float64)
    cov = flat.T @ flat / len(flat)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    scaled = eigvec[:, order] / np.sqrt(eigval[order] + eps)  # columns = filters
    kernel = scaled.reshape(k, k, c, k * k * c)
    return np.concatenate([kernel, -kernel], axis=-1).astype(np.float32)


def fit_whitening(model: keras.Model, images: np.ndarray) -> None:
    """Set the model's whitening kernel from (a sample of) its training images."""
    try:
        layer = model.get_layer("whiten")
    except ValueError:
        return
    layer.kernel.assign(whitening_kernel(images, layer.kernel_size))


def copy_trunk(source: keras.Model, target: keras.Model) -> int:
    """Copy every same-named, same-shaped layer except the head; return how many.

    Specialists and the router start from the trained base's features, which is
    what lets them reach good accuracy in a few epochs.
    """
    copied = 0
    for layer in target.layers:
        if layer.name in HEAD_LAYERS or not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            continue
        src_w = src.get_weights()
        if [w.shape for w in src_w] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(src_w)
            copied += 1
    return copied


def freeze_trunk(model: keras.Model) -> None:
    """Make every layer but the head untrainable (BatchNorm then runs in inference mode)."""
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS:
            layer.trainable = False


# Images used to fit the whitening layer: enough for a stable 12x12 covariance.
WHITENING_SAMPLE = 5000


def network_arch(net: NetArch, cfg: NetParams) -> NetArch:
    """The architecture of a network: the shared one, or the specialists' own width."""
    width = getattr(cfg, "width", None)
    return net if width is None else dataclasses.replace(net, width=width)


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


# -- optimizer and schedule --------------------------------------------------------


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


def make_optimizer(cfg: NetParams, steps: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer and schedule ``cfg`` names (``weight_decay`` is decoupled in both),
    with lookahead averaging inside its update when ``cfg.lookahead``.
    """
    lr = (Triangle if cfg.schedule == "triangle" else cosine)(cfg.learning_rate, steps)
    averaging = {}
    if cfg.lookahead:
        averaging = {"total_steps": steps, "start_step": LOOKAHEAD_START_EPOCH * steps_per_epoch}
    if cfg.optimizer == "sgd":
        cls = LookaheadSGD if cfg.lookahead else keras.optimizers.SGD
        return cls(
            lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay, **averaging
        )
    cls = LookaheadAdamW if cfg.lookahead else keras.optimizers.AdamW
    return cls(lr, weight_decay=cfg.weight_decay, **averaging)


# -- weight averaging --------------------------------------------------------------

# airbench's lookahead: from epoch 2 on, every 5 steps, decay 0.95**5 * progress**3.
LOOKAHEAD_START_EPOCH = 2
LOOKAHEAD_EVERY = 5
LOOKAHEAD_BASE = 0.95
LOOKAHEAD_POWER = 3.0


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


@keras.saving.register_keras_serializable(package=PACKAGE)
class LookaheadAdamW(_Lookahead, keras.optimizers.AdamW):
    """AdamW with lookahead averaging in its update (see :class:`_Lookahead`)."""


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

    def __init__(self, data: keras.utils.PyDataset, batches: int = 4):
        super().__init__()
        self.data, self.batches = data, batches

    def on_test_begin(self, logs=None):
        started = getattr(self.model.optimizer, "_started", None)
        if started is None or float(ops.convert_to_numpy(started)) <= 0:
            return
        for i in range(min(self.batches, len(self.data))):
            self.model(self.data[i][0], training=True)


class StopOnNaN(keras.callbacks.Callback):
    """Stop when an epoch's loss is not finite (an epoch-level check: a batch-level
    callback would force a device sync after every step).
    """

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.model.stop_training = True


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
        BestKeeper("val_accuracy", cfg.patience, state_dir),
    ]
    if cfg.lookahead:
        extra.insert(2, RecalibrateBatchNorm(batches))
    if verbose == "auto":
        import sys

        verbose = 1 if sys.stdout.isatty() else 2
    return model.fit(
        batches,
        validation_data=(xv, keras.utils.to_categorical(yv, n_classes)),
        validation_batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=False,  # EpochBatches shuffles by (seed, epoch); Keras' own would not resume
        callbacks=[*extra, *callbacks],
        verbose=verbose,
    )


def multiply_adds(model: keras.Model) -> int:
    """Multiply-adds of one forward pass of one image through ``model`` (convolutions,
    the whitening layer and dense layers; the rest is negligible): the unit of the
    training and inference costs the sweep reports.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D | PatchWhitening):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; nothing trained is worth keeping."""


def summarise_history(history: dict[str, list[float]], *, monitor: str, mode: str) -> dict:
    """The best epoch's figures: ``monitor`` at its best, which epoch, how many ran."""
    values = history[monitor]
    best = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return {
        monitor: float(values[best]),
        "best_epoch": best + 1,
        "epochs_run": len(values),
        **({"val_loss": float(history["val_loss"][best])} if "val_loss" in history else {}),
    }
