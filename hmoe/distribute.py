"""Data parallelism across the GPUs of one machine (`train.distribute`).

Keras 3 on the TensorFlow backend trains under a ``tf.distribute`` strategy's scope:
the model is built and compiled inside it and ``fit`` splits each global batch
(``batch_size``) across the replicas. Only the single-host ``MirroredStrategy`` is
offered: multi-worker training across hosts is broken in Keras 3 on the TF backend
(keras-team/keras#20585), see README. The networks themselves stay free of ``tf.*``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras

from hmoe.params import DISTRIBUTE as SETTINGS

logger = logging.getLogger(__name__)


def replica_devices(setting: str) -> list[str]:
    """The devices to mirror over: [] means no strategy (one device).

    auto: every visible GPU when there are two or more. mirrored: every GPU, or every
    logical CPU device when there is no GPU (how the tests exercise it).
    """
    if setting not in SETTINGS:
        raise ValueError(f"train.distribute must be one of {list(SETTINGS)}, got {setting!r}")
    if setting == "none":
        return []
    if keras.backend.backend() != "tensorflow":
        if setting == "mirrored":
            raise ValueError(
                "train.distribute: mirrored needs the TensorFlow backend (KERAS_BACKEND); "
                f"this is {keras.backend.backend()}: use auto or none"
            )
        return []
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if setting == "auto":
        return gpus if len(gpus) > 1 else []
    return gpus or [d.name for d in tf.config.list_logical_devices("CPU")]


@contextlib.contextmanager
def training_scope(setting: str) -> Iterator[int]:
    """Build, compile and fit inside this; yields the number of replicas."""
    devices = replica_devices(setting)
    if not devices:
        yield 1
        return
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices)
    logger.info("training mirrored over %d devices: %s", len(devices), devices)
    with strategy.scope():
        yield strategy.num_replicas_in_sync
