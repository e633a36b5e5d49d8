"""Data parallelism across the devices of one machine (`train.distribute`).

TensorFlow backend: the network is built, compiled and fitted inside a
``tf.distribute.MirroredStrategy`` scope, and ``fit`` splits each global batch
(``batch_size``) across the replicas. Multi-worker training across hosts is broken in
Keras 3 on the TF backend (keras-team/keras#20585), so only one host is offered.
JAX backend: ``keras.distribution.DataParallel`` over the local devices (the batch is
sharded, the weights replicated). The networks themselves stay free of ``tf.*``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import keras

from hmoe.params import DISTRIBUTE as SETTINGS

logger = logging.getLogger(__name__)


def replica_devices(setting: str) -> list[str]:
    """The devices to replicate over: [] means no data parallelism (one device).

    auto: every visible GPU when there are two or more. mirrored: every GPU, or every
    CPU device when there is none (how the tests exercise it: logical CPU devices on
    TensorFlow, ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` on JAX).
    """
    if setting not in SETTINGS:
        raise ValueError(f"train.distribute must be one of {list(SETTINGS)}, got {setting!r}")
    if setting == "none":
        return []
    backend = keras.backend.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        gpus = [d for d in devices if d.lower().startswith(("gpu", "cuda"))]
        if setting == "auto":
            return gpus if len(gpus) > 1 else []
        return gpus or devices
    if backend != "tensorflow":
        if setting == "mirrored":
            raise ValueError(
                f"train.distribute: mirrored needs the TensorFlow or JAX backend, not {backend}"
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
    logger.info("training data-parallel over %d devices: %s", len(devices), devices)
    if keras.backend.backend() == "jax":
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
        return
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        yield strategy.num_replicas_in_sync
