"""Network shapes, save/load with safe_mode, and the Keras gate trainer's maths."""

import keras
import numpy as np
import pytest

from hmoe.mixture import Mixture, combine, embed
from hmoe.nets import (
    PadCropFlip,
    build_classifier,
    build_gate,
    build_gate_trainer,
    copy_trunk,
)
from hmoe.params import Groups


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_classifier_takes_uint8_and_outputs_distribution(images):
    model = build_classifier(4, width=4)
    assert model.input.dtype == "uint8"
    p = np.asarray(model.predict(images, verbose=0))
    assert p.shape == (6, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_saved_model_loads_with_safe_mode(tmp_path, images):
    model = build_classifier(3, width=4, seed=1)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


def test_augmentation_only_in_training(images):
    layer = PadCropFlip(seed=3)
    x = images.astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    assert y.shape == x.shape
    assert not np.array_equal(y, x)
    # a crop of a zero-padded image keeps at least the central 24x24 pixels' values
    assert set(np.unique(y)) <= set(np.unique(x)) | {0.0}


def test_copy_trunk_copies_everything_but_the_head():
    base = build_classifier(10, width=4, seed=1)
    spec = build_classifier(4, width=4, seed=2)
    copied = copy_trunk(base, spec)
    assert copied > 5
    for name in ("prep_conv", "res3b_bn"):
        for a, b in zip(base.get_layer(name).weights, spec.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert spec.get_layer("logits").kernel.shape == (base.get_layer("logits").kernel.shape[0], 4)


def _dist(rng, shape):
    z = rng.random(shape).astype(np.float32) + 1e-3
    return z / z.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_gate_trainer_matches_numpy_mixture(n_groups):
    rng = np.random.default_rng(n_groups)
    n, c = 16, 10
    gates = [build_gate(c, hidden=4, name=f"g{g}") for g in range(n_groups)]
    trainer = build_gate_trainer(gates, c)
    route = _dist(rng, (n, n_groups))
    base = _dist(rng, (n, c))
    specs = _dist(rng, (n, n_groups, c))
    out = np.asarray(trainer.predict([route, base, specs], verbose=0))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    ws = [
        np.asarray(g.predict(np.concatenate([base, specs[:, i]], 1), verbose=0))
        for i, g in enumerate(gates)
    ]
    expected = combine(route, ws, base, [specs[:, i] for i in range(n_groups)])
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_routed_inference_equals_dense_hard_mixture(images):
    groups = Groups(
        names=("a", "b"),
        members=(
            ("airplane", "automobile", "ship", "truck"),
            ("bird", "cat", "deer", "dog", "frog", "horse"),
        ),
    )
    keras.utils.set_random_seed(0)
    mix = Mixture(
        router=build_classifier(2, width=4),
        base=build_classifier(10, width=4),
        specialists={"a": build_classifier(4, width=4), "b": build_classifier(6, width=4)},
        gates={"a": build_gate(10, hidden=4), "b": build_gate(10, hidden=4)},
        groups=groups,
        routing="hard",
    )
    routed = mix.predict_proba(images)
    dense = mix.predict_dense(images)
    np.testing.assert_allclose(routed, dense, atol=1e-5)
    np.testing.assert_allclose(routed.sum(axis=1), 1.0, atol=1e-5)
    assert embed(np.ones((1, 4)) / 4, groups.class_ids("a"), 10).sum() == pytest.approx(1.0)
