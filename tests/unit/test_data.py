"""Tests for hmoe.data: every loader format, every user-facing error, and the split."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hmoe import data
from hmoe.data import (
    CIFAR10_CLASSES,
    DataError,
    class_counts,
    load_source,
    load_split,
    save_split,
    stratified_split,
)
from hmoe.synthetic import make_images, write_cifar_batches, write_class_folder_tree

TRAIN_PER_CLASS = 4
TEST_PER_CLASS = 2
SEED = 3


def _expected() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What the synthetic writers put on disk, in class-folder (class-major) order."""
    x_train, y_train = make_images(TRAIN_PER_CLASS, seed=SEED)
    x_test, y_test = make_images(TEST_PER_CLASS, seed=SEED + 1)
    return x_train, y_train, x_test, y_test


def _tree(tmp_path: Path, **kwargs: object) -> Path:
    return write_class_folder_tree(
        tmp_path / "tree",
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=SEED,
        **kwargs,  # type: ignore[arg-type]
    )


def _batches(tmp_path: Path, *, as_tar_gz: bool = False) -> Path:
    return write_cifar_batches(
        tmp_path / "batches",
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=SEED,
        as_tar_gz=as_tar_gz,
    )


def _assert_shapes(raw: data.RawData) -> None:
    assert raw.x_train.shape == (10 * TRAIN_PER_CLASS, 32, 32, 3)
    assert raw.x_test.shape == (10 * TEST_PER_CLASS, 32, 32, 3)
    assert raw.x_train.dtype == np.uint8 and raw.x_test.dtype == np.uint8
    assert raw.y_train.dtype == np.int64 and raw.y_test.dtype == np.int64
    assert raw.digest.startswith("sha256:") and len(raw.digest) == len("sha256:") + 64


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("as_zip", "top", "kind"),
    [
        (False, None, "class-folders-dir"),
        (True, None, "class-folders-zip"),
        (True, "cifar10", "class-folders-zip"),
    ],
)
def test_class_folders_round_trip_exactly(
    tmp_path: Path, as_zip: bool, top: str | None, kind: str
) -> None:
    source = _tree(tmp_path, as_zip=as_zip, zip_top_folder=top)
    raw = load_source(str(source), workers=1)
    _assert_shapes(raw)
    assert raw.kind == kind
    x_train, y_train, x_test, y_test = _expected()
    np.testing.assert_array_equal(raw.x_train, x_train)
    np.testing.assert_array_equal(raw.y_train, y_train)
    np.testing.assert_array_equal(raw.x_test, x_test)
    np.testing.assert_array_equal(raw.y_test, y_test)


@pytest.mark.parametrize(("as_tar_gz", "kind"), [(False, "batches-dir"), (True, "tar.gz")])
def test_batches_round_trip_exactly(tmp_path: Path, as_tar_gz: bool, kind: str) -> None:
    raw = load_source(str(_batches(tmp_path, as_tar_gz=as_tar_gz)))
    _assert_shapes(raw)
    assert raw.kind == kind
    x_train, y_train, x_test, y_test = _expected()
    # The batches hold the training images shuffled, so compare as per-label multisets.
    order = np.lexsort((raw.x_train.reshape(len(raw.x_train), -1).sum(axis=1), raw.y_train))
    ref = np.lexsort((x_train.reshape(len(x_train), -1).sum(axis=1), y_train))
    np.testing.assert_array_equal(raw.x_train[order], x_train[ref])
    np.testing.assert_array_equal(raw.y_train[order], y_train[ref])
    np.testing.assert_array_equal(raw.x_test, x_test)
    np.testing.assert_array_equal(raw.y_test, y_test)


def test_batches_dir_found_from_parent_folder(tmp_path: Path) -> None:
    folder = _batches(tmp_path)
    assert load_source(str(folder.parent)).kind == "batches-dir"


def test_jpeg_tree_loads_with_right_shape(tmp_path: Path) -> None:
    raw = load_source(str(_tree(tmp_path, fmt="jpg", as_zip=True)), workers=1)
    _assert_shapes(raw)
    np.testing.assert_array_equal(raw.y_train, _expected()[1])
    # JPEG is lossy, but the synthetic colours must survive roughly.
    diff = np.abs(raw.x_train.astype(int) - _expected()[0].astype(int)).mean()
    assert diff < 20


def test_process_pool_matches_in_process_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = str(_tree(tmp_path, as_zip=True))
    monkeypatch.setattr(data, "_DECODE_CHUNK", 7)  # force several chunks through the pool
    pooled = load_source(source, workers=2)
    single = load_source(source, workers=1)
    np.testing.assert_array_equal(pooled.x_train, single.x_train)
    np.testing.assert_array_equal(pooled.x_test, single.x_test)
    np.testing.assert_array_equal(pooled.x_train, _expected()[0])


def test_hidden_and_stray_files_are_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("hello")
    raw = load_source(str(root), workers=1)
    np.testing.assert_array_equal(raw.x_train, _expected()[0])


# --------------------------------------------------------------------------- digests


def test_digest_stable_and_content_sensitive_for_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = load_source(str(root), workers=1).digest
    assert load_source(str(root), workers=1).digest == first
    (root / "test" / "dog" / "0000.png").write_bytes(_png((32, 32)))
    assert load_source(str(root), workers=1).digest != first


def test_digest_is_file_sha256_for_archives(tmp_path: Path) -> None:
    tar = _batches(tmp_path, as_tar_gz=True)
    digest = load_source(str(tar)).digest
    assert digest == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    # The writers are deterministic, so a rewrite gives the same digest...
    again = write_cifar_batches(
        tmp_path / "again",
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=SEED,
        as_tar_gz=True,
    )
    assert load_source(str(again)).digest == digest
    # ...and different content gives a different one.
    other = write_cifar_batches(
        tmp_path / "other",
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=SEED + 7,
        as_tar_gz=True,
    )
    assert load_source(str(other)).digest != digest


def test_digest_changes_when_zip_member_changes(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    first = load_source(str(zpath), workers=1).digest
    members = _zip_members(zpath)
    members["train/cat/0001.png"] = _png((32, 32))
    _write_zip(zpath, members)
    assert load_source(str(zpath), workers=1).digest != first


def test_batches_dir_digest_changes_when_a_batch_changes(tmp_path: Path) -> None:
    folder = _batches(tmp_path)
    first = load_source(str(folder)).digest
    other = write_cifar_batches(
        tmp_path / "other",
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=SEED + 1,
    )
    shutil.copy(other / "test_batch", folder / "test_batch")
    assert load_source(str(folder)).digest != first


# --------------------------------------------------------------------------- errors


def test_missing_path_suggests_keras(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.zip"
    with pytest.raises(DataError, match="nowhere.zip") as info:
        load_source(str(missing))
    assert "keras" in str(info.value)


def test_unrecognised_file_and_folder(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        load_source(str(text))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_folder"):
        load_source(str(empty))


def test_zip_without_train_or_test(tmp_path: Path) -> None:
    zpath = _write_zip(tmp_path / "odd.zip", {"images/cat/0.png": _png((32, 32))})
    with pytest.raises(DataError, match="odd.zip"):
        load_source(str(zpath))


@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz"])
def test_corrupt_archives(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(DataError, match=name.replace(".", r"\.")):
        load_source(str(path))


def test_truncated_tar_gz(tmp_path: Path) -> None:
    tar = _batches(tmp_path, as_tar_gz=True)
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load_source(str(tar))


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "train" / "cat" / "0002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="train/cat/0002.png"):
        load_source(str(root), workers=1)


def test_corrupt_image_in_pool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = _zip_members(zpath)
    members["train/frog/0001.png"] = b"not a png"
    _write_zip(zpath, members)
    monkeypatch.setattr(data, "_DECODE_CHUNK", 7)
    with pytest.raises(DataError, match="train/frog/0001.png"):
        load_source(str(zpath), workers=2)


def test_wrong_image_size_is_named(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = _zip_members(zpath)
    members["test/ship/0001.png"] = _png((16, 24))
    _write_zip(zpath, members)
    with pytest.raises(DataError, match=r"test/ship/0001\.png is 16x24"):
        load_source(str(zpath), workers=1)


def test_missing_class_folder_is_named_per_split(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    shutil.rmtree(root / "test" / "dog")
    with pytest.raises(DataError, match="test/") as info:
        load_source(str(root), workers=1)
    assert "dog" in str(info.value) and "missing" in str(info.value)


def test_extra_class_folder_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "train" / "unicorn").mkdir()
    (root / "train" / "unicorn" / "0000.png").write_bytes(_png((32, 32)))
    with pytest.raises(DataError, match="unicorn"):
        load_source(str(root), workers=1)


def test_split_without_images(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = {k: v for k, v in _zip_members(zpath).items() if not k.startswith("test/")}
    _write_zip(zpath, members)
    with pytest.raises(DataError, match="test/ has no images"):
        load_source(str(zpath), workers=1)


@pytest.mark.parametrize("as_tar_gz", [False, True])
def test_missing_batch_file_is_named(tmp_path: Path, as_tar_gz: bool) -> None:
    folder = _batches(tmp_path)
    (folder / "data_batch_3").unlink()
    source = folder
    if as_tar_gz:
        source = Path(shutil.make_archive(str(tmp_path / "cut"), "gztar", tmp_path / "batches"))
    with pytest.raises(DataError, match="data_batch_3"):
        load_source(str(source))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    folder = _batches(tmp_path)
    # os.getcwd is harmless, but a loader that would call it would also call os.system.
    (folder / "data_batch_2").write_bytes(pickle.dumps(os.getcwd, protocol=2))
    with pytest.raises(DataError, match="data_batch_2.*refusing"):
        load_source(str(folder))


def test_garbage_batch_is_named(tmp_path: Path) -> None:
    folder = _batches(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="test_batch"):
        load_source(str(folder))


# --------------------------------------------------------------------------- splitting


def _labels(per_class: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(per_class)), per_class).astype(np.int64)


def test_split_exact_sizes_and_proportions() -> None:
    y = _labels([100] * 10)
    x = np.arange(len(y))
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=100, limit=None, seed=0)
    assert len(x_va) == 100 and len(x_tr) == 900
    assert set(class_counts(y_va).values()) == {10}
    assert set(class_counts(y_tr).values()) == {90}
    np.testing.assert_array_equal(y[x_tr], y_tr)  # labels travel with their images
    np.testing.assert_array_equal(y[x_va], y_va)


def test_split_is_disjoint_and_covers_everything() -> None:
    y = _labels([30, 50, 20, 40, 60, 10, 25, 35, 45, 55])
    x = np.arange(len(y))
    x_tr, _, x_va, _ = stratified_split(x, y, val_size=37, limit=None, seed=1)
    assert not set(x_tr.tolist()) & set(x_va.tolist())
    assert sorted([*x_tr.tolist(), *x_va.tolist()]) == list(range(len(y)))


def test_split_unbalanced_proportions_and_coverage() -> None:
    per_class = [30, 50, 20, 40, 60, 10, 25, 35, 45, 55]
    y = _labels(per_class)
    _, y_tr, _, y_va = stratified_split(np.arange(len(y)), y, val_size=37, limit=None, seed=1)
    val = class_counts(y_va)
    total = sum(per_class)
    for i, name in enumerate(CIFAR10_CLASSES):
        assert abs(val[name] - 37 * per_class[i] / total) <= 1
        assert val[name] >= 1 and class_counts(y_tr)[name] >= 1


def test_split_deterministic_per_seed_and_shuffled() -> None:
    y = _labels([20] * 10)
    x = np.arange(len(y))
    a = stratified_split(x, y, val_size=30, limit=None, seed=5)
    b = stratified_split(x, y, val_size=30, limit=None, seed=5)
    c = stratified_split(x, y, val_size=30, limit=None, seed=6)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[2], c[2])
    assert not np.all(np.diff(a[1]) >= 0)  # not left in class order


def test_split_with_limit() -> None:
    y = _labels([100] * 10)
    x = np.arange(len(y))
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=10, limit=53, seed=2)
    assert len(x_tr) + len(x_va) == 53 and len(x_va) == 10
    assert set(class_counts(y_va).values()) == {1}
    assert all(c >= 4 for c in class_counts(y_tr).values())
    assert not set(x_tr.tolist()) & set(x_va.tolist())


def test_split_small_val_keeps_every_class_in_train() -> None:
    y = _labels([2] * 10)
    _, y_tr, _, y_va = stratified_split(np.arange(20), y, val_size=10, limit=None, seed=0)
    assert set(class_counts(y_tr).values()) == {1}
    assert set(class_counts(y_va).values()) == {1}


def test_split_limit_at_least_all() -> None:
    y = _labels([5] * 10)
    x_tr, _, x_va, _ = stratified_split(np.arange(50), y, val_size=10, limit=500, seed=0)
    assert len(x_tr) + len(x_va) == 50


def test_split_works_on_image_arrays() -> None:
    x, y = make_images(5, seed=0)
    x_tr, y_tr, x_va, y_va = stratified_split(x, y, val_size=10, limit=None, seed=0)
    assert x_tr.shape == (40, 32, 32, 3) and x_va.shape == (10, 32, 32, 3)
    assert y_tr.dtype == np.int64


@pytest.mark.parametrize(
    ("val_size", "limit", "names"),
    [
        (0, None, "data.val_size"),
        (-3, None, "data.val_size"),
        (100, None, "data.val_size"),
        (150, None, "data.val_size"),
        (30, 30, "data.val_size"),
        (5, 9, "data.limit"),
        (5, 0, "data.limit"),
    ],
)
def test_split_bad_sizes(val_size: int, limit: int | None, names: str) -> None:
    y = _labels([10] * 10)
    with pytest.raises(DataError, match=names.replace(".", r"\.")):
        stratified_split(np.arange(100), y, val_size=val_size, limit=limit, seed=0)
    assert issubclass(DataError, ValueError)


def test_class_counts() -> None:
    counts = class_counts(np.array([0, 0, 9, 3]))
    assert list(counts) == list(CIFAR10_CLASSES)
    assert counts["airplane"] == 2 and counts["truck"] == 1 and counts["dog"] == 0
    with pytest.raises(DataError):
        class_counts(np.array([10]))


# --------------------------------------------------------------------------- split files


def test_save_and_load_split_round_trip(tmp_path: Path) -> None:
    x, y = make_images(2, seed=0)
    path = tmp_path / "deep" / "prepared" / "train.npz"
    save_split(path, x, y)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.npz"]  # no temp left
    x2, y2 = load_split(path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y)
    with np.load(path) as npz:
        assert sorted(npz.files) == ["x", "y"]


def test_load_split_missing_or_bad(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dvc repro prepare"):
        load_split(tmp_path / "val.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.npz"):
        load_split(bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, a=np.zeros(2))
    with pytest.raises(DataError, match="wrong.npz"):
        load_split(wrong)
