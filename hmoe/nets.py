"""Network builders: pure functions returning Keras models (no files, no tracking).

All networks take uint8 images (N, 32, 32, 3) so a saved model is usable as is,
and use only ``keras.ops`` so they run on the TensorFlow and JAX backends alike.
Custom layers are registered, so ``keras.saving.load_model(..., safe_mode=True)``
restores them without Lambda layers.

The classifier follows the fast-training literature (airbench, Page's ResNet-9):
a frozen 2x2 patch-whitening first layer, three conv groups (conv, max-pool,
BatchNorm, GELU, conv, BatchNorm, GELU), identity-initialised convolutions,
BatchNorm without a learnable scale whose bias learns faster, and scaled logits.
Each piece is switchable through :class:`hmoe.params.NetParams` so it can be
ablated with ``dvc exp run -S``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers, ops

from hmoe.params import NetArch

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


def build_gate(n_inputs: int, *, hidden: int = 32, name: str = "gate") -> keras.Model:
    """Gate of one group: from what it sees (``gates.inputs``) to 2 expert weights.

    Inputs are precomputed (N, n_inputs): the frozen experts' probabilities [base,
    specialist], the frozen base trunk's pooled features, or both, so the gate
    costs almost nothing per epoch. Output is a softmax over {base, specialist}:
    the mixture stays a distribution.
    """
    inputs = keras.Input((n_inputs,), name="gate_inputs")
    x = layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    x = layers.Dense(2, name="expert_logits")(x)
    outputs = layers.Softmax(dtype="float32", name="expert_weights")(x)
    return keras.Model(inputs, outputs, name=name)


def build_gate_trainer(
    gates: Sequence[keras.Model], n_classes: int, mode: str = "probs", n_features: int = 0
) -> keras.Model:
    """Joint model that trains all gates at once through the routed mixture.

    Inputs: route weights (N, G) (one-hot of the router's top group for hard
    routing, the router's probabilities for soft), base probs (N, C), every
    embedded specialist's probs (N, G, C) and, for ``mode`` features or both, the
    base trunk's features (N, F). Output: the mixture distribution. With hard
    routing the one-hot route means gate g only learns from the images the router
    sends to g, which is what it sees at inference.
    """
    n_groups = len(gates)
    route = keras.Input((n_groups,), name="route")
    base = keras.Input((n_classes,), name="base_probs")
    specs = keras.Input((n_groups, n_classes), name="specialist_probs")
    inputs = [route, base, specs]
    features = None
    if mode != "probs":
        features = keras.Input((n_features,), name="features")
        inputs.append(features)
    branches = []
    for g, gate in enumerate(gates):
        spec_g = layers.Reshape((n_classes,), name=f"spec_{g}")(
            layers.Cropping1D((g, n_groups - g - 1), name=f"pick_{g}")(specs)
        )
        seen = {"probs": [base, spec_g], "features": [features], "both": [base, spec_g, features]}
        parts = seen[mode]
        w = gate(parts[0] if len(parts) == 1 else layers.Concatenate(name=f"gate_in_{g}")(parts))
        pair = layers.Concatenate(axis=1, name=f"pair_{g}")(
            [layers.Reshape((1, n_classes))(base), layers.Reshape((1, n_classes))(spec_g)]
        )
        branches.append(layers.Reshape((1, n_classes))(ExpertMix(name=f"mix_{g}")(w, pair)))
    stacked = branches[0] if n_groups == 1 else layers.Concatenate(axis=1)(branches)
    outputs = ExpertMix(name="route_mix")(route, stacked)
    return keras.Model(inputs, outputs, name="gate_trainer")
