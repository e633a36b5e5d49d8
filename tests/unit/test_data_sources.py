"""hmoe.data.load_source: every format round-trips, digests track content, errors guide."""

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

from hmoe.data import DataError, RawData, load_source
from hmoe.data import folders as data_folders
from tests.support.synthetic import make_images, write_cifar_batches, write_class_folder_tree

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


def _batches(root: Path, *, seed: int = SEED, as_tar_gz: bool = False) -> Path:
    return write_cifar_batches(
        root,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
        seed=seed,
        as_tar_gz=as_tar_gz,
    )


def _assert_shapes(raw: RawData) -> None:
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


def _raises(fragments: list[str], source: Path, **kwargs: int) -> str:
    """load_source must fail with a DataError whose message holds every fragment."""
    with pytest.raises(DataError) as info:
        load_source(str(source), **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


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
    raw = load_source(str(_batches(tmp_path / "batches", as_tar_gz=as_tar_gz)))
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
    folder = _batches(tmp_path / "batches")
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
    monkeypatch.setattr(data_folders, "_DECODE_CHUNK", 7)  # several chunks through the pool
    pooled = load_source(source, workers=2)
    single = load_source(source, workers=1)
    np.testing.assert_array_equal(pooled.x_train, single.x_train)
    np.testing.assert_array_equal(pooled.x_test, single.x_test)
    np.testing.assert_array_equal(pooled.x_train, _expected()[0])


def test_hidden_and_stray_files_are_ignored(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    clean_digest = load_source(str(root), workers=1).digest
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    raw = load_source(str(root), workers=1)
    np.testing.assert_array_equal(raw.x_train, _expected()[0])
    assert raw.digest == clean_digest  # hidden litter is not data
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("hello")
    np.testing.assert_array_equal(load_source(str(root), workers=1).x_train, _expected()[0])


# --------------------------------------------------------------------------- digests


def test_digest_stable_and_content_sensitive_for_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = load_source(str(root), workers=1).digest
    assert load_source(str(root), workers=1).digest == first
    existing = sorted((root / "test" / "dog").iterdir())[0]
    existing.write_bytes(_png((32, 32)))  # same name, new pixels
    assert load_source(str(root), workers=1).digest != first


def test_folder_digest_counts_renames(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    first = load_source(str(root), workers=1).digest
    first_cat = sorted((root / "train" / "cat").iterdir())[0]
    first_cat.rename(first_cat.with_name("9999.png"))
    assert load_source(str(root), workers=1).digest != first


def test_digest_is_file_sha256_for_archives(tmp_path: Path) -> None:
    tar = _batches(tmp_path / "batches", as_tar_gz=True)
    digest = load_source(str(tar)).digest
    assert digest == "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    # The writers are deterministic, so a rewrite gives the same digest...
    assert load_source(str(_batches(tmp_path / "again", as_tar_gz=True))).digest == digest
    # ...and different content gives a different one.
    other = _batches(tmp_path / "other", seed=SEED + 7, as_tar_gz=True)
    assert load_source(str(other)).digest != digest


def test_zip_digest_is_file_sha256_and_tracks_members(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    first = load_source(str(zpath), workers=1).digest
    assert first == "sha256:" + hashlib.sha256(zpath.read_bytes()).hexdigest()
    members = _zip_members(zpath)
    member = sorted(name for name in members if name.startswith("train/cat/"))[0]
    members[member] = _png((32, 32))  # same member, new pixels
    _write_zip(zpath, members)
    assert load_source(str(zpath), workers=1).digest != first


def test_batches_dir_digest_changes_when_a_batch_changes(tmp_path: Path) -> None:
    folder = _batches(tmp_path / "batches")
    first = load_source(str(folder)).digest
    other = _batches(tmp_path / "other", seed=SEED + 1)
    shutil.copy(other / "test_batch", folder / "test_batch")
    assert load_source(str(folder)).digest != first


# --------------------------------------------------------------------------- errors


def test_missing_path_names_it_and_suggests_keras(tmp_path: Path) -> None:
    _raises(["nowhere.zip", "does not exist", "data.source: keras"], tmp_path / "nowhere.zip")


def test_unrecognised_file_and_folder(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _raises(["notes.txt", "not a recognised CIFAR-10 format", "data.source: keras"], text)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    _raises(["empty_folder", "not a recognised CIFAR-10 layout", "train/<class>"], empty)


def test_zip_without_train_or_test(tmp_path: Path) -> None:
    zpath = _write_zip(tmp_path / "odd.zip", {"images/cat/0.png": _png((32, 32))})
    _raises(["odd.zip", "no train/ or test/ folder", "train/<class>/"], zpath)


@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz"])
def test_corrupt_archives(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not an archive at all" * 10)
    _raises([name, "re-download"], path)


def test_truncated_tar_gz_names_the_file(tmp_path: Path) -> None:
    full = _batches(tmp_path / "batches", as_tar_gz=True).read_bytes()
    cut = tmp_path / "cut.tar.gz"  # not the official name, which the fix hint also contains
    cut.write_bytes(full[: len(full) // 2])
    _raises(["cut.tar.gz", "not a readable tar.gz", "re-download"], cut)


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "train" / "cat" / "0002.png").write_bytes(b"\x89PNG garbage")
    _raises(["train/cat/0002.png", "cannot be decoded", "replace or delete"], root, workers=1)


def test_corrupt_image_in_pool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = _zip_members(zpath)
    members["train/frog/0001.png"] = b"not a png"
    _write_zip(zpath, members)
    monkeypatch.setattr(data_folders, "_DECODE_CHUNK", 7)
    _raises(["train/frog/0001.png", "replace or delete"], zpath, workers=2)


def test_wrong_image_size_is_named(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = _zip_members(zpath)
    members["test/ship/0001.png"] = _png((16, 24))
    _write_zip(zpath, members)
    _raises(["test/ship/0001.png is 16x24", "resize it or remove it"], zpath, workers=1)


def test_missing_class_folder_is_named_per_split(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    shutil.rmtree(root / "test" / "dog")
    message = _raises(["test/ has missing class folder(s) with images: dog"], root, workers=1)
    assert "train/" not in message.split(";")[0]  # the complete train split is not blamed


def test_extra_class_folder_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "train" / "unicorn").mkdir()
    (root / "train" / "unicorn" / "0000.png").write_bytes(_png((32, 32)))
    _raises(["unexpected folder(s): unicorn", "named exactly airplane"], root, workers=1)


def test_split_without_images(tmp_path: Path) -> None:
    zpath = _tree(tmp_path, as_zip=True)
    members = {k: v for k, v in _zip_members(zpath).items() if not k.startswith("test/")}
    _write_zip(zpath, members)
    _raises(["test/ has no images", "test/<class>/*.png"], zpath, workers=1)


@pytest.mark.parametrize("as_tar_gz", [False, True])
def test_missing_batch_file_is_named(tmp_path: Path, as_tar_gz: bool) -> None:
    folder = _batches(tmp_path / "batches")
    (folder / "data_batch_3").unlink()
    source = folder
    if as_tar_gz:
        source = Path(shutil.make_archive(str(tmp_path / "cut"), "gztar", tmp_path / "batches"))
    message = _raises(["missing batch file(s) data_batch_3;", "re-download"], source)
    assert "data_batch_2" not in message


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    folder = _batches(tmp_path / "batches")
    marker = tmp_path / "ran"
    # An unrestricted unpickler would call os.mkdir and create `marker`.
    (folder / "data_batch_2").write_bytes(pickle.dumps(_Mkdir(str(marker)), protocol=2))
    _raises(["data_batch_2: refusing to unpickle", "official cifar-10-python.tar.gz"], folder)
    assert not marker.exists()


class _Mkdir:
    """Unpickles as a call of os.mkdir(path): harmless, but visible if it ever runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.path,))


def test_garbage_batch_is_named(tmp_path: Path) -> None:
    folder = _batches(tmp_path / "batches")
    (folder / "test_batch").write_bytes(b"\x80\x02garbage")
    _raises(["test_batch: not a readable CIFAR-10 batch pickle", "re-download"], folder)


def test_cifar100_meta_is_rejected(tmp_path: Path) -> None:
    folder = _batches(tmp_path / "batches")
    meta = {b"label_names": [b"apple", b"aquarium_fish"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    _raises(["batches.meta", "CIFAR-100"], folder)


def test_label_out_of_range_in_a_batch_is_named(tmp_path: Path) -> None:
    from tests.support.synthetic import _batch_pickle

    folder = _batches(tmp_path / "batches")
    x, y = make_images(2, seed=0)
    y[0] = 10
    (folder / "test_batch").write_bytes(_batch_pickle(x, y, "testing batch 1 of 1"))
    _raises(["labels must lie in 0..9", "got 0..10"], folder)
