"""Starting a network from the trained base: its trunk copied, and frozen when only new
layers train (`start: base`, `head` and `branch` in params.yaml).
"""

from __future__ import annotations

import keras

from hmoe.layers import HEAD_LAYERS

# The last conv group, which a `branch` network trains anew on the base's frozen first
# two groups (hmoe.recipe names every layer of group i "group<i>_...").
BRANCH_PREFIX = "group3"


def is_new(layer_name: str, start: str) -> bool:
    """Whether a network that starts as ``start`` trains this layer from its own
    initialisation instead of copying the base's: the head whenever it starts from
    the base, and the last conv group too for `branch` (a late branch, as in TreeNets).
    """
    return layer_name in HEAD_LAYERS or (start == "branch" and layer_name.startswith(BRANCH_PREFIX))


def copy_trunk(source: keras.Model, target: keras.Model, start: str = "base") -> int:
    """Copy every same-named, same-shaped layer that is not new (:func:`is_new`); return
    how many.

    Specialists and the router start from the trained base's features, which is
    what lets them reach good accuracy in a few epochs.
    """
    copied = 0
    for layer in target.layers:
        if is_new(layer.name, start) or not layer.weights:
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


def freeze_trunk(model: keras.Model, start: str = "head") -> None:
    """Make every layer but the new ones untrainable (BatchNorm then runs in inference
    mode there).
    """
    for layer in model.layers:
        if not is_new(layer.name, start):
            layer.trainable = False
