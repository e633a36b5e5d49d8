"""hmoe.feed: inference without tf.data equals Keras's predict to the bit, and fit's
inputs on TensorFlow are the same batches with tf.data's autotuning off."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hmoe import feed
from hmoe.resume import EpochBatches


def small_model(outputs: int = 1) -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3), dtype="uint8")
    h = keras.layers.Rescaling(1 / 255)(x)
    h = keras.layers.Conv2D(4, 3, activation="gelu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outs = [keras.layers.Dense(3 + k, activation="softmax")(h) for k in range(outputs)]
    return keras.Model(x, outs if outputs > 1 else outs[0])


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (37, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 8, 16, 37, 64])
def test_predict_equals_keras_predict_to_the_bit(images, batch):
    model = small_model()
    np.testing.assert_array_equal(
        feed.predict(model, images, batch), model.predict(images, batch_size=batch, verbose=0)
    )


def test_predict_keeps_every_output_of_a_model_with_several(images):
    model = small_model(outputs=2)
    got = feed.predict(model, images, 16)
    want = model.predict(images, batch_size=16, verbose=0)
    assert [g.shape for g in got] == [(37, 3), (37, 4)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_predict_refuses_nothing_to_predict_and_a_bad_batch(images):
    with pytest.raises(ValueError, match="at least one"):
        feed.predict(small_model(), images[:0], 8)
    with pytest.raises(ValueError, match="batch_size"):
        feed.predict(small_model(), images, 0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data is TensorFlow's")
def test_fit_inputs_are_the_same_batches_without_autotuning(images):
    labels = np.arange(len(images)) % 3
    batches = EpochBatches(images, labels, 8, 3, seed=0)
    val = (images[:20], keras.utils.to_categorical(labels[:20], 3))
    got = feed.fit_inputs(batches, val, 8)
    train, valid = got["x"], got["validation_data"]
    assert not train.options().autotune.enabled and not valid.options().autotune.enabled
    batches.set_epoch(3)  # the epoch's order is read when an epoch's iterator starts
    seen = list(train.as_numpy_iterator())
    assert len(seen) == len(batches) == 4
    for i, (x, y) in enumerate(seen):
        np.testing.assert_array_equal(x, batches[i][0])
        np.testing.assert_array_equal(y, batches[i][1])
    sliced = list(valid.as_numpy_iterator())
    assert [len(x) for x, _ in sliced] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in sliced]), val[0])
    assert sliced[0][1].dtype == np.float32  # Keras's float type, as its own array input
