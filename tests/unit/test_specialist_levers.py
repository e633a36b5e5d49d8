"""The specialists' levers: the shared recipe with their own overrides, distillation from
the base's softened predictions, and a seed of their own (params, maths, a tiny training).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from hmoe.mixture import embed
from hmoe.params import ParamsError, parse_params
from hmoe.recipe import build_network
from hmoe.steps.experts import (
    collapse,
    distill_targets,
    soften,
    train_specialist,
)
from hmoe.steps.hooks import Fit, Hooks
from tests.support.synthetic import make_images


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"start": "fine"}, "`specialists.start`"),
        ({"distill": 1.5, "temperature": 2.0}, "`specialists.distill`"),
        ({"distill": -0.1}, "`specialists.distill`"),
        ({"distill": 0.5, "temperature": 0}, "`specialists.temperature`"),
        ({"distill": 0.5}, "needs `specialists.temperature`"),
        ({"temperature": 2.0}, "no effect while `specialists.distill` is 0"),
    ],
)
def test_bad_specialist_levers_are_named(raw_params, change, needle):
    raw_params["specialists"].update(change)
    with pytest.raises(ParamsError, match=needle):
        parse_params(raw_params)


def test_specialists_take_the_recipe_with_their_own_overrides(raw_params):
    raw_params["specialists"].update(start="base", epochs=2, learning_rate=0.2, dustbin=0.5)
    p = parse_params(raw_params)
    cfg, recipe = p.specialists, p.recipe
    assert (cfg.epochs, cfg.learning_rate, cfg.start) == (2, 0.2, "base")
    assert cfg.init_from_base and not cfg.freeze_trunk
    assert (cfg.momentum, cfg.lookahead) == (recipe.momentum, recipe.lookahead)  # shared
    assert cfg.dustbin == 0.5
    assert p.base.learning_rate == recipe.learning_rate != 0.2  # only the specialists moved


def test_soften_is_identity_at_one_and_flattens_above_one():
    p = np.array([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, atol=1e-6)
    hot = soften(p, 4.0)
    np.testing.assert_allclose(hot.sum(axis=1), 1.0, atol=1e-6)
    assert hot[0, 0] < p[0, 0] and hot[0, 2] > p[0, 2]  # same order, flatter
    assert np.argmax(hot[0]) == 0


def test_collapse_keeps_the_group_and_sums_the_rest_into_the_dustbin():
    p = np.random.default_rng(0).dirichlet(np.ones(10), size=5).astype(np.float32)
    ids = (0, 1, 8, 9)
    c = collapse(p, ids)
    assert c.shape == (5, 5)
    np.testing.assert_allclose(c[:, :4], p[:, list(ids)])
    np.testing.assert_allclose(c[:, 4], p[:, 2:8].sum(axis=1), atol=1e-6)
    np.testing.assert_allclose(c.sum(axis=1), 1.0, atol=1e-6)


def test_distill_targets_mix_hard_and_soft_rows_into_distributions():
    soft = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=np.float32)
    labels = np.array([0, 1])
    np.testing.assert_array_equal(distill_targets(labels, soft, 0.0), np.eye(3)[labels])
    half = distill_targets(labels, soft, 0.5)
    np.testing.assert_allclose(half.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(half[1], [0.05, 0.55, 0.4], atol=1e-6)
    # Without a dustbin the soft rows are cut to the group's classes and renormalised.
    cut = distill_targets(labels, soft[:, :2], 1.0)
    np.testing.assert_allclose(cut[0], [0.625, 0.375], atol=1e-6)


@pytest.mark.parametrize("dustbin", [0.0, 0.5])
def test_distilled_specialist_trains_on_soft_targets_and_embeds_as_a_distribution(
    raw_params, dustbin
):
    raw_params["net"]["width"] = 4
    raw_params["specialists"].update(
        epochs=1, batch_size=16, distill=0.5, temperature=2.0, dustbin=dustbin,
    )  # fmt: skip
    p = parse_params(raw_params)
    x, y = make_images(12, seed=0)
    xv, yv = make_images(4, seed=1)
    base = build_network(10, p.net, p.base, seed=0, name="base", whitening_images=x)
    with pytest.raises(ValueError, match="distill needs the trained base"):
        train_specialist(p, p.groups, "natural", (x, y), (xv, yv))
    trained = train_specialist(p, p.groups, "natural", (x, y), (xv, yv), base=base)
    ids = p.groups.class_ids("natural")
    out = trained.model.predict(xv, verbose=0)
    assert out.shape == (len(xv), len(ids) + (1 if dustbin else 0))
    np.testing.assert_allclose(embed(out, ids, 10).sum(axis=1), 1.0, atol=1e-5)


class _FirstKernels(Hooks):
    """Records each network's trainable convolution kernels as training begins."""

    def __init__(self):
        self.starts: list[list[np.ndarray]] = []

    @contextlib.contextmanager
    def network(self, job):
        starts = self.starts

        class Record(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                starts.append(_conv_kernels(self.model))

        yield Fit(callbacks=[Record()])


def _conv_kernels(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w).copy() for w in model.trainable_weights if len(w.shape) == 4]


def test_specialists_get_their_own_seed_not_the_base_s(raw_params):
    """From scratch at the base's width, a specialist must not start from the base's
    initial weights, and retraining it starts it from the same ones.
    """
    raw_params["net"]["width"] = 4
    raw_params["specialists"].update(epochs=1, batch_size=16)
    p = parse_params(raw_params)
    x, y = make_images(10, seed=0)
    base = build_network(10, p.net, p.base, seed=p.seed, name="base", whitening_images=x)
    hooks = _FirstKernels()
    group = p.groups.names[0]
    for _ in range(2):
        train_specialist(p, p.groups, group, (x, y), (x, y), hooks=hooks)
    first, again = hooks.starts
    base_kernels = _conv_kernels(base)
    assert len(first) == len(base_kernels) > 0
    assert all(a.shape == b.shape for a, b in zip(first, base_kernels, strict=True))
    # (Kernels with no more outputs than inputs are pure identity under `net.dirac`,
    # the same for every seed: the others must differ.)
    assert any(not np.array_equal(a, b) for a, b in zip(first, base_kernels, strict=True))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_specialists_epochs_key_sets_how_long_they_train(raw_params):
    """`specialists.epochs` is what the specialists train for (it used to be overwritten
    by the base's recipe when they started from scratch).
    """
    raw_params["net"]["width"] = 4
    raw_params["base"]["epochs"] = 1
    raw_params["specialists"].update(epochs=2, batch_size=8)
    p = parse_params(raw_params)
    x, y = make_images(16, seed=0)
    trained = train_specialist(p, p.groups, p.groups.names[0], (x, y), (x, y))
    assert trained.summary["epochs_run"] == 2 != p.base.epochs


def test_matched_epochs_give_a_share_of_the_images_the_base_s_step_count():
    from hmoe.steps.experts import matched_epochs

    assert matched_epochs(10, 16_000, 40_000) == 25  # 40 % of the images: 2.5 x the epochs
    assert matched_epochs(10, 24_000, 40_000) == 17  # 60 %: 16.7, rounded
    assert matched_epochs(10, 40_000, 40_000) == 10
    with pytest.raises(ValueError, match="at least one"):
        matched_epochs(10, 0, 40_000)


def test_match_steps_trains_each_specialist_for_the_base_s_step_count(raw_params):
    raw_params["net"]["width"] = 4
    raw_params["specialists"].update(epochs=1, batch_size=8, match_steps=True)
    p = parse_params(raw_params)
    x, y = make_images(20, seed=0)  # 2 images per class: artificial holds 40 %
    trained = train_specialist(p, p.groups, "artificial", (x, y), (x, y))
    assert trained.summary["epochs_run"] == 2  # 1 / 0.4 = 2.5, rounded to even


def test_a_branch_specialist_keeps_the_base_s_first_groups_and_trains_its_own_last(raw_params):
    raw_params["net"]["width"] = 4
    raw_params["specialists"].update(epochs=1, batch_size=8, start="branch")
    p = parse_params(raw_params)
    x, y = make_images(16, seed=0)
    base = build_network(10, p.net, p.base, seed=0, name="base", whitening_images=x)
    with pytest.raises(ValueError, match="init_from_base needs the trained base"):
        train_specialist(p, p.groups, "natural", (x, y), (x, y))
    spec = train_specialist(p, p.groups, "natural", (x, y), (x, y), base=base).model
    for name in ("whiten", "group1_conv1", "group2_conv2"):
        np.testing.assert_array_equal(
            np.asarray(spec.get_layer(name).weights[0]), np.asarray(base.get_layer(name).weights[0])
        )
    assert not np.array_equal(
        np.asarray(spec.get_layer("group3_conv2").kernel),
        np.asarray(base.get_layer("group3_conv2").kernel),
    )
