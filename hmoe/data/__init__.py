"""CIFAR-10 data: load any distributed form, split it reproducibly, store the splits.

Submodules: `constants` (names, shapes, `DataError`; no heavy imports), `raw` (`RawData`),
`sources` (`load_source` and digests), `unpickle` (safe batch reading), `folders`
(class-folder trees), `split` (`stratified_split`), `storage` (`atomic_write`, split files).

The names below are importable from `hmoe.data` as before, but everything beyond
`constants` is imported on first use, so that `hmoe.data.constants` (needed by params
validation and serving) never pulls in numpy, PIL, scikit-learn or Keras.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hmoe.data.constants import (
    BATCH_DIR_NAME,
    CIFAR10_CLASSES,
    IMAGE_SHAPE,
    META_BATCH,
    SPLITS,
    TEST_BATCH,
    TRAIN_BATCHES,
    DataError,
)

if TYPE_CHECKING:
    from hmoe.data.raw import RawData
    from hmoe.data.sources import load_source
    from hmoe.data.split import class_counts, stratified_split
    from hmoe.data.storage import atomic_write, load_split, save_split, write_json

_LAZY = {
    "RawData": "hmoe.data.raw",
    "load_source": "hmoe.data.sources",
    "stratified_split": "hmoe.data.split",
    "class_counts": "hmoe.data.split",
    "save_split": "hmoe.data.storage",
    "load_split": "hmoe.data.storage",
    "atomic_write": "hmoe.data.storage",
    "write_json": "hmoe.data.storage",
}

__all__ = [
    "BATCH_DIR_NAME",
    "CIFAR10_CLASSES",
    "IMAGE_SHAPE",
    "META_BATCH",
    "SPLITS",
    "TEST_BATCH",
    "TRAIN_BATCHES",
    "DataError",
    "RawData",
    "atomic_write",
    "class_counts",
    "load_source",
    "load_split",
    "save_split",
    "stratified_split",
    "write_json",
]


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
