"""`RawData`, the one shape every source is normalised into, and the checks that enforce it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from hmoe.data.constants import CIFAR10_CLASSES, IMAGE_SHAPE, DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawData:
    """One data source, normalised: uint8 (N, 32, 32, 3) images, int64 labels 0..9.

    `digest` ("sha256:...") identifies the source's content for MLflow and DVC reports;
    `kind` says which loader read it ("keras", "tar.gz", "class-folders-zip", ...).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    digest: str
    kind: str


def as_images(x: np.ndarray, what: str) -> np.ndarray:
    """Check an image array really is NHWC 32x32x3, as every consumer assumes; return uint8."""
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{what}: expected images of shape (N, 32, 32, 3), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.uint8)


def as_labels(y: np.ndarray, what: str) -> np.ndarray:
    """Flatten labels to int64 (N,) and reject anything outside the ten classes."""
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= len(CIFAR10_CLASSES)):
        raise DataError(
            f"{what}: labels must lie in 0..{len(CIFAR10_CLASSES) - 1}, "
            f"got {int(y.min())}..{int(y.max())}"
        )
    return y


def finish(data: RawData, *, digest: str, kind: str) -> RawData:
    """Stamp digest and kind, and log what was loaded (one line per source in the DVC log)."""
    logger.info(
        "loaded %s: %d train, %d test images, %s",
        kind,
        len(data.y_train),
        len(data.y_test),
        digest,
    )
    return replace(data, digest=digest, kind=kind)
