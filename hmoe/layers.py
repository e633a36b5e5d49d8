"""The network's own Keras layers, registered so that a saved ``.keras`` model loads with
``safe_mode=True`` (no Lambda layers), written with ``keras.ops`` only so they run on
TensorFlow and JAX alike. What each does and why is in :mod:`hmoe.recipe`'s reading
order; here they are only defined and serialised.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

PACKAGE = "hmoe"  # the registered names are "hmoe>ClassName"
# Per-channel mean and std of the CIFAR-10 training set, on the 0..255 scale.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)
WHITEN_KERNEL = 2
# Layer names the network is built with: the head (replaced when a network starts from
# the base) and the pooled features (the trunk's output, shared with the router's head).
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
class ConstantLogits(layers.Layer):
    """``units`` logits of its own, the same for every row: the input sets only the batch
    size. A gate built on it gives every image one weight (``gates.kind: constant``,
    trained; ``fixed``, left at zero: equal weights).
    """

    def __init__(self, units: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.logits = self.add_weight(shape=(self.units,), initializer="zeros", name="logits")

    def call(self, x):
        return ops.zeros_like(x[:, :1]) + ops.cast(self.logits, x.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


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
