"""Starting a network from the trained base: its trunk copied, and frozen when only a
new head trains (`start: base` and `start: head` in params.yaml).
"""

from __future__ import annotations

import keras

from hmoe.layers import HEAD_LAYERS


def copy_trunk(source: keras.Model, target: keras.Model) -> int:
    """Copy every same-named, same-shaped layer except the head; return how many.

    Specialists and the router start from the trained base's features, which is
    what lets them reach good accuracy in a few epochs.
    """
    copied = 0
    for layer in target.layers:
        if layer.name in HEAD_LAYERS or not layer.weights:
            continue
        try:
            src = source.get_layer(layer.name)
        except ValueError:
            continue
        src_w = src.get_weights()
        if [w.shape for w in src_w] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(src_w)
            copied += 1
    return copied


def freeze_trunk(model: keras.Model) -> None:
    """Make every layer but the head untrainable (BatchNorm then runs in inference mode)."""
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS:
            layer.trainable = False
