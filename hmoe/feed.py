"""How arrays reach a compiled Keras function: ``fit``'s inputs and batched inference.

Why this module: on the TensorFlow backend Keras feeds ``fit`` and ``predict`` through
``tf.data`` pipelines with autotuning on, and destroying such an iterator (at every
epoch's end, at every ``predict`` call's end) waits for its autotuning thread to wake
from a sleep that grows with the iterator's age. The process then sits idle: measured on
the 2-core AMD EPYC (docs/results.md, issue 34), about 2 s after a 3-s ``predict`` call,
up to 20 s after a training epoch, some 20 % of a training run's wall time. The values
are the same either way; only the idle time goes:

- :func:`fit_inputs`: on TensorFlow, the same batches as ``tf.data`` pipelines with
  autotuning off; on other backends, unchanged (JAX's loop uses no ``tf.data``);
- :func:`predict`: ``predict_on_batch`` over fixed slices, no ``tf.data`` at all, on every
  backend. It runs the same compiled function on the same batches as
  ``predict(x, batch_size)``, so the outputs are equal to the bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # Keras loads with the first call: stages that train nothing stay light
    import keras


def predict(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray | list[np.ndarray]:
    """``model``'s outputs on ``x``, run in slices of ``batch_size``: one array, or a
    list of arrays (one per output) for a model with several outputs, as ``predict``.
    """
    if len(x) == 0:
        raise ValueError("predict needs at least one image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [model.predict_on_batch(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(parts[0], list | tuple):
        return [np.concatenate([np.asarray(p[k]) for p in parts]) for k in range(len(parts[0]))]
    return np.concatenate([np.asarray(p) for p in parts])


def fit_inputs(
    batches: keras.utils.PyDataset, val: tuple[np.ndarray, np.ndarray], batch_size: int
) -> dict[str, Any]:
    """``fit``'s data arguments: the training batches and the validation pair, with the
    validation split cut into ``batch_size`` slices in order, as Keras would cut it.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"x": batches, "validation_data": val, "validation_batch_size": batch_size}
    return {"x": _tf_batches(batches), "validation_data": _tf_arrays(val, batch_size)}


def _no_autotune(ds: Any) -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _tf_batches(batches: keras.utils.PyDataset) -> Any:
    """A ``tf.data`` view of ``batches``, read lazily: ``fit`` makes one iterator per
    epoch, after the epoch's callbacks have set that epoch's order, and the iterator
    then reads ``batches[0]`` to ``batches[n - 1]``.
    """
    import tensorflow as tf

    spec = tuple(  # batch dimension unknown, as Keras's own PyDataset input traces it
        tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype))
        for a in batches[0]
    )
    n = len(batches)
    ds = tf.data.Dataset.from_generator(
        lambda: (batches[i] for i in range(n)), output_signature=spec
    )
    ds = ds.apply(tf.data.experimental.assert_cardinality(n)).prefetch(2)
    return _no_autotune(ds)


def _tf_arrays(pair: tuple[np.ndarray, np.ndarray], batch_size: int) -> Any:
    """Slices in order; floats in Keras's float type, as Keras's own array input has them."""
    import keras
    import tensorflow as tf

    floatx = keras.config.floatx()
    pair = tuple(a.astype(floatx) if a.dtype.kind == "f" else a for a in map(np.asarray, pair))
    ds = tf.data.Dataset.from_tensor_slices(pair).batch(batch_size)
    return _no_autotune(ds.prefetch(1))
