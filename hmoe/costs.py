"""Compute costs in multiply-adds: the unit of the training and inference costs that
evaluate and the sweep report (a count, so comparable across machines, unlike seconds).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import layers

from hmoe.layers import PatchWhitening


def multiply_adds(model: keras.Model, keep: Callable[[str], bool] | None = None) -> int:
    """Multiply-adds of one forward pass of one image through ``model`` (convolutions,
    the whitening layer and dense layers; the rest is negligible): the unit of the
    training and inference costs the sweep reports. ``keep``: count only the layers
    whose name it accepts (a network's own layers, when it shares the base's trunk).
    """
    total = 0
    for layer in model.layers:
        if keep is not None and not keep(layer.name):
            continue
        if isinstance(layer, layers.Conv2D | PatchWhitening):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in, _ = layer.kernel.shape
            total += h * w * kh * kw * c_in * c_out
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)
