"""Lookahead averaging inside the optimizer's update follows airbench's schedule:
from ``start_step`` on, every ``every`` steps, average <- rho * average + (1 - rho) *
weights with rho = base**every * (step / total)**power (a copy the first time), and
the weights continue from the average.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hmoe.recipe import LookaheadSGD


def _reference(w0: float, grads: list[float], lr: float, start: int, every: int, total: int):
    w, avg, out = w0, None, []
    for t, g in enumerate(grads, start=1):
        w -= lr * g
        if t > start and t % every == 0:
            if avg is None:
                avg = w
            else:
                rho = 0.95**every * (t / total) ** 3.0
                avg = rho * avg + (1 - rho) * w
            w = avg
        out.append(w)
    return out


def test_in_step_lookahead_matches_the_schedule():
    grads = [float(g) for g in np.random.default_rng(0).normal(size=30)]
    var = keras.Variable(np.array([1.0], dtype="float32"))
    opt = LookaheadSGD(0.1, momentum=0.0, total_steps=30, start_step=5, every=5)
    got = []
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor([g])], [var])
        got.append(float(keras.ops.convert_to_numpy(var)[0]))
    want = _reference(1.0, grads, 0.1, start=5, every=5, total=30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # up to step 10 (the first update only starts the average) the weights are plain
    # SGD's; the update at step 15 pulls them back towards the average
    assert got[9] == pytest.approx(1.0 - 0.1 * sum(grads[:10]), rel=1e-5)
    assert got[14] != pytest.approx(1.0 - 0.1 * sum(grads[:15]), rel=1e-3)


def test_lookahead_optimizer_round_trips_through_its_config():
    opt = LookaheadSGD(0.2, momentum=0.85, nesterov=True, total_steps=790, start_step=158)
    again = LookaheadSGD.from_config(opt.get_config())
    assert (again.total_steps, again.start_step, again.every) == (790, 158, 5)
    assert again.nesterov and again.momentum == pytest.approx(0.85)


def test_batchnorm_statistics_are_recalibrated_once_averaging_has_started():
    from hmoe.recipe import RecalibrateBatchNorm
    from hmoe.resume import EpochBatches

    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(momentum=0.4, name="bn")(inputs * 3.0 + 5.0)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=LookaheadSGD(0.1, total_steps=10, start_step=0), loss="mse")
    model.optimizer.build(model.trainable_variables)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    data = EpochBatches(x, np.zeros(64, dtype=int), 16, 2, seed=0)
    callback = RecalibrateBatchNorm(data, batches=4)
    callback.set_model(model)
    bn = model.get_layer("bn")
    callback.on_test_begin()  # averaging not started: statistics untouched
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), 0.0)
    model.optimizer._started.assign(1.0)
    callback.on_test_begin()  # four training-mode batches at momentum 0.4
    expected = np.zeros(4)
    for i in range(4):
        expected = 0.4 * expected + 0.6 * (data[i][0] * 3.0 + 5.0).mean(axis=0)
    moving = keras.ops.convert_to_numpy(bn.moving_mean)
    np.testing.assert_allclose(moving, expected, rtol=1e-4)
