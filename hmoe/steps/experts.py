"""Steps `train_base`, `train_specialists` (one :func:`train_specialist` per group) and
`train_router`: the frozen networks.

Randomness: each network is seeded right before it is built, with its own seed
(:func:`hmoe.resume.reseed`): the base and the router with `seed`, the second base and
each specialist with an offset of it. Layers built with no explicit seed draw from the
generators seeded there, so a network depends on its seed alone, not on what its stage
drew before it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np

from hmoe import feed
from hmoe.groups import Groups
from hmoe.metrics import summarise_history
from hmoe.params import NetParams, Params
from hmoe.recipe import build_network, fit_classifier
from hmoe.resume import TrainingDiverged, reseed
from hmoe.steps.hooks import NO_HOOKS, Hooks, NetworkJob

logger = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]
# The second base's seed is seed + this: far from the seeds of a seed sweep, whose
# bases it must not repeat.
SECOND_BASE_SEED_OFFSET = 1000
# Specialist i's seed is seed + this + i: its own initialisation, batch order and
# augmentation, not the base's (diversity is what a specialist adds).
SPECIALIST_SEED_OFFSET = 2000
# The params section of each network's recipe, named in error messages.
SECTIONS = {"base": "base", "second_base": "base", "router": "router", "specialist": "specialists"}


@dataclass(frozen=True)
class Trained:
    """A trained network and its training summary (best val epoch's figures)."""

    model: keras.Model
    summary: dict[str, Any]


def train_base(
    params: Params, train: Split, val: Split, *, hooks: Hooks = NO_HOOKS, second: bool = False
) -> Trained:
    """The base expert over all classes (``second``: the two-bases control's member,
    same recipe, seed + :data:`SECOND_BASE_SEED_OFFSET`).
    """
    seed = params.seed + (SECOND_BASE_SEED_OFFSET if second else 0)
    n_classes = len(_classes(params))
    name = "second_base" if second else "base"
    return _train(params, params.base, name, n_classes, train, val, seed=seed, hooks=hooks)


def train_specialist(
    params: Params,
    groups: Groups,
    group: str,
    train: Split,
    val: Split,
    *,
    base: keras.Model | None = None,
    hooks: Hooks = NO_HOOKS,
) -> Trained:
    """The specialist of ``group``: its classes' images (plus the dustbin's share),
    with hard labels or, when ``specialists.distill`` > 0, targets that mix in the
    base's softened predictions. Seeded with its own seed (see
    :data:`SPECIALIST_SEED_OFFSET`), so it does not depend on the order of training.
    """
    cfg = params.specialists
    if cfg.distill > 0 and base is None:
        raise ValueError(f"specialist@{group}: specialists.distill needs the trained base")
    seed = params.seed + SPECIALIST_SEED_OFFSET + groups.names.index(group)
    ids = groups.class_ids(group)
    subset = {"dustbin": cfg.dustbin, "seed": seed}
    x, y = specialist_subset(*train, ids, **subset)
    n_outputs = specialist_outputs(ids, cfg.dustbin)
    if cfg.match_steps:
        cfg = replace(cfg, epochs=matched_epochs(cfg.epochs, len(x), len(train[1])))
        logger.info("specialist@%s: %d epochs (as many steps as the base)", group, cfg.epochs)
    if cfg.distill > 0:
        # params refuse distill > 0 without a temperature, so it is set here
        soft = collapse(soften(feed.predict(base, x, 1024), cfg.temperature), ids)
        y = distill_targets(y, soft[:, :n_outputs], cfg.distill)
    return _train(
        params,
        cfg,
        f"specialist@{group}",
        n_outputs,
        (x, y),
        specialist_subset(*val, ids, **subset),
        seed=seed,
        hooks=hooks,
        base=base,
    )


def matched_epochs(epochs: int, n_subset: int, n_train: int) -> int:
    """``epochs`` / (the subset's share of the training images), rounded: a network on a
    share of the images then takes about as many optimizer steps as one on all of them.
    """
    if n_subset <= 0:
        raise ValueError("a specialist needs at least one training image of its group")
    return max(1, round(epochs * n_train / n_subset))


def soften(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs ** (1 / T)`` renormalised: the softmax of the logits divided by T."""
    logp = np.log(np.maximum(probs.astype(np.float64), 1e-12)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def collapse(probs: np.ndarray, class_ids: Sequence[int]) -> np.ndarray:
    """(N, n_classes) -> (N, k + 1): the group's classes, then every other class's
    probability summed (the dustbin's share).
    """
    mine = probs[:, list(class_ids)]
    return np.concatenate([mine, 1.0 - mine.sum(axis=1, keepdims=True).clip(max=1.0)], axis=1)


def distill_targets(labels: np.ndarray, soft: np.ndarray, share: float) -> np.ndarray:
    """(1 - share) x one-hot(labels) + share x ``soft`` (renormalised over its columns):
    a distribution per row over the specialist's outputs.
    """
    soft = soft / np.maximum(soft.sum(axis=1, keepdims=True), 1e-12)
    hard = np.eye(soft.shape[1], dtype=np.float32)[labels]
    return ((1.0 - share) * hard + share * soft).astype(np.float32)


def train_router(
    params: Params,
    groups: Groups,
    train: Split,
    val: Split,
    *,
    base: keras.Model | None = None,
    hooks: Hooks = NO_HOOKS,
) -> Trained:
    """The router: a classifier over the groups."""
    return _train(
        params,
        params.router,
        "router",
        len(groups.names),
        (train[0], groups.labels(train[1])),
        (val[0], groups.labels(val[1])),
        seed=params.seed,
        hooks=hooks,
        base=base,
    )


def _classes(params: Params) -> tuple[str, ...]:
    from hmoe.data.constants import CIFAR10_CLASSES

    return CIFAR10_CLASSES if params.learned_groups else params.groups.classes


def _train(
    params: Params,
    cfg: NetParams,
    name: str,
    n_outputs: int,
    train: Split,
    val: Split,
    *,
    seed: int,
    hooks: Hooks,
    base: keras.Model | None = None,
) -> Trained:
    """Build (from the base when the recipe says so), train, select on val."""
    if cfg.init_from_base and base is None:
        raise ValueError(f"{name}: init_from_base needs the trained base")
    job = NetworkJob(name, seed, n_outputs, len(train[1]), len(val[1]), cfg.init_from_base)
    with hooks.network(job) as fit:
        reseed(seed)  # the network depends on its seed alone (hmoe.resume.reseed)
        model = build_network(
            n_outputs,
            params.net,
            cfg,
            seed=seed,
            name=name.replace("@", "_"),
            init=base if cfg.init_from_base else None,
            whitening_images=train[0],
        )
        logger.info(
            "%s: %d params, %d train / %d val images",
            name,
            model.count_params(),
            len(train[0]),
            len(val[0]),
        )
        history = fit_classifier(
            model,
            train,
            val,
            cfg,
            seed=seed,
            state_dir=fit.state_dir,
            callbacks=fit.callbacks,
            jit_compile=fit.jit_compile,
            steps_per_execution=params.train.steps_per_execution,
        )
        if model.stop_training and not np.isfinite(history.history.get("loss", [0.0])).all():
            section = SECTIONS.get(name.split("@", maxsplit=1)[0], "specialists")
            raise TrainingDiverged(
                f"{name}: the training loss became NaN, so training stopped and nothing was "
                f"saved. Lower the learning rate (now {cfg.learning_rate}: `recipe."
                f"learning_rate`, or `{section}.learning_rate` for this network alone) or "
                "check the input images"
            )
        # A resumed network whose epochs were all done (its stage was killed while it
        # was saved or registered) trains none: its summary is the hooks' (NetworkHooks
        # rebuilds it from every attempt's epoch log).
        ran = bool(history.history.get("val_accuracy"))
        summary = (
            summarise_history(history.history, monitor="val_accuracy", mode="max") if ran else {}
        )
        summary = hooks.finished(job, model, summary)
    logger.info(
        "%s: best val accuracy %.4f at epoch %d",
        name,
        summary["val_accuracy"],
        summary["best_epoch"],
    )
    return Trained(model, summary)


def specialist_subset(
    x: np.ndarray, y: np.ndarray, class_ids: Sequence[int], *, dustbin: float = 0.0, seed: int = 0
) -> Split:
    """Images of the group's classes, labels renumbered 0..k-1 in group order.

    With ``dustbin`` > 0, also a random ``dustbin`` x (group size) of the other
    groups' images, labelled k: the "none of mine" output of Hinton et al. (2015).
    """
    keep = np.isin(y, class_ids)
    local = np.full(max(*class_ids, int(y.max(initial=0))) + 1, -1, dtype=np.int64)
    local[list(class_ids)] = np.arange(len(class_ids))
    if dustbin <= 0:
        return x[keep], local[y[keep]]
    others = np.flatnonzero(~keep)
    n_other = min(len(others), round(dustbin * int(keep.sum())))
    extra = np.sort(np.random.default_rng(seed).choice(others, n_other, replace=False))
    local[np.setdiff1d(np.unique(y), class_ids)] = len(class_ids)
    idx = np.sort(np.concatenate([np.flatnonzero(keep), extra]))
    return x[idx], local[y[idx]]


def specialist_outputs(class_ids: Sequence[int], dustbin: float) -> int:
    """A specialist's output count: its classes, plus the dustbin when it has one."""
    return len(class_ids) + (1 if dustbin > 0 else 0)
