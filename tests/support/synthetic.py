"""Tiny synthetic CIFAR-shaped data, written in every format `hmoe.data` can load.

Tests and smoke runs must not need the real 160 MB download, yet they must exercise the
real loaders and train a model that measurably learns. Each class therefore gets a
distinct mean colour and a class-specific stripe orientation and frequency, plus noise,
so a tiny CNN separates the classes within an epoch or two.

Everything written is byte-for-byte deterministic for a seed (fixed archive timestamps),
so digests computed over these files are stable across runs.
"""

from __future__ import annotations

import gzip
import io
import logging
import pickle
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hmoe.data.constants import (
    BATCH_DIR_NAME,
    CIFAR10_CLASSES,
    IMAGE_SHAPE,
    META_BATCH,
    TEST_BATCH,
    TRAIN_BATCHES,
)

logger = logging.getLogger(__name__)

CLASS_FOLDERS_ZIP = "cifar10-classes.zip"
TARBALL = "cifar-10-python.tar.gz"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # earliest date zip can store: no wall clock in the bytes
_IMAGE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG"}


def _class_colour(index: int, n_classes: int) -> np.ndarray:
    """A mean colour per class, spread around the hue circle so classes differ in colour."""
    hue = index / max(n_classes, 1)
    # Cheap HSV->RGB at full saturation, kept away from 0/255 so stripes and noise fit.
    rgb = np.clip(np.abs((hue * 6.0 + np.array([0.0, 4.0, 2.0])) % 6.0 - 3.0) - 1.0, 0.0, 1.0)
    return 60.0 + 135.0 * rgb


def make_images(
    n_per_class: int, *, seed: int, classes: Sequence[str] = CIFAR10_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """Return `n_per_class` uint8 (32, 32, 3) images per class and int64 labels.

    Images come class by class (all of class 0, then class 1, ...), the order the loaders
    return files in, so a round trip can be compared without sorting.
    """
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    rng = np.random.default_rng(seed)
    k = len(classes)
    height, width, _ = IMAGE_SHAPE
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    x = np.empty((n_per_class * k, *IMAGE_SHAPE), dtype=np.uint8)
    y = np.repeat(np.arange(k, dtype=np.int64), n_per_class)
    for c in range(k):
        angle = np.pi * c / k  # stripe orientation differs per class
        freq = 2.0 + (c % 4)  # and so does the number of stripes across the image
        proj = (cols * np.cos(angle) + rows * np.sin(angle)) / width
        colour = _class_colour(c, k)
        for i in range(n_per_class):
            phase = rng.uniform(0.0, 2.0 * np.pi)
            stripes = 45.0 * np.sin(2.0 * np.pi * freq * proj + phase)
            noise = rng.normal(0.0, 12.0, size=IMAGE_SHAPE)
            img = colour + stripes[..., None] + noise
            x[c * n_per_class + i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return x, y


def _encode(img: np.ndarray, fmt: str) -> bytes:
    """Encode one image; PNG is lossless so loaders can be checked pixel for pixel."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="RGB").save(buf, format=_IMAGE_FORMATS[fmt])
    return buf.getvalue()


def _split_images(
    train_per_class: int, test_per_class: int, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train and test images from different seeds, so the two splits never coincide."""
    return {
        "train": make_images(train_per_class, seed=seed),
        "test": make_images(test_per_class, seed=seed + 1),
    }


def write_class_folder_tree(
    root: Path,
    *,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
    fmt: str = "png",
    as_zip: bool = False,
    zip_top_folder: str | None = None,
) -> Path:
    """Write train/<class>/NNNN.<fmt> and test/<class>/NNNN.<fmt>; return the folder or zip.

    Without `as_zip` the tree is written into `root` itself. With it, `root`/
    cifar10-classes.zip is written instead (members stored, like the real zip), and
    `zip_top_folder` wraps train/ and test/ in one folder as "compress folder" tools do.
    """
    if fmt not in _IMAGE_FORMATS:
        raise ValueError(f"fmt must be one of {sorted(_IMAGE_FORMATS)}, got {fmt!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes]] = []
    for split, (x, y) in _split_images(train_per_class, test_per_class, seed).items():
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            files.append((f"{split}/{CIFAR10_CLASSES[label]}/{i:04d}.{fmt}", _encode(img, fmt)))
    if not as_zip:
        for rel, data in files:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        logger.debug("wrote %d synthetic images under %s", len(files), root)
        return root
    prefix = f"{zip_top_folder.strip('/')}/" if zip_top_folder else ""
    out = root / CLASS_FOLDERS_ZIP
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for rel, data in files:
            zf.writestr(zipfile.ZipInfo(prefix + rel, date_time=_ZIP_DATE), data)
    logger.debug("wrote %d synthetic images into %s", len(files), out)
    return out


def _batch_pickle(x: np.ndarray, y: np.ndarray, label: str) -> bytes:
    """One batch as the official files lay it out: bytes keys, (N, 3072) channel planes."""
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))
    batch = {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in y],
        b"data": data,
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(x))],
    }
    return pickle.dumps(batch, protocol=2)


def write_cifar_batches(
    root: Path,
    *,
    train_per_class: int,
    test_per_class: int,
    seed: int = 0,
    as_tar_gz: bool = False,
) -> Path:
    """Write cifar-10-batches-py/ like the official release; return it or the tar.gz.

    Training images are shuffled (as in the real batches) and split over the five data
    batches; test_batch keeps class order. With `as_tar_gz` only `root`/
    cifar-10-python.tar.gz is written, with zeroed timestamps so its bytes are stable.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images = _split_images(train_per_class, test_per_class, seed)
    x_train, y_train = images["train"]
    order = np.random.default_rng(seed).permutation(len(y_train))
    x_train, y_train = x_train[order], y_train[order]
    files: dict[str, bytes] = {}
    parts = np.array_split(np.arange(len(y_train)), len(TRAIN_BATCHES))
    for n, (name, idx) in enumerate(zip(TRAIN_BATCHES, parts, strict=True), start=1):
        files[name] = _batch_pickle(
            x_train[idx], y_train[idx], f"training batch {n} of {len(TRAIN_BATCHES)}"
        )
    x_test, y_test = images["test"]
    files[TEST_BATCH] = _batch_pickle(x_test, y_test, "testing batch 1 of 1")
    meta = {
        b"label_names": [name.encode() for name in CIFAR10_CLASSES],
        b"num_cases_per_batch": len(parts[0]),
        b"num_vis": int(np.prod(IMAGE_SHAPE)),
    }
    files[META_BATCH] = pickle.dumps(meta, protocol=2)
    if not as_tar_gz:
        folder = root / BATCH_DIR_NAME
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder
    out = root / TARBALL
    with (
        out.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, data in files.items():
            info = tarfile.TarInfo(f"{BATCH_DIR_NAME}/{name}")
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out
