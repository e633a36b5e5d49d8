"""Step `groups`: the partition of the classes every later step uses.

An explicit partition in params.yaml is used as is. With `groups: N`, N groups are
discovered by spectral clustering of the base's confusion
matrix on the validation split (HD-CNN, arXiv 1410.0736): classes the base mixes up
share a group, where a specialist can tell them apart. Val fitted no weight, and the
test split is never read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from hmoe import feed, grouping
from hmoe.data.constants import CIFAR10_CLASSES
from hmoe.groups import Groups
from hmoe.metrics import confusion
from hmoe.params import Params

if TYPE_CHECKING:  # a learned partition's caller has loaded the base, and Keras
    import keras


def learn_groups(
    params: Params, base: keras.Model | None = None, val: tuple[np.ndarray, np.ndarray] = ()
) -> tuple[Groups, dict[str, Any]]:
    """The partition and its record (source, groups and, when learned, the confusions)."""
    count = params.learned_groups
    if count is None:
        return params.groups, {"source": "params", "groups": params.groups.to_dict()}
    if base is None or not val:
        raise ValueError("groups: N (learned) needs the trained base and the val split")
    x, y = val
    pred = np.argmax(feed.predict(base, x, 512), axis=1)
    cm = confusion(y, pred, len(CIFAR10_CLASSES))
    found = grouping.discover(cm, CIFAR10_CLASSES, count, params.seed)
    record = {"source": "auto", "groups": found.to_dict(), "val_confusion": cm.tolist()}
    return found, record
