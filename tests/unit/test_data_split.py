"""hmoe.data.stratified_split and class_counts: stratified, reproducible, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from hmoe.data import CIFAR10_CLASSES, DataError, class_counts, stratified_split
from tests.support.synthetic import make_images

UNBALANCED = [30, 50, 20, 40, 60, 10, 25, 35, 45, 55]


def _labels(per_class: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)


def _per_class(y: np.ndarray, k: int = 10) -> np.ndarray:
    return np.bincount(y, minlength=k)


def _assert_proportional(part: np.ndarray, whole: np.ndarray, size: int) -> None:
    """Each class's count in `part` is within one image of its share of `size`."""
    ideal = _per_class(whole) * size / len(whole)
    got = _per_class(part)
    assert got.sum() == size
    assert np.all(np.abs(got - ideal) <= 1), (got, ideal)


def test_split_exact_sizes_and_labels_travel_with_images() -> None:
    y = _labels([100] * 10)
    x = np.arange(len(y))
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=100, limit=None, seed=0)
    assert len(x_va) == 100 and len(x_tr) == 900
    assert set(class_counts(y_va).values()) == {10}
    assert set(class_counts(y_tr).values()) == {90}
    np.testing.assert_array_equal(y[x_tr], y_tr)
    np.testing.assert_array_equal(y[x_va], y_va)


@pytest.mark.parametrize("seed", [0, 1, 7, 123])
@pytest.mark.parametrize("val_size", [10, 37, 100])
def test_split_is_stratified_within_one_image(seed: int, val_size: int) -> None:
    y = _labels(UNBALANCED)
    _, y_tr, _, y_va = stratified_split(
        np.arange(len(y)), y, val_size=val_size, limit=None, seed=seed
    )
    _assert_proportional(y_va, y, val_size)
    _assert_proportional(y_tr, y, len(y) - val_size)


def test_split_is_disjoint_and_covers_everything() -> None:
    y = _labels(UNBALANCED)
    x = np.arange(len(y))
    x_tr, _, x_va, _ = stratified_split(x, y, val_size=37, limit=None, seed=1)
    assert not set(x_tr.tolist()) & set(x_va.tolist())
    assert sorted([*x_tr.tolist(), *x_va.tolist()]) == list(range(len(y)))


def test_split_deterministic_per_seed_and_shuffled() -> None:
    y = _labels([20] * 10)
    x = np.arange(len(y))
    a = stratified_split(x, y, val_size=30, limit=None, seed=5)
    b = stratified_split(x, y, val_size=30, limit=None, seed=5)
    c = stratified_split(x, y, val_size=30, limit=None, seed=6)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert set(a[2].tolist()) != set(c[2].tolist())  # another seed holds out other images
    assert not np.all(np.diff(a[1]) >= 0)  # not left in class order
    assert not np.all(np.diff(a[3]) >= 0)


def test_split_with_limit_is_stratified_and_disjoint() -> None:
    y = _labels(UNBALANCED)
    x = np.arange(len(y))
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=20, limit=150, seed=2)
    assert len(x_tr) + len(x_va) == 150 and len(x_va) == 20
    kept = np.concatenate([y_tr, y_va])
    _assert_proportional(kept, y, 150)  # the limit keeps the class mix...
    _assert_proportional(y_va, kept, 20)  # ...and validation is stratified within it
    assert not set(x_tr.tolist()) & set(x_va.tolist())
    np.testing.assert_array_equal(y[x_tr], y_tr)


def test_split_with_limit_deterministic_per_seed() -> None:
    y = _labels([100] * 10)
    x = np.arange(len(y))
    a = stratified_split(x, y, val_size=10, limit=53, seed=2)
    b = stratified_split(x, y, val_size=10, limit=53, seed=2)
    c = stratified_split(x, y, val_size=10, limit=53, seed=3)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert set(a[0].tolist()) | set(a[2].tolist()) != set(c[0].tolist()) | set(c[2].tolist())
    assert set(class_counts(a[3]).values()) == {1}


def test_split_small_classes_stay_on_both_sides() -> None:
    y = _labels([2] * 10)
    _, y_tr, _, y_va = stratified_split(np.arange(20), y, val_size=10, limit=None, seed=0)
    assert set(class_counts(y_tr).values()) == {1}
    assert set(class_counts(y_va).values()) == {1}


def test_split_limit_at_least_all_keeps_all() -> None:
    y = _labels([5] * 10)
    x_tr, _, x_va, _ = stratified_split(np.arange(50), y, val_size=10, limit=500, seed=0)
    assert len(x_tr) + len(x_va) == 50


def test_split_works_on_image_arrays() -> None:
    x, y = make_images(5, seed=0)
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=10, limit=None, seed=0)
    assert x_tr.shape == (40, 32, 32, 3) and x_va.shape == (10, 32, 32, 3)
    assert y_tr.dtype == np.int64
    # Each image still carries its own label: the synthetic classes differ in mean colour.
    for images, labels in ((x_tr, y_tr), (x_va, y_va)):
        for img, label in zip(images, labels, strict=True):
            matches = [np.array_equal(img, ref) for ref in x[y == label]]
            assert any(matches)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("val_size", "limit", "fragments"),
    [
        (0, None, ["data.val_size=0", "between 1 and 99", "change `data.val_size`"]),
        (-3, None, ["data.val_size=-3", "change `data.val_size`"]),
        (100, None, ["data.val_size=100", "between 1 and 99", "change `data.val_size`"]),
        (150, None, ["data.val_size=150", "change `data.val_size`"]),
        (30, 30, ["data.val_size=30", "between 1 and 29", "data.limit=30"]),
        (5, None, ["data.val_size=5", "set `data.val_size` to at least 10"]),
        (95, None, ["data.val_size=95", "set `data.val_size` to at most 90"]),
        (5, 9, ["data.limit=9", "set `data.limit` to at least 10"]),
        (5, 0, ["data.limit=0", "set `data.limit` to at least 10"]),
        (10, 95, ["data.limit=95", "set `data.limit` to at most 90"]),
    ],
)
def test_split_bad_sizes_name_the_key_and_the_fix(
    val_size: int, limit: int | None, fragments: list[str]
) -> None:
    y = _labels([10] * 10)
    with pytest.raises(DataError) as info:
        stratified_split(np.arange(100), y, val_size=val_size, limit=limit, seed=0)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_split_single_image_class_names_the_class_and_the_source() -> None:
    y = _labels([10] * 9 + [1])
    with pytest.raises(DataError) as info:
        stratified_split(np.arange(len(y)), y, val_size=20, limit=None, seed=0)
    assert "truck" in str(info.value) and "`data.source`" in str(info.value)


def test_split_single_image_class_after_limit_names_the_limit() -> None:
    y = _labels([50] * 9 + [4])
    with pytest.raises(DataError) as info:
        stratified_split(np.arange(len(y)), y, val_size=20, limit=100, seed=0)
    message = str(info.value)
    assert "truck" in message and "after data.limit=100" in message
    assert "raise `data.limit`" in message


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_split_out_of_range_seed_names_seed(seed: int) -> None:
    y = _labels([10] * 10)
    with pytest.raises(DataError, match=rf"seed={seed} must lie in .*`seed` in params\.yaml"):
        stratified_split(np.arange(100), y, val_size=20, limit=None, seed=seed)


def test_split_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(DataError, match="x has 3 images but y has 2 labels"):
        stratified_split(np.arange(3), np.array([0, 1]), val_size=1, limit=None, seed=0)
    with pytest.raises(DataError, match=r"empty training set.*`data.source`"):
        stratified_split(np.arange(0), np.array([], dtype=np.int64), val_size=1, limit=None, seed=0)


# --------------------------------------------------------------------------- class_counts


def test_class_counts() -> None:
    counts = class_counts(np.array([0, 0, 9, 3]))
    assert list(counts) == list(CIFAR10_CLASSES)
    assert counts["airplane"] == 2 and counts["truck"] == 1 and counts["dog"] == 0
    with pytest.raises(DataError, match=r"labels span 0\.\.10 but only 10 classes exist"):
        class_counts(np.array([0, 10]))
    assert class_counts(np.array([1, 1]), classes=("a", "b")) == {"a": 0, "b": 2}


# --------------------------------------------------------------------------- prepare_splits


def test_prepare_splits_are_disjoint_stratified_and_held_out() -> None:
    """No gate-fitting or validation image is among the experts' training images."""
    from hmoe.data.split import prepare_splits

    y = np.repeat(np.arange(10), 50)
    index = np.arange(len(y))  # split the indices themselves, to check where each lands
    splits = prepare_splits(index, y, val_size=100, gate_size=60, limit=None, seed=3)
    train, gate, val = (set(splits[k][0].tolist()) for k in ("train", "gate", "val"))
    assert not train & gate and not train & val and not gate & val
    assert len(train | gate | val) == len(y)
    assert (len(gate), len(val)) == (60, 100)
    for name, (idx, labels) in splits.items():
        np.testing.assert_array_equal(y[idx], labels)
        counts = np.bincount(labels, minlength=10)
        assert counts.max() - counts.min() <= 1, name
    again = prepare_splits(index, y, val_size=100, gate_size=60, limit=None, seed=3)
    np.testing.assert_array_equal(again["gate"][0], splits["gate"][0])


def test_prepare_splits_name_the_gate_setting() -> None:
    from hmoe.data.split import prepare_splits

    y = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match=r"data\.gate_size=45"):
        prepare_splits(np.arange(50), y, val_size=10, gate_size=45, limit=None, seed=0)
