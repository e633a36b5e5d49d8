"""The recipe (hmoe.recipe): network shapes, custom layers, save/load with safe_mode,
the optimizer and schedule, the training summary; and the gate trainer and assembled
mixture built from its networks."""

import keras
import numpy as np
import pytest

from hmoe.gates import GateInput, build_gate, build_gate_trainer
from hmoe.groups import Groups
from hmoe.layers import PadCropFlip, PartialDirac, ScaledBias, fit_whitening, whitening_kernel
from hmoe.metrics import summarise_history
from hmoe.mixture import Mixture, combine, embed, tta_views
from hmoe.params import NetArch
from hmoe.recipe import build_classifier
from hmoe.transfer import copy_trunk, freeze_trunk

ARCH = NetArch(width=4, bn_bias_lr=64.0, bn_momentum=0.4, logit_scale=1 / 9)
GROUPS = Groups.from_dict(
    {
        "a": ["airplane", "automobile", "ship", "truck"],
        "b": ["bird", "cat", "deer", "dog", "frog", "horse"],
    }
)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_classifier_takes_uint8_and_outputs_distribution(images):
    model = build_classifier(4, ARCH)
    assert model.input.dtype == "uint8"
    p = np.asarray(model.predict(images, verbose=0))
    assert p.shape == (6, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_saved_model_loads_with_safe_mode(tmp_path, images):
    model = build_classifier(3, ARCH, seed=1)
    fit_whitening(model, images)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )
    np.testing.assert_array_equal(
        np.asarray(loaded.get_layer("whiten").kernel), np.asarray(model.get_layer("whiten").kernel)
    )


def test_whitening_kernel_decorrelates_patches():
    rng = np.random.default_rng(0)
    # correlated pixels: a smooth random field, so raw 2x2 patches are far from white
    smooth = rng.normal(size=(200, 17, 17, 3)).repeat(2, axis=1).repeat(2, axis=2)[:, :32, :32]
    imgs = np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)
    k = whitening_kernel(imgs)
    assert k.shape == (2, 2, 3, 24)
    model = build_classifier(2, ARCH, translate=None)
    fit_whitening(model, imgs)
    stem = keras.Model(model.input, model.get_layer("whiten").output)
    out = np.asarray(stem.predict(imgs, verbose=0)).reshape(-1, 24)[:, :12]
    second_moment = out.T @ out / len(out)  # the kernel whitens the uncentred patches
    np.testing.assert_allclose(second_moment, np.eye(12), atol=0.02)
    np.testing.assert_allclose(np.asarray(model.get_layer("whiten").kernel), k)


def test_whitening_kernel_is_frozen_but_bias_trains():
    layer = build_classifier(2, ARCH).get_layer("whiten")
    assert [w.name for w in layer.trainable_weights] == ["bias"]


def test_partial_dirac_starts_as_identity():
    kernel = np.asarray(PartialDirac(seed=0)((3, 3, 4, 6)))
    for i in range(4):
        expected = np.zeros((3, 3, 4))
        expected[1, 1, i] = 1.0
        np.testing.assert_array_equal(kernel[:, :, :, i], expected)
    assert np.abs(kernel[:, :, :, 4:]).sum() > 0  # the extra filters are random


def test_scaled_bias_learns_scale_squared_faster():
    layer = ScaledBias(8.0)
    x = keras.ops.zeros((1, 3))
    layer.build((1, 3))
    opt = keras.optimizers.SGD(learning_rate=0.01)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = keras.ops.sum(layer(x))  # d loss / d effective bias = 1
    grads = tape.gradient(loss, layer.trainable_variables)
    opt.apply(grads, layer.trainable_variables)
    effective = np.asarray(layer(x))
    np.testing.assert_allclose(effective, -0.01 * 64.0 * np.ones((1, 3)), rtol=1e-6)


def test_augmentation_only_in_training(images):
    layer = PadCropFlip(pad=2, seed=3)
    x = images.astype("float32")
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    y = np.asarray(layer(x, training=True))
    assert y.shape == x.shape
    assert not np.array_equal(y, x)
    # reflect padding adds no new values: every output pixel comes from its image
    for a, b in zip(y, x, strict=True):
        assert set(np.unique(a)) <= set(np.unique(b))


def test_copy_trunk_copies_everything_but_the_head():
    base = build_classifier(10, ARCH, seed=1)
    spec = build_classifier(4, ARCH, seed=2)
    copied = copy_trunk(base, spec)
    assert copied > 5
    for name in ("whiten", "group1_conv1", "group3_2_bias"):
        for a, b in zip(base.get_layer(name).weights, spec.get_layer(name).weights, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert spec.get_layer("logits").kernel.shape == (base.get_layer("logits").kernel.shape[0], 4)


def test_freeze_trunk_leaves_only_the_head_trainable():
    model = build_classifier(2, ARCH)
    freeze_trunk(model)
    assert [w.path for w in model.trainable_weights] == [model.get_layer("logits").kernel.path]


def test_tta_views_weights_and_shapes(images):
    for level, n in ((0, 1), (1, 2), (2, 6)):
        views = tta_views(images, level)
        assert len(views) == n
        assert sum(w for w, _ in views) == pytest.approx(1.0)
        assert all(v.shape == images.shape for _, v in views)
    mirrored = tta_views(images, 1)[1][1]
    np.testing.assert_array_equal(mirrored[:, :, 0], images[:, :, -1])
    shifted = tta_views(images, 2)[2][1]  # shifted one pixel: interior moves by one
    np.testing.assert_array_equal(shifted[:, 1:, 1:], images[:, :-1, :-1])


def _dist(rng, shape):
    z = rng.random(shape).astype(np.float32) + 1e-3
    return z / z.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_gate_trainer_matches_numpy_mixture(n_groups):
    rng = np.random.default_rng(n_groups)
    n, c = 16, 10
    gates = [build_gate(2 * c, hidden=4, name=f"g{g}") for g in range(n_groups)]
    trainer = build_gate_trainer(gates, c, GateInput("probs"))
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


def _net(n: int) -> keras.Model:
    """An untrained classifier whose whitening is fitted, so its outputs vary by image."""
    model = build_classifier(n, ARCH)
    fit_whitening(model, np.random.default_rng(1).integers(0, 256, (64, 32, 32, 3), np.uint8))
    return model


def _mixture(routing="hard", tta=0, gates=True):
    keras.utils.set_random_seed(0)
    return Mixture(
        router=_net(2),
        base=_net(10),
        specialists={"a": _net(4), "b": _net(6)},
        gates={"a": build_gate(20, hidden=4), "b": build_gate(20, hidden=4)} if gates else {},
        groups=GROUPS,
        routing=routing,
        router_fusion="none",
        tta=tta,
    )


@pytest.mark.parametrize("tta", [0, 2])
def test_routed_inference_equals_dense_hard_mixture(images, tta):
    mix = _mixture(tta=tta)
    routed = mix.predict_proba(images)
    dense = mix.predict_dense(images)
    np.testing.assert_allclose(routed, dense, atol=1e-5)
    np.testing.assert_allclose(routed.sum(axis=1), 1.0, atol=1e-5)
    assert embed(np.ones((1, 4)) / 4, GROUPS.class_ids("a"), 10).sum() == pytest.approx(1.0)


def test_tta_changes_predictions_but_keeps_distributions(images):
    plain, tta = _mixture(tta=0), _mixture(tta=2)
    p0, p2 = plain.predict_dense(images), tta.predict_dense(images)
    assert not np.allclose(p0, p2)
    np.testing.assert_allclose(p2.sum(axis=1), 1.0, atol=1e-5)


def test_predict_without_gates_raises(images):
    with pytest.raises(ValueError, match="no gates"):
        _mixture(gates=False).predict_proba(images)


@pytest.mark.parametrize("routing", ["hard", "soft"])
def test_predict_details_agree_with_dense_outputs(images, routing):
    mix = _mixture(routing=routing, tta=1)
    details = mix.predict_details(images)
    np.testing.assert_allclose(details.probs, mix.predict_dense(images), atol=1e-5)
    out = mix.outputs(images)
    np.testing.assert_array_equal(details.group, out.router.argmax(axis=1))
    np.testing.assert_allclose(details.group_prob, out.router.max(axis=1), atol=1e-6)
    weights = mix.gate_weights(out)
    expected = [weights[g][i, 1] for i, g in enumerate(details.group)]
    np.testing.assert_allclose(details.specialist_weight, expected, atol=1e-6)


def test_summarise_history_reports_the_best_epoch():
    history = {"val_accuracy": [0.2, 0.6, 0.5], "val_loss": [2.0, 1.1, 1.0], "loss": [3, 2, 1]}
    got = summarise_history(history, monitor="val_accuracy", mode="max")
    assert got == {"val_accuracy": 0.6, "best_epoch": 2, "epochs_run": 3, "val_loss": 1.1}
    got = summarise_history(history, monitor="val_loss", mode="min")
    assert got == {"val_loss": 1.0, "best_epoch": 3, "epochs_run": 3}


def test_evaluate_scores_the_mixture_and_every_control(images):
    from hmoe.controls import FAIR_CONTROLS
    from hmoe.metrics import accuracy
    from hmoe.steps.evaluate import evaluate

    mix = _mixture(tta=1)
    y = np.arange(len(images)) % 10
    result = evaluate(mix, (images, y), second_base=_net(10))
    m = result.metrics
    assert m["mixture_accuracy"] == pytest.approx(accuracy(mix.predict_dense(images), y))
    assert m["mixture_accuracy"] == m["hard_accuracy"]
    assert m["lift_over_base"] == pytest.approx(m["mixture_accuracy"] - m["base_accuracy"])
    assert m["mixture_rows_sum_max_error"] < 1e-5
    assert {"specialist_a_accuracy", "gate_b_specialist_weight", "vs_base_diff"} <= set(m)
    assert "two_bases_control_accuracy" in m
    # the oracle's control: two bases told the true group, scored beside the oracle
    told = result.labels["oracle_two_bases"]
    assert m["oracle_two_bases_accuracy"] == pytest.approx(np.mean(told == y))
    group_of = np.asarray(mix.groups.group_of_label())
    assert np.array_equal(group_of[told], group_of[y])  # never outside the true group
    assert result.best_control in FAIR_CONTROLS and result.best_control != "base"
    np.testing.assert_array_equal(result.labels["mixture"], mix.predict_proba(images).argmax(1))
    assert result.router_probs.shape == (len(images), 2)
    # reports/metrics.json holds the headline alone, in order; details.json the rest
    assert list(result.headline) == [
        "mixture_accuracy", "base_accuracy", "hard_accuracy", "soft_accuracy",
        "router_accuracy", "oracle_accuracy", "two_bases_control_accuracy",
    ]  # fmt: skip
    assert result.headline | result.details == m and not set(result.headline) & set(result.details)
    assert [w.shape for w in result.gate_weights] == [(len(images), 2)] * 2


def test_copy_trunk_for_a_branch_leaves_the_last_group_new_and_trainable():
    base = build_classifier(10, ARCH, seed=1)
    spec = build_classifier(4, ARCH, seed=2)
    fresh = [np.asarray(w) for w in spec.get_layer("group3_conv1").weights]
    copy_trunk(base, spec, "branch")
    np.testing.assert_array_equal(
        np.asarray(base.get_layer("group2_conv2").kernel),
        np.asarray(spec.get_layer("group2_conv2").kernel),
    )
    for before, after in zip(fresh, spec.get_layer("group3_conv1").weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))  # its own initialisation
    freeze_trunk(spec, "branch")
    trained = {w.path.split("/")[0] for w in spec.trainable_weights}
    assert trained == {"group3_conv1", "group3_1_bias", "group3_conv2", "group3_2_bias", "logits"}


@pytest.mark.parametrize(("kind", "trainable"), [("learned", 4), ("constant", 1), ("fixed", 0)])
def test_gate_kinds_give_a_distribution_and_load_with_safe_mode(tmp_path, kind, trainable):
    gate = build_gate(6, hidden=4, kind=kind)
    assert len(gate.trainable_weights) == trainable
    x = np.random.default_rng(0).random((5, 6)).astype("float32")
    w = np.asarray(gate.predict(x, verbose=0))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    if kind == "fixed":
        np.testing.assert_allclose(w, 0.5)
    gate.save(tmp_path / "gate.keras")
    loaded = keras.saving.load_model(tmp_path / "gate.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), w, atol=1e-6)


def test_a_constant_gate_learns_one_weight_per_group_and_a_fixed_one_stays_at_half():
    from hmoe.gates import fit_gates
    from hmoe.params import GateParams

    # the specialist is always right and the base always wrong: a constant gate must
    # move its weight towards the specialist, a fixed gate must stay at 1/2
    rng = np.random.default_rng(0)
    n, c = 256, 10
    y = rng.integers(0, c, n)
    good, bad = np.eye(c, dtype="float32")[y], np.eye(c, dtype="float32")[(y + 1) % c]
    route = np.tile(np.array([[1.0, 0.0]], "float32"), (n, 1))
    inputs = (route, 0.9 * bad + 0.01, np.stack([0.9 * good + 0.01, 0.9 * good + 0.01], axis=1))
    for kind, check in (("constant", lambda w: w > 0.6), ("fixed", lambda w: w == 0.5)):
        cfg = GateParams(kind, 5, 64, 0.05, 4, 2, "probs", "gate")
        gates = [build_gate(2 * c, hidden=4, kind=kind, name=f"g{g}") for g in range(2)]
        fit_gates(gates, inputs, y, inputs, y, cfg, verbose=0)
        weight = float(np.asarray(gates[0].predict(inputs[1][:1].repeat(2, 1), verbose=0))[0, 1])
        assert check(pytest.approx(weight) if kind == "fixed" else weight), (kind, weight)
