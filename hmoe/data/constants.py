"""CIFAR-10 names and shapes, and the one error type the data layer raises.

Kept free of numpy, PIL, scikit-learn and Keras so that params validation and serving can
import the class list without paying for (or even having) the heavy data dependencies.
"""

from __future__ import annotations

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
IMAGE_SHAPE: tuple[int, int, int] = (32, 32, 3)

# The prepared splits, by name: the three carved from the source's training images
# (hmoe.data.split: train fits the experts and the router, gate the gates, val nothing),
# then the source's own test split. Their files are hmoe.paths.split(name).
CARVED_SPLITS: tuple[str, ...] = ("train", "gate", "val")
PREPARED_SPLITS: tuple[str, ...] = (*CARVED_SPLITS, "test")

# Class-folder trees: <split>/<class>/<image>, with these splits and image suffixes.
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

# The official pickled release (cifar-10-python.tar.gz) and its file names.
BATCH_DIR_NAME = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_BATCH = "batches.meta"

# Fix hints shared by several error messages.
KERAS_HINT = "set `data.source: keras` in params.yaml, or point it at an existing path"
PREPARE_HINT = "run `dvc repro prepare`"


class DataError(ValueError):
    """Bad data source or split setting: the message names the path/member/key and the fix.

    A ValueError subclass so that callers validating params can catch one type for both
    bad settings and bad data.
    """
