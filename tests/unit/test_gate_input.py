"""What a gate sees: GateInput's numpy form (precomputed outputs) and its Keras form
(inside the joint gate trainer) must give the same values, in the same order."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hmoe.gates import GateInput

N, C, F = 5, 10, 6


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    base = rng.dirichlet(np.ones(C), N).astype(np.float32)
    spec = rng.dirichlet(np.ones(C), N).astype(np.float32)
    features = rng.normal(size=(N, F)).astype(np.float32)
    return base, spec, features


@pytest.mark.parametrize(
    ("mode", "width", "needs_features"),
    [("probs", 2 * C, False), ("features", F, True), ("both", 2 * C + F, True)],
)
def test_numpy_and_keras_forms_agree(arrays, mode, width, needs_features):
    base, spec, features = arrays
    seen = GateInput(mode)
    assert seen.needs_features is needs_features
    assert seen.size(C, F) == width

    got_numpy = seen.numpy(base, spec, features)
    assert got_numpy.shape == (N, width)
    expected = {
        "probs": np.concatenate([base, spec], axis=1),
        "features": features,
        "both": np.concatenate([base, spec, features], axis=1),
    }[mode]
    np.testing.assert_array_equal(got_numpy, expected)

    inputs = [keras.Input((C,), name="base"), keras.Input((C,), name="spec")]
    inputs.append(keras.Input((F,), name="features"))
    out = seen.keras(*inputs, name="gate_in")
    assert out.shape == (None, width)
    model = keras.Model(inputs, out)
    got_keras = np.asarray(model.predict([base, spec, features], verbose=0))
    np.testing.assert_allclose(got_keras, got_numpy, atol=1e-7)


def test_modes_that_need_features_refuse_to_go_without():
    base = np.full((2, C), 1 / C, np.float32)
    assert GateInput("probs").numpy(base, base, None).shape == (2, 2 * C)
    for mode in ("features", "both"):
        with pytest.raises(ValueError, match="needs the base features"):
            GateInput(mode).numpy(base, base, None)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match=r"gates\.inputs"):
        GateInput("pixels")
    assert GateInput().mode == "probs"
