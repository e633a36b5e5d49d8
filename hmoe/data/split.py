"""Reproducible, class-stratified train/validation split (scikit-learn does the sampling).

Stratifying keeps every class's share of the validation set equal to its share of the
training data (to within one image), so early stopping and model selection are not
skewed by a lucky draw; a fixed seed makes the split identical across runs, so DVC can
cache the prepare stage and runs stay comparable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

from hmoe.data.constants import CARVED_SPLITS, CIFAR10_CLASSES, DataError

_MAX_SEED = 2**32 - 1  # what scikit-learn's random_state accepts


def stratified_split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_size: int,
    limit: int | None,
    seed: int,
    size_key: str = "data.val_size",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a class-stratified validation set, after optionally subsampling to `limit`.

    Returns x_train, y_train, x_val, y_val, each shuffled. `size_key` names the setting
    that `val_size` comes from, for error messages. `limit` exists for quick smoke
    runs: it first keeps `limit` images (stratified), then takes the `val_size` validation
    images from those (stratified again), so train + val = limit.
    """
    y = np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} images but y has {len(y)} labels")
    if len(y) == 0:
        raise DataError("cannot split an empty training set; check `data.source`")
    if not 0 <= seed <= _MAX_SEED:
        raise DataError(f"seed={seed} must lie in 0..{_MAX_SEED}; change `seed` in params.yaml")
    k = len(np.unique(y))
    _require_two_per_class(y, "", "use a `data.source` with more images of those classes")
    pool = np.arange(len(y))
    if limit is not None:
        if limit < k:
            raise DataError(
                f"data.limit={limit} is below the {k} classes present; set `data.limit` to "
                f"at least {k} (or null for all {len(y)} images)"
            )
        if limit < len(y):
            if len(y) - limit < k:
                raise DataError(
                    f"data.limit={limit} leaves out only {len(y) - limit} of {len(y)} images, "
                    f"too few to stratify over {k} classes; set `data.limit` to at most "
                    f"{len(y) - k}, or null to use all images"
                )
            pool = _stratified(pool, y, test_size=len(y) - limit, seed=seed)[0]
            after = f" after data.limit={limit}"
            _require_two_per_class(y[pool], after, "raise `data.limit` or set it to null")
    n = len(pool)
    if val_size <= 0 or val_size >= n:
        raise DataError(
            f"{size_key}={val_size} must be between 1 and {n - 1} (the {n} training images "
            f"left after data.limit={limit}); change `{size_key}` or `data.limit`"
        )
    if val_size < k:
        raise DataError(
            f"{size_key}={val_size} is below the {k} classes present; a stratified "
            f"validation set needs one image per class, so set `{size_key}` to at least {k}"
        )
    if n - val_size < k:
        raise DataError(
            f"{size_key}={val_size} leaves only {n - val_size} training images for {k} "
            f"classes; set `{size_key}` to at most {n - k}"
            + (" or raise `data.limit`" if limit is not None else "")
        )
    train_idx, val_idx = _stratified(pool, y, test_size=val_size, seed=seed)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def prepare_splits(
    x: np.ndarray,
    y: np.ndarray,
    *,
    val_size: int,
    gate_size: int,
    limit: int | None,
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three disjoint splits carved from the training images.

    ``train`` fits the experts and the router; ``gate`` (never seen by them) fits the
    gates, so the gates learn from outputs as confident as those at test time; ``val``
    fits nothing and is used for early stopping and selection only.
    """
    x_fit, y_fit, x_val, y_val = stratified_split(
        x, y, val_size=val_size, limit=limit, seed=seed
    )
    x_tr, y_tr, x_gate, y_gate = stratified_split(
        x_fit, y_fit, val_size=gate_size, limit=None, seed=(seed + 1) % (_MAX_SEED + 1),
        size_key="data.gate_size",
    )
    carved = [(x_tr, y_tr), (x_gate, y_gate), (x_val, y_val)]
    return dict(zip(CARVED_SPLITS, carved, strict=True))


def _stratified(
    pool: np.ndarray, y: np.ndarray, *, test_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices in `pool` into (rest, test_size of them), stratified by y[pool]."""
    try:
        rest, held = train_test_split(
            pool, test_size=test_size, stratify=y[pool], random_state=seed, shuffle=True
        )
    except ValueError as exc:  # the checks above should make this unreachable
        raise DataError(
            f"cannot stratify the split ({exc}); change `data.val_size` or `data.limit`"
        ) from exc
    return np.asarray(rest), np.asarray(held)


def _require_two_per_class(y: np.ndarray, after: str, fix: str) -> None:
    """scikit-learn cannot stratify a class with a single image; say which setting helps."""
    labels, counts = np.unique(y, return_counts=True)
    lonely = [_class_name(label) for label, count in zip(labels, counts, strict=True) if count < 2]
    if lonely:
        raise DataError(
            f"class(es) {', '.join(lonely)} have only 1 training image{after}, too few for a "
            f"stratified split (at least 2 per class are needed); {fix}"
        )


def _class_name(label: object) -> str:
    """CIFAR-10 name of an integer label, for error messages; the raw value otherwise."""
    if isinstance(label, int | np.integer) and 0 <= label < len(CIFAR10_CLASSES):
        return CIFAR10_CLASSES[int(label)]
    return str(label)


def class_counts(y: np.ndarray, classes: Sequence[str] = CIFAR10_CLASSES) -> dict[str, int]:
    """Images per class name (zeros included), for data reports and sanity checks."""
    y = np.asarray(y).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(
            f"labels span {int(y.min())}..{int(y.max())} but only {len(classes)} classes exist"
        )
    counts = np.bincount(y.astype(np.int64), minlength=len(classes))
    return {name: int(c) for name, c in zip(classes, counts, strict=True)}
