"""Network builders: pure functions returning Keras models (no files, no tracking).

All networks take uint8 images (N, 32, 32, 3) so a saved model is usable as is,
and use only ``keras.ops`` so they run on the TensorFlow and JAX backends alike.
Custom layers are registered, so ``keras.saving.load_model(..., safe_mode=True)``
restores them without Lambda layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers, ops

# Per-channel mean and std of the CIFAR-10 training set, on the 0..255 scale.
CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)

PACKAGE = "hmoe"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PadCropFlip(layers.Layer):
    """Random crop after zero padding, plus horizontal flip; active in training only.

    Written with keras.ops (not tf.image) so it runs on every backend, and per image,
    so each sample in a batch gets its own shift.
    """

    def __init__(self, pad: int = 4, seed: int | None = None, **kwargs):
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
        padded = ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        dy = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
        dx = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
        rows = ops.expand_dims(ops.expand_dims(dy + ops.arange(h), -1), -1)
        cropped = ops.take_along_axis(padded, ops.broadcast_to(rows, (n, h, w + 2 * p, 3)), 1)
        cols = ops.expand_dims(ops.expand_dims(dx + ops.arange(w), 1), -1)
        cropped = ops.take_along_axis(cropped, ops.broadcast_to(cols, (n, h, w, 3)), 2)
        flip = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < 0.5
        return ops.where(flip, ops.flip(cropped, axis=2), cropped)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "seed": self.seed}


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


def _conv_bn(x, filters: int, name: str, weight_decay: float):
    x = layers.Conv2D(
        filters,
        3,
        padding="same",
        use_bias=False,
        kernel_regularizer=keras.regularizers.L2(weight_decay) if weight_decay else None,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _residual(x, filters: int, name: str, weight_decay: float):
    y = _conv_bn(x, filters, f"{name}a", weight_decay)
    y = _conv_bn(y, filters, f"{name}b", weight_decay)
    return layers.Add(name=f"{name}_add")([x, y])


def build_classifier(
    n_outputs: int,
    *,
    width: int = 32,
    weight_decay: float = 5e-4,
    augment: bool = True,
    seed: int | None = None,
    name: str = "classifier",
) -> keras.Model:
    """A small ResNet-style VGG (the ResNet-9 layout at ``width`` channels).

    Why this shape: three conv stages with max-pooling and two residual blocks reach
    high CIFAR-10 accuracy in few epochs, and at width 32 cost about 0.1 G
    multiply-adds per image, which a 2-core CPU trains at a few hundred images/s.
    Layer names are fixed so :func:`copy_trunk` can initialise a specialist or the
    router from the trained base.
    """
    if n_outputs < 2:
        raise ValueError(f"a classifier needs at least 2 outputs, got {n_outputs}")
    inputs = keras.Input((32, 32, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0, dtype="float32", name="to_float")(inputs)
    if augment:
        x = PadCropFlip(seed=seed, name="augment")(x)
    x = layers.Normalization(
        mean=list(CIFAR_MEAN), variance=[s * s for s in CIFAR_STD], name="normalize"
    )(x)
    w, wd = width, weight_decay
    x = _conv_bn(x, w, "prep", wd)
    x = _conv_bn(x, 2 * w, "stage1", wd)
    x = layers.MaxPooling2D(name="stage1_pool")(x)
    x = _residual(x, 2 * w, "res1", wd)
    x = _conv_bn(x, 4 * w, "stage2", wd)
    x = layers.MaxPooling2D(name="stage2_pool")(x)
    x = _conv_bn(x, 8 * w, "stage3", wd)
    x = layers.MaxPooling2D(name="stage3_pool")(x)
    x = _residual(x, 8 * w, "res3", wd)
    x = layers.GlobalMaxPooling2D(name="pool")(x)
    x = layers.Dense(n_outputs, name="logits")(x)
    outputs = layers.Softmax(dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


HEAD_LAYERS = ("logits", "probs")


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


def build_gate(n_classes: int, *, hidden: int = 32, name: str = "gate") -> keras.Model:
    """Gate of one group: from [base probs, specialist probs] to 2 expert weights.

    Input is the concatenation (N, 2 * n_classes) of the frozen experts' outputs, so
    the gate is trained on precomputed outputs and costs almost nothing per epoch.
    Output is a softmax over {base, specialist}: the mixture stays a distribution.
    """
    inputs = keras.Input((2 * n_classes,), name="expert_probs")
    x = layers.Dense(hidden, activation="relu", name="hidden")(inputs)
    x = layers.Dense(2, name="expert_logits")(x)
    outputs = layers.Softmax(dtype="float32", name="expert_weights")(x)
    return keras.Model(inputs, outputs, name=name)


def build_gate_trainer(gates: Sequence[keras.Model], n_classes: int) -> keras.Model:
    """Joint model that trains all gates at once through the routed mixture.

    Inputs: route weights (N, G) (one-hot of the router's top group for hard
    routing, the router's probabilities for soft), base probs (N, C) and every
    embedded specialist's probs (N, G, C). Output: the mixture distribution. With
    hard routing the one-hot route means gate g only learns from the images the
    router sends to g, which is what it sees at inference.
    """
    n_groups = len(gates)
    route = keras.Input((n_groups,), name="route")
    base = keras.Input((n_classes,), name="base_probs")
    specs = keras.Input((n_groups, n_classes), name="specialist_probs")
    branches = []
    for g, gate in enumerate(gates):
        spec_g = layers.Reshape((n_classes,), name=f"spec_{g}")(
            layers.Cropping1D((g, n_groups - g - 1), name=f"pick_{g}")(specs)
        )
        w = gate(layers.Concatenate(name=f"gate_in_{g}")([base, spec_g]))
        pair = layers.Concatenate(axis=1, name=f"pair_{g}")(
            [layers.Reshape((1, n_classes))(base), layers.Reshape((1, n_classes))(spec_g)]
        )
        branches.append(layers.Reshape((1, n_classes))(ExpertMix(name=f"mix_{g}")(w, pair)))
    stacked = branches[0] if n_groups == 1 else layers.Concatenate(axis=1)(branches)
    outputs = ExpertMix(name="route_mix")(route, stacked)
    return keras.Model([route, base, specs], outputs, name="gate_trainer")
