"""Spectral grouping recovers a known block structure from a confusion matrix."""

import numpy as np
import pytest

from hmoe.data.constants import CIFAR10_CLASSES
from hmoe.grouping import discover, spectral_groups
from hmoe.groups import Groups

CLASSES = [f"c{i}" for i in range(10)]


def _blocky_confusion(blocks, rng):
    cm = rng.integers(0, 3, (10, 10)).astype(float)  # a little noise everywhere
    for block in blocks:
        for i in block:
            for j in block:
                cm[i, j] += 60 if i != j else 0
    np.fill_diagonal(cm, 800)
    return cm


@pytest.mark.parametrize(
    "blocks", [[(0, 1, 8, 9), (2, 3, 4, 5, 6, 7)], [(0, 1), (2, 3, 4, 5), (6, 7, 8, 9)]]
)
def test_spectral_groups_recover_the_blocks(blocks):
    cm = _blocky_confusion(blocks, np.random.default_rng(0))
    groups = spectral_groups(cm, CLASSES, len(blocks))
    found = sorted(sorted(m) for m in groups.values())
    assert found == sorted(sorted(CLASSES[i] for i in b) for b in blocks)
    assert list(groups) == [f"group{i + 1}" for i in range(len(blocks))]


def test_group_count_is_checked():
    with pytest.raises(ValueError, match="n_groups"):
        spectral_groups(np.eye(10), CLASSES, 1)


def test_discover_gives_a_validated_partition_of_the_classes():
    blocks = [(0, 1, 8, 9), (2, 3, 4, 5, 6, 7)]
    cm = _blocky_confusion(blocks, np.random.default_rng(0))
    found = discover(cm, CIFAR10_CLASSES, 2, seed=0)
    assert isinstance(found, Groups)
    assert found.names == ("group1", "group2")
    assert found.classes == tuple(CIFAR10_CLASSES)
    assert [found.class_ids(g) for g in found.names] == blocks
    assert Groups.from_dict(found.to_dict()) == found
